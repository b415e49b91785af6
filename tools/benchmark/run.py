#!/usr/bin/python3
"""Benchmark pptp-fixupd against the kernel's PPTP helper (run as root).

For each configuration (calls x payload), three runs in alternating order,
each in a fresh namespace lab (tests/lab):
  agent-queue    project rules + pptp-fixupd --gre-offload off: every GRE
                 packet through NFQUEUE and the agent (no kernel helper);
  agent-offload  project rules + pptp-fixupd --gre-offload nft: established
                 calls' GRE translated in the kernel by the agent's nf_tables
                 maps; the queue sees control messages and what comes before
                 a call is established (no kernel helper);
  kernel-helper  the kernel's nf_conntrack_pptp / nf_nat_pptp, no agent.
In each run, `pptp-bench pac` (synthetic PAC + GRE reflector) runs in the
server namespace and `pptp-bench pns` in client1: it sets up N calls through
the real control exchange, sends GRE round-robin over them, unpaced ("max")
for --seconds and then paced at --paced-rate for --paced-seconds, tears the
calls down, then sets up and tears down --setup-calls more calls (the setup
rate, measured over the same number of calls in every configuration). At
each phase boundary the PNS waits while this script samples the agent (CPU
time from /proc/PID/stat, VmRSS, its `stats`, in places its `sessions`), the
whole machine's CPU (/proc/stat) and kernel memory (/proc/slabinfo,
/proc/meminfo) and, in kernel mode, conntrack.

A fresh lab per run: no conntrack entries, TIME_WAIT sockets, agent table,
offload table or heap carried from one run to the next.

Then `pptp-offload-scale` (--scale-calls, default 65,536; --scale-rounds
times, each in a namespace of its own) measures what that many offloaded
calls cost: setup rate with the map programming, the counter read, a
restart's adoption, memory per call in the agent and in the kernel.

Then the ha-sync mode (--modes ha-sync, in the default; ha_bench.py): the
setup rate with --ha-sync connlabel against the same without it and the
kernel helper, and `pptp-fixupctl ha adopt` over conntrack tables of
--ha-entries entries with --ha-labelled labelled control connections, with
the packet-loop pause it causes (tools/benchmark/README.md).

Prints the data-plane table, the ratios against the kernel helper with the
targets, the control-plane table, the scale figures and the trust checks;
writes everything as JSON (--json-out, default build/bench/results.json) and
draws the ratios (results.png and results.svg beside the JSON; needs
python3-matplotlib, without it the JSON is still written).

    tools/benchmark/run.py [--quick] [--seconds T] [--calls 1,100,10000]
                           [--payloads 64,1400] [--paced-rate PPS] [--modes ...]
"""

import argparse
import datetime
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from lab import netns  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402

MODES = ("agent-queue", "agent-offload", "kernel-helper")
HA_MODE = "ha-sync"  # not a data-plane mode: --ha-sync connlabel's setup rate and `ha adopt` (run_ha_sync)
AGENT_MODES = {"agent-queue": "off", "agent-offload": "nft"}  # mode -> --gre-offload
ALIASES = {"agent": "agent-queue", "queue": "agent-queue", "offload": "agent-offload", "kernel": "kernel-helper",
           "ha": HA_MODE}
KERNEL = "kernel-helper"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets for agent-offload, each against the kernel helper of the same run.
TARGETS = {
    "rate_1_call": 1.0,          # delivered GRE rate >= 1.0x kernel at 1 call
    "rate_10000_calls": 9.0,     # >= 9x at 10,000 calls
    "cpu_per_packet": 1.0,       # whole-machine CPU per delivered packet <= 1.0x kernel
    "p99_added_us": 50.0,        # paced p99 <= kernel p99 + 50 us
    "setups_per_s": 5000.0,      # call setups/s with the map programming in
}


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def tool_dir(args):
    if args.bench_bin:
        return os.path.dirname(os.path.abspath(args.bench_bin))
    src = os.environ.get("PPTP_FIXUP_BIN", os.path.join(REPO, "build", "release", "src"))
    return os.path.join(os.path.dirname(os.path.abspath(src)), "tools", "benchmark")


def bench_binary(args):
    return args.bench_bin or os.path.join(tool_dir(args), "pptp-bench")


def scale_binary(args):
    return args.scale_bin or os.path.join(tool_dir(args), "pptp-offload-scale")


# ---------------------------------------------------------------- sampling

def proc_cpu(pid):
    """utime + stime of a process (all threads), seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def proc_sched(pid):
    """Scheduler view of a process's main thread: run time, time spent
    runnable but waiting for a CPU (seconds), context switches."""
    out = {}
    with open("/proc/%d/schedstat" % pid) as f:
        run_ns, wait_ns, _ = (int(x) for x in f.read().split()[:3])
    out["run_s"], out["runqueue_wait_s"] = run_ns / 1e9, wait_ns / 1e9
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                out[k] = int(v)
    return out


def system_cpu():
    """Whole machine (/proc/stat, all CPUs): busy, softirq, steal, idle seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK,
            "softirq": softirq / CLK_TCK, "steal": steal / CLK_TCK,
            "idle": (idle + iowait) / CLK_TCK}


def kernel_memory():
    """Whole machine: slab objects in use (sum of active_objs x objsize over
    /proc/slabinfo) plus Percpu and VmallocUsed from /proc/meminfo, bytes."""
    objects = 0
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith(("slabinfo", "#")):
                    continue
                p = line.split()
                if len(p) > 3:
                    objects += int(p[1]) * int(p[3])
    except OSError:
        return None
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0]) * 1024
    return {"slab_objects": objects, "percpu": mem.get("Percpu", 0), "vmalloc": mem.get("VmallocUsed", 0),
            "total": objects + mem.get("Percpu", 0) + mem.get("VmallocUsed", 0)}


def softnet_drops():
    """Packets dropped because a CPU's backlog was full (all CPUs)."""
    total = 0
    with open("/proc/net/softnet_stat") as f:
        for line in f:
            total += int(line.split()[1], 16)
    return total


def count_lines(text):
    return sum(1 for line in text.splitlines() if line.strip())


class Sampler:
    # Where the agent's `sessions` is summed (the kernel's per-call counters in
    # offload mode, read by the agent before it answers): before and after
    # the traffic. Not inside a measured phase: the PNS waits meanwhile.
    SESSION_LABELS = ("setup_done", "traffic_done")

    def __init__(self, lab, mode, pids):
        self.lab = lab
        self.mode = mode
        self.pids = dict(pids)  # role -> pid of the harness's own processes
        self.pid = None
        if mode in AGENT_MODES:
            self.pid = lab.agent.proc.pid
            with open("/proc/%d/comm" % self.pid) as f:
                comm = f.read().strip()
            if comm != "pptp-fixupd":
                raise RuntimeError("agent pid %d is %r, not pptp-fixupd" % (self.pid, comm))

    def sample(self, label, heavy=False):
        s = {"label": label, "t": time.monotonic(), "system": system_cpu(),
             "softnet_drops": softnet_drops(), "kernel_memory": kernel_memory()}
        for role, pid in self.pids.items():
            s[role + "_cpu"] = proc_cpu(pid)
        if self.pid is not None:
            s["agent_cpu"] = proc_cpu(self.pid)
            s["agent_sched"] = proc_sched(self.pid)
            s.update(proc_status(self.pid))
            t0 = time.monotonic()
            st = self.lab.agent.stats()
            s["stats_s"] = time.monotonic() - t0
            s["agent_counters"] = st.get("counters", {})
            s["agent_dropped"] = {k: v for k, v in st.get("dropped", {}).items() if v}
            s["agent_queue"] = st.get("queue", {})
            s["agent_live_calls"] = st.get("live_calls")
            s["agent_offload"] = st.get("offload")
            if st.get("ha") is not None:
                s["agent_ha"] = st.get("ha")
            if label in self.SESSION_LABELS:
                t0 = time.monotonic()
                sessions = self.lab.agent.sessions()
                s["sessions_s"] = time.monotonic() - t0
                s["sessions"] = {
                    "calls": len(sessions),
                    "offloaded": sum(1 for x in sessions if x.get("offloaded")),
                    "packets_in": sum(x.get("packets_in", 0) for x in sessions),
                    "packets_out": sum(x.get("packets_out", 0) for x in sessions)}
        if heavy and self.mode == KERNEL:
            s["conntrack_gre"] = count_lines(self.lab.conntrack("-L", "-p", "gre"))
            s["conntrack_expect"] = count_lines(self.lab.conntrack("-L", "expect"))
            tcp = self.lab.conntrack("-L", "-p", "tcp", "--dport", "1723")
            s["conntrack_tcp_with_helper"] = sum(1 for line in tcp.splitlines() if "helper=pptp" in line)
        return s


def diff(a, b, *path):
    x, y = a, b
    for p in path:
        x, y = x.get(p, {}) if isinstance(x, dict) else {}, y.get(p, {}) if isinstance(y, dict) else {}
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return y - x
    return None


# --------------------------------------------------------------------- run

AGENT_LIMITS = ["--max-connections-per-host", "65536", "--max-connections", "65536",
                "--max-calls-per-host", "65536", "--max-calls", "65536"]


def start_pac(lab, bench):
    """pptp-bench pac in the server namespace, listening; returns (Popen, log file)."""
    plog = open(os.path.join(lab.tmpdir, "pac.log"), "w+b")
    pac = lab.spawn("server", [bench, "pac", "--listen", lab.server_addr],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=plog)
    deadline = time.monotonic() + 10
    while not lab.listening("server", 1723):
        if pac.poll() is not None or time.monotonic() > deadline:
            plog.seek(0)
            raise RuntimeError("pptp-bench pac did not start: %s" % plog.read().decode(errors="replace"))
        time.sleep(0.05)
    return pac, plog


def run_one(args, bench, mode, calls, payload, setup_calls=0, seconds=None, paced=True, agent_args=(),
            rules_args=(), variant=None):
    """One run in a fresh lab. setup_calls > 0: after the main calls are torn
    down, the PNS sets up and tears down that many more (the setup rate).
    agent_args / rules_args: more pptp-fixupd options / pptp-fixup-rules
    install options (the ha-sync mode's variants, named ``variant``)."""
    seconds = args.seconds if seconds is None else seconds
    paced_seconds = args.paced_seconds if paced else 0
    hooks = {}
    lab_mode = mode
    if mode in AGENT_MODES:
        lab_mode = "agent"
        # Defaults, except the limits the load needs (one inside host with N
        # control connections) and a public Call ID range that never equals
        # an inside ID (1..N+M), so every GRE packet's key really is
        # rewritten and the PNS's key check proves the translation.
        hooks = agent_hooks(call_id_allocation="preserve", gre_offload=AGENT_MODES[mode], rules_args=rules_args,
                            extra_args=AGENT_LIMITS + ["--call-id-range", "%d-65535" % (calls + setup_calls + 1)]
                            + list(agent_args))
    t0 = time.monotonic()
    result = {"mode": mode, "calls": calls, "payload": payload, "checks": [],
              "kind": "setup-rate" if setup_calls else "config"}
    if variant:
        result["variant"] = variant
    with Lab(clients=1, mode=lab_mode, name_hint="b", **hooks) as lab:
        pac, plog = start_pac(lab, bench)
        nlog = open(os.path.join(lab.tmpdir, "pns.log"), "w+b")
        argv = [bench, "pns", "--server", lab.server_addr, "--calls", str(calls),
                "--payload", str(payload), "--seconds", str(seconds),
                "--rate", str(args.rate), "--window", str(args.window),
                "--setup-timeout", str(args.setup_timeout), "--sync", "--json"]
        if args.paced_rate > 0 and paced_seconds > 0:
            argv += ["--paced-rate", str(args.paced_rate), "--paced-seconds", str(paced_seconds)]
        if setup_calls > 0:
            argv += ["--setup-calls", str(setup_calls)]
        pns = lab.spawn("client1", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=nlog)
        # `ip netns exec` execs the command, so these pids are pptp-bench's own.
        sampler = Sampler(lab, mode, {"pac": pac.pid, "pns": pns.pid})
        lines = queue.Queue()

        def reader():
            for raw in pns.stdout:
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        samples = {}
        pns_json = None
        line_timeout = 2 * args.setup_timeout + 2 * (seconds + paced_seconds) + 60
        while True:
            try:
                line = lines.get(timeout=line_timeout)
            except queue.Empty:
                raise RuntimeError("pptp-bench pns stalled")
            if line is None:
                break
            if line.startswith("SYNC "):
                label = line.split()[1]
                samples[label] = sampler.sample(label, heavy=label in ("setup_done", "max_done"))
                pns.stdin.write(b"\n")
                pns.stdin.flush()
            elif line.startswith("{"):
                pns_json = json.loads(line)
        rc = pns.wait(timeout=30)
        nlog.seek(0)
        result["pns_log"] = nlog.read().decode(errors="replace").strip().splitlines()
        if pns_json is None:
            raise RuntimeError("pptp-bench pns gave no result (rc %s): %s" % (rc, "\n".join(result["pns_log"])))
        pac.send_signal(signal.SIGTERM)
        try:
            out, _ = pac.communicate(timeout=10)
            result["pac"] = json.loads(out.decode().strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            result["pac"] = {"error": repr(e)}
        result["pns"] = pns_json
        result["pns_rc"] = rc
        result["samples"] = samples
        if mode in AGENT_MODES:
            result["agent_log_tail"] = lab.agent.output().strip().splitlines()[-5:]
    result["wall_s"] = time.monotonic() - t0
    summarise(result)
    return result


def phase_of(pns, name):
    for p in pns.get("phases", []):
        if p["name"] == name:
            return p
    return None


def per(a, b, scale=1.0):
    """a / b * scale, or None."""
    return (scale * a / b) if (a is not None and b) else None


def summarise(r):
    """Derived figures and trust checks of one run."""
    s, pns, mode, n = r["samples"], r["pns"], r["mode"], r["calls"]
    is_agent = mode in AGENT_MODES
    checks = r["checks"]

    def check(ok, what):
        if not ok:
            checks.append(what)

    setup = pns["setup"]
    check(setup["calls_up"] == n, "only %d of %d calls set up" % (setup["calls_up"], n))
    check(setup["primes_echoed"] == setup["calls_up"],
          "first GRE packet echoed on %d of %d calls" % (setup["primes_echoed"], setup["calls_up"]))
    check(pns["teardown"]["calls_down"] == setup["calls_up"],
          "%d of %d calls torn down cleanly" % (pns["teardown"]["calls_down"], setup["calls_up"]))
    if is_agent:
        check(pns["teardown"]["cdn_wrong_call"] == 0, "CDN Call ID changed on the way")
    for p in pns["phases"]:
        for k in ("bad_key", "bad_source", "duplicates", "wrong_call", "unknown", "not_pptp", "stale"):
            check(p[k] == 0, "%s phase: %d echoes with %s" % (p["name"], p[k], k))
        check(p["rx_socket_drops"] == 0,
              "%s phase: PNS raw socket dropped %d (harness loss)" % (p["name"], p["rx_socket_drops"]))
        check(p["send_errors"] == 0, "%s phase: %d send errors" % (p["name"], p["send_errors"]))
    pac = r.get("pac", {})
    for k in ("gre_unknown_key", "gre_wrong_source", "gre_not_pptp", "rx_socket_drops", "gre_tx_errors",
              "framing_errors", "refused"):
        check(pac.get(k, 0) == 0, "PAC: %s = %s" % (k, pac.get(k)))

    for name in ("max", "paced"):
        p = phase_of(pns, name)
        a, b = s.get(name + "_start"), s.get(name + "_done")
        if p is None or a is None or b is None:
            continue
        p["system_busy_s"] = b["system"]["busy"] - a["system"]["busy"]
        p["system_softirq_s"] = b["system"]["softirq"] - a["system"]["softirq"]
        p["steal_s"] = b["system"]["steal"] - a["system"]["steal"]
        p["softnet_drops"] = b["softnet_drops"] - a["softnet_drops"]
        # Whole machine (/proc/stat busy time of all CPUs) per delivered echo:
        # everything the machine did meanwhile, other tenants included.
        p["system_cpu_us_per_echo"] = per(p["system_busy_s"], p["received"], 1e6)
        # CPU of everything on the path and nothing else: the harness's two
        # processes, the agent, and softirq time (where the kernel forwards,
        # runs conntrack, the helper or the offload maps, and queues to the
        # agent; with IRQ time accounting it is not charged to any task).
        # Other tenants of the machine are left out, which /proc/stat's busy
        # time is not.
        p["pns_cpu_s"] = b["pns_cpu"] - a["pns_cpu"]
        p["pac_cpu_s"] = b["pac_cpu"] - a["pac_cpu"]
        p["path_cpu_s"] = p["pns_cpu_s"] + p["pac_cpu_s"] + p["system_softirq_s"] + (
            (b["agent_cpu"] - a["agent_cpu"]) if is_agent else 0)
        p["path_cpu_us_per_echo"] = per(p["path_cpu_s"], p["received"], 1e6)
        # Packets the harness itself lost (socket buffers of the PNS or the
        # PAC overflowed): counted in loss%, but not the path's doing.
        p["harness_drops"] = p["rx_socket_drops"] + (
            r.get("pac", {}).get("rx_socket_drops", 0) if name == "max" else 0)
        # A paced phase that could not be offered at its rate (the kernel
        # forwards inside the sender's own send calls, so a slow path slows
        # the generator) or lost packets measured an overloaded path.
        # So did one whose median round trip is above 10 ms: a standing queue
        # (the kernel helper at 10,000 calls just keeps up with 10 kpps).
        p["overloaded"] = bool(p["target_rate"] and (p["offered_pps"] < 0.95 * p["target_rate"]
                                                     or p["loss_pct"] > 1.0
                                                     or (p["rtt_us"].get("p50") or 0) > 10000))
        # Busy time of the machine that was not the path's: other tenants
        # (a compiler, another test). Large values make this run noisy.
        p["foreign_cpu_s"] = max(0.0, p["system_busy_s"] - p["path_cpu_s"])
        if p["foreign_cpu_s"] > 0.25 * p["seconds"]:
            r.setdefault("noise", []).append("%s phase: %.1f CPU s of other work on the machine during %.1f s" % (
                name, p["foreign_cpu_s"], p["seconds"]))
        if is_agent:
            p["agent_cpu_s"] = b["agent_cpu"] - a["agent_cpu"]
            p["agent_rss"] = b.get("VmRSS")
            gin = diff(a, b, "agent_counters", "gre_inbound") or 0
            gout = diff(a, b, "agent_counters", "gre_outbound") or 0
            p["agent_gre_in"], p["agent_gre_out"] = gin, gout
            p["agent_cpu_us_per_packet"] = per(p["agent_cpu_s"], gin + gout, 1e6)
            p["agent_cpu_us_per_echo"] = per(p["agent_cpu_s"], p["received"], 1e6)
            # Each echo crossed the router twice; the share of those crossings
            # the queue (and so the agent) saw.
            p["queue_gre_share"] = per(gin + gout, 2 * p["received"])
            p["queue_dropped"] = diff(a, b, "agent_queue", "kernel", "dropped")
            p["queue_user_dropped"] = diff(a, b, "agent_queue", "kernel", "user_dropped")
            p["agent_packets_dropped"] = diff(a, b, "agent_counters", "packets_dropped")
            # Was the agent short of CPU (runnable, waiting) or asleep while the queue overflowed?
            p["agent_runqueue_wait_s"] = diff(a, b, "agent_sched", "runqueue_wait_s")
            p["agent_voluntary_switches"] = diff(a, b, "agent_sched", "voluntary_ctxt_switches")
            p["agent_involuntary_switches"] = diff(a, b, "agent_sched", "nonvoluntary_ctxt_switches")
            p["agent_batches"] = diff(a, b, "agent_queue", "agent", "batches_sent")
            if mode == "agent-queue":
                # Each echo crossed the agent twice; what it saw must cover what came back.
                check(gout >= p["received"] and gin >= p["received"],
                      "%s phase: agent counters (out %d, in %d) below the echoes (%d)" % (
                          name, gout, gin, p["received"]))
            else:
                check(gin + gout <= 0.1 * 2 * p["received"],
                      "%s phase: the queue saw %d GRE packets for %d echoes (not offloaded?)" % (
                          name, gin + gout, p["received"]))
            check(not p["agent_packets_dropped"],
                  "%s phase: the agent dropped %s packets itself" % (name, p["agent_packets_dropped"]))

    received = sum(p["received"] for p in pns["phases"])
    r["echoes"] = received
    r0, r1 = s.get("ready", {}), s.get("setup_done", {})
    # Kernel memory per call (whole machine: slab objects + percpu + vmalloc),
    # calls up vs before setup. Includes the harness's two TCP sockets per
    # call and the router's conntrack entries in every mode; meaningful at
    # 10,000 calls, noise (other tenants) at small N.
    km = diff(r0, r1, "kernel_memory", "total")
    r["kernel_bytes_per_call"] = per(km, n)
    if is_agent:
        r["agent_rss_ready"] = r0.get("VmRSS")
        r["agent_rss_up"] = r1.get("VmRSS")
        r["agent_rss_peak"] = max((x.get("VmHWM", 0) for x in s.values()), default=None)
        if r0.get("VmRSS") is not None and r1.get("VmRSS") is not None:
            r["agent_bytes_per_call"] = (r1["VmRSS"] - r0["VmRSS"]) / n
        r["agent_setup_cpu_s"] = diff(r0, r1, "agent_cpu")
        r["agent_teardown_cpu_s"] = diff(s.get("traffic_done", {}), s.get("teardown_done", {}), "agent_cpu")
        check(r1.get("agent_live_calls") == n, "agent lists %s live calls, expected %d" % (
            r1.get("agent_live_calls"), n))
        off0 = r0.get("agent_offload") or {}
        off1 = r1.get("agent_offload") or {}
        r["offload_mode"] = off1.get("mode")
        r["offload_installed"] = (off1.get("installed") or 0) - (off0.get("installed") or 0)
        r["offload_calls"] = off1.get("calls")
        # The calls' own counters (the kernel's, in offload mode, read by the
        # agent when asked) must cover every echo both ways.
        t0, t1 = r1.get("sessions", {}), s.get("traffic_done", {}).get("sessions", {})
        if t0 and t1:
            r["sessions_packets_out"] = t1["packets_out"] - t0["packets_out"]
            r["sessions_packets_in"] = t1["packets_in"] - t0["packets_in"]
            check(r["sessions_packets_out"] >= received and r["sessions_packets_in"] >= received,
                  "call counters (out %d, in %d) below the echoes (%d)" % (
                      r["sessions_packets_out"], r["sessions_packets_in"], received))
        tq0, tq1 = s.get("max_start", {}), s.get("paced_done") or s.get("max_done") or {}
        r["queue_gre_traffic"] = (diff(tq0, tq1, "agent_counters", "gre_inbound") or 0) + (
            diff(tq0, tq1, "agent_counters", "gre_outbound") or 0)
        if mode == "agent-offload":
            check(r["offload_mode"] == "nft", "offload mode is %r, not nft" % r["offload_mode"])
            check(r["offload_installed"] >= n, "%s calls offloaded of %d" % (r["offload_installed"], n))
            check(off1.get("calls") == n, "agent reports %s offloaded calls of %d" % (off1.get("calls"), n))
            check(off1.get("install_failures", 0) == 0, "%s offload install failures" % off1.get("install_failures"))
        else:
            check(r["offload_mode"] == "off", "offload mode is %r, not off" % r["offload_mode"])
    else:
        sd = s.get("setup_done", {})
        r["conntrack_gre"] = sd.get("conntrack_gre")
        r["conntrack_expect"] = sd.get("conntrack_expect")
        r["conntrack_tcp_with_helper"] = sd.get("conntrack_tcp_with_helper")
        check((sd.get("conntrack_tcp_with_helper") or 0) >= n,
              "kernel helper bound to %s of %d control connections" % (sd.get("conntrack_tcp_with_helper"), n))
        check((sd.get("conntrack_gre") or 0) >= n,
              "only %s GRE conntrack entries for %d calls (helper expectations not used?)" % (
                  sd.get("conntrack_gre"), n))
    r["setup_calls_per_s"] = setup["calls_per_s"]
    r["teardown_calls_per_s"] = pns["teardown"]["calls_per_s"]

    # The setup-rate phase: M more calls after the main ones are gone.
    sr = pns.get("setup_rate") or {}
    if sr.get("calls"):
        m = sr["calls"]
        r["setup_rate_calls"] = m
        r["setup_rate_per_s"] = sr["calls_per_s"]
        r["setup_rate_teardown_per_s"] = sr["teardown_calls_per_s"]
        check(sr["calls_up"] == m, "setup-rate phase: only %d of %d calls set up" % (sr["calls_up"], m))
        check(sr["primes_echoed"] == sr["calls_up"], "setup-rate phase: first GRE packet echoed on %d of %d" % (
            sr["primes_echoed"], sr["calls_up"]))
        check(sr["calls_down"] == sr["calls_up"], "setup-rate phase: %d of %d torn down" % (
            sr["calls_down"], sr["calls_up"]))
        a, b = s.get("setup_rate_start", {}), s.get("setup_rate_up", {})
        if is_agent:
            r["agent_cpu_us_per_setup"] = per(diff(a, b, "agent_cpu"), sr["calls_up"], 1e6)
            if mode == "agent-offload":
                inst = diff(a, b, "agent_offload", "installed")
                r["setup_rate_offloaded"] = inst
                check((inst or 0) >= m, "setup-rate phase: %s of %d calls offloaded" % (inst, m))
        r["system_cpu_us_per_setup"] = per(diff(a, b, "system", "busy"), sr["calls_up"], 1e6)
        if is_agent and b.get("agent_ha") is not None:
            # --ha-sync connlabel: one label write (a synchronous ctnetlink
            # update) per call built, and one per call torn down.
            d = s.get("setup_rate_done", {})
            r["ha_labels_written_setup"] = diff(a, b, "agent_ha", "labels_written")
            r["ha_labels_written_teardown"] = diff(b, d, "agent_ha", "labels_written")
            r["ha_label_write_failures"] = diff(a, d, "agent_ha", "label_write_failures")
            check((r["ha_labels_written_setup"] or 0) >= sr["calls_up"],
                  "setup-rate phase: %s labels written for %d calls" % (r["ha_labels_written_setup"], sr["calls_up"]))
            check(not r["ha_label_write_failures"], "setup-rate phase: %s label write failures (last: %s)" % (
                r["ha_label_write_failures"], (d.get("agent_ha") or {}).get("last_write_error")))


# ---------------------------------------------------------------- scale tool

def run_scale(args):
    """pptp-offload-scale --scale-rounds times; medians of its figures."""
    exe = scale_binary(args)
    if not os.access(exe, os.X_OK):
        return {"error": "no pptp-offload-scale at %s" % exe}
    rounds = []
    for i in range(args.scale_rounds):
        log("offload scale: %d calls, round %d of %d ..." % (args.scale_calls, i + 1, args.scale_rounds))
        try:
            cp = subprocess.run([exe, "--calls", str(args.scale_calls)], capture_output=True, text=True,
                                timeout=300)
            rounds.append(json.loads(cp.stdout.strip().splitlines()[-1]))
            if cp.returncode != 0:
                rounds[-1]["error"] = "exit %d: %s" % (cp.returncode, cp.stderr.strip())
        except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
            return {"error": "pptp-offload-scale failed: %r" % (e,), "rounds": rounds}

    def med(*path):
        vals = []
        for x in rounds:
            for p in path:
                x = x.get(p) if isinstance(x, dict) else None
            if isinstance(x, (int, float)):
                vals.append(x)
        return statistics.median(vals) if vals else None

    return {
        "calls": args.scale_calls, "rounds": rounds,
        "errors": [x["error"] for x in rounds if "error" in x],
        "offloaded_min": min((x.get("offloaded", 0) for x in rounds), default=0),
        "setup_calls_per_s": med("setup", "calls_per_s"),
        "poll_seconds": med("counter_read", "poll_seconds"),
        "dump_seconds": med("counter_read", "dump_seconds"),
        "adopt_seconds": med("adopt", "seconds"),
        "adopt_calls_per_s": med("adopt", "calls_per_s"),
        "teardown_calls_per_s": med("teardown", "calls_per_s"),
        "agent_bytes_per_call": med("agent", "bytes_per_call"),
        "kernel_bytes_per_call": med("kernel", "bytes_per_call"),
        "kernel_slab_objects_per_call": med("kernel", "slab_objects_per_call"),
        "kernel_percpu_per_call": med("kernel", "percpu_per_call"),
        "kernel_vmalloc_per_call": med("kernel", "vmalloc_per_call"),
        "kernel_total_bytes_per_call": med("kernel", "total_bytes_per_call"),
        "kernel_empty_table_bytes": med("kernel", "empty_table_bytes"),
    }


# ------------------------------------------------------------- ha-sync mode

HA_HELPER = os.path.join(HERE, "ha_bench.py")
PYTHON = "/usr/bin/python3"
# The ha-sync mode's setup-rate variants: (name, data-plane mode, pptp-fixupd
# options, pptp-fixup-rules install options). agent-offload+labels has the
# label space (--conntrack-labels) without the writes: what the connlabel
# match alone costs.
HA_VARIANTS = (
    ("kernel-helper", KERNEL, (), ()),
    ("agent-offload", "agent-offload", (), ()),
    ("agent-offload+labels", "agent-offload", (), ("--conntrack-labels",)),
    ("agent-offload+ha", "agent-offload", ("--ha-sync", "connlabel"), ("--conntrack-labels",)),
)
HA_ON = "agent-offload+ha"


def run_ha_setup(args, bench):
    """(a) The setup rate with --ha-sync connlabel against the same without
    it and the kernel helper: the setup-rate workload of the main runs
    (--ha-setup-calls calls, window --window, a fresh lab each),
    --ha-rounds times in alternating order."""
    runs = []
    for rnd in range(args.ha_rounds):
        order = HA_VARIANTS if rnd % 2 == 0 else tuple(reversed(HA_VARIANTS))
        for name, mode, agent_args, rules_args in order:
            log("ha-sync setup rate: %d calls, %s, round %d of %d ..." % (
                args.ha_setup_calls, name, rnd + 1, args.ha_rounds))
            try:
                r = run_one(args, bench, mode, 1, 64, setup_calls=args.ha_setup_calls,
                            seconds=min(args.seconds, 0.5), paced=False, agent_args=agent_args,
                            rules_args=rules_args, variant=name)
            except (RuntimeError, netns.LabError, subprocess.SubprocessError, OSError) as e:
                log("FAILED: %s" % e)
                runs.append({"mode": mode, "variant": name, "calls": 1, "payload": 64, "kind": "setup-rate",
                             "error": str(e), "checks": ["run failed: %s" % str(e).splitlines()[0]]})
                continue
            r["round"] = rnd + 1
            log("  %s setups/s, %s teardowns/s, %d check problem(s), %.1f s" % (
                fmt(r.get("setup_rate_per_s")), fmt(r.get("setup_rate_teardown_per_s")), len(r["checks"]),
                r["wall_s"]))
            runs.append(r)
    out = {}
    for name, mode, agent_args, rules_args in HA_VARIANTS:
        same = [r for r in runs if r.get("variant") == name and "error" not in r and r.get("setup_rate_calls")]
        if not same:
            continue

        def med(key):
            vals = [r.get(key) for r in same if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        out[name] = {"mode": mode, "agent_args": list(agent_args), "rules_args": list(rules_args),
                     "runs": len(same), "calls": same[0]["setup_rate_calls"],
                     "setup_per_s": med("setup_rate_per_s"), "setup_per_s_all": [r.get("setup_rate_per_s")
                                                                               for r in same],
                     "teardown_per_s": med("setup_rate_teardown_per_s"),
                     "agent_cpu_us_per_setup": med("agent_cpu_us_per_setup"),
                     "system_cpu_us_per_setup": med("system_cpu_us_per_setup"),
                     "offloaded": med("setup_rate_offloaded"),
                     "labels_written_setup": med("ha_labels_written_setup"),
                     "labels_written_teardown": med("ha_labels_written_teardown"),
                     "label_write_failures": med("ha_label_write_failures")}
    k, off = out.get(KERNEL), out.get("agent-offload")
    for name, f in out.items():
        if name == KERNEL:
            continue
        if k:
            f["setup_vs_kernel"] = per(f["setup_per_s"], k["setup_per_s"])
            f["teardown_vs_kernel"] = per(f["teardown_per_s"], k["teardown_per_s"])
        if off and name != "agent-offload":
            f["setup_vs_off"] = per(f["setup_per_s"], off["setup_per_s"])
            f["teardown_vs_off"] = per(f["teardown_per_s"], off["teardown_per_s"])
    return out, runs


def probe_figures(samples, t0, t1):
    """From the probe's (send time, round trip) pairs: the largest round trip
    and the largest gap between replies that overlap [t0, t1], and the same
    before t0 (the baseline)."""
    arrivals = sorted((t + rtt, t, rtt) for t, rtt in samples)
    during = [rtt for t, rtt in samples if t < t1 and t + rtt > t0]
    before = [rtt for t, rtt in samples if t + rtt < t0]
    gaps_during, gaps_before = [], []
    for (a0, _, _), (a1, _, _) in zip(arrivals, arrivals[1:]):
        if a0 < t1 and a1 > t0:
            gaps_during.append(a1 - a0)
        elif a1 < t0:
            gaps_before.append(a1 - a0)
    ms = 1000.0
    return {"echoes_during": len(during),
            "max_rtt_ms": max(during) * ms if during else None,
            "max_gap_ms": max(gaps_during) * ms if gaps_during else None,
            "baseline_echoes": len(before),
            "baseline_p50_rtt_ms": statistics.median(before) * ms if before else None,
            "baseline_max_rtt_ms": max(before) * ms if before else None,
            "baseline_max_gap_ms": max(gaps_before) * ms if gaps_before else None}


def ctl_adopt(lab):
    """`pptp-fixupctl --json ha adopt` (from here: the control socket is a
    file), timed; (wall seconds, reply or None, error or None)."""
    argv = [os.path.join(agent_bin_dir(), "pptp-fixupctl"), "--socket", lab.agent.socket, "--json", "ha", "adopt"]
    t0 = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    try:
        reply = json.loads(cp.stdout)
    except ValueError:
        return wall, None, "exit %d: %s" % (cp.returncode, cp.stderr.strip())
    return wall, reply, None if cp.returncode == 0 and reply.get("ok") else "exit %d: %s" % (
        cp.returncode, cp.stderr.strip() or reply)


def agent_bin_dir():
    from lab.agent import bin_dir
    return bin_dir()


def run_ha_adopt(args, bench, entries, labelled):
    """(b) `ha adopt` over a conntrack table of ``entries`` entries of which
    ``labelled`` carry the agent's label (created with ctnetlink), in a fresh
    lab: agent-offload with --ha-sync connlabel and --conntrack-labels, as on
    a standby gateway. The probe (a control connection's Echo-Request
    ping-pong through the agent's queue, every 1 ms) shows the packet loop's
    pause. Then a second `ha adopt` over the same table (every call already
    known: the dump and the checks without the adoption), and the kernel's
    own share: a bare dump of the table, whole and with ctnetlink's
    kernel-side filter (TCP, original destination port 1723)."""
    hooks = agent_hooks(call_id_allocation="preserve", gre_offload="nft", rules_args=["--conntrack-labels"],
                        extra_args=AGENT_LIMITS + ["--ha-sync", "connlabel"])
    r = {"entries": entries, "labelled": labelled, "checks": []}
    t_start = time.monotonic()
    with Lab(clients=1, mode="agent", name_hint="h", **hooks) as lab:
        pac, _ = start_pac(lab, bench)
        ct_max = int(lab.router_exec(["cat", "/proc/sys/net/netfilter/nf_conntrack_max"]).stdout)
        if ct_max < entries + 1000:
            # Per namespace where the kernel lets a namespace set it (it is
            # read-only outside the initial namespace on some kernels).
            lab.router_exec(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=%d" % (entries + 1000)],
                            check=False)
            ct_max = int(lab.router_exec(["cat", "/proc/sys/net/netfilter/nf_conntrack_max"]).stdout)
            if ct_max < entries + 1000:
                raise RuntimeError("nf_conntrack_max is %d, below %d entries (read-only in a namespace here: raise "
                                   "net.netfilter.nf_conntrack_max)" % (ct_max, entries))
        r["nf_conntrack_max"] = ct_max
        env = ["env", "PYTHONPATH=" + os.path.join(REPO, "tests")]
        fill = lab.router_exec(env + [PYTHON, HA_HELPER, "fill", "--entries", str(entries), "--labelled",
                                      str(labelled)], timeout=600)
        r["fill"] = json.loads(fill.stdout.strip().splitlines()[-1])
        if r["fill"]["created"] != entries:
            raise RuntimeError("created %d of %d conntrack entries: %s" % (r["fill"]["created"], entries,
                                                                         r["fill"]["first_error"]))
        log("  %d entries (%d labelled) created in %.1f s" % (entries, labelled, r["fill"]["seconds"]))
        plog = open(os.path.join(lab.tmpdir, "probe.log"), "w+b")
        probe = lab.spawn("client1", env + [PYTHON, HA_HELPER, "probe", "--server", lab.server_addr],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=plog)
        time.sleep(args.ha_probe_lead)
        pid = lab.agent.proc.pid
        before = lab.agent.stats()
        cpu0 = proc_cpu(pid)
        t0 = time.monotonic()
        wall, reply, err = ctl_adopt(lab)
        t1 = time.monotonic()
        cpu1 = proc_cpu(pid)
        time.sleep(0.5)
        t2 = time.monotonic()
        wall2, reply2, err2 = ctl_adopt(lab)
        t3 = time.monotonic()
        cpu2 = proc_cpu(pid)
        time.sleep(0.5)
        after = lab.agent.stats()
        dump = lab.router_exec(env + [PYTHON, HA_HELPER, "dump"], timeout=120)
        r["kernel_dump"] = json.loads(dump.stdout.strip().splitlines()[-1])
        out, _ = probe.communicate(input=b"\n", timeout=60)
        plog.seek(0)
        try:
            samples = json.loads(out.decode().strip().splitlines()[-1])["samples"]
        except (ValueError, IndexError, KeyError):
            raise RuntimeError("the probe gave no result: %s" % plog.read().decode(errors="replace"))
        pac.send_signal(signal.SIGTERM)
        r["agent_log_tail"] = lab.agent.output().strip().splitlines()[-5:]
    r["wall_s"] = time.monotonic() - t_start
    r["adopt"] = {"wall_ms": wall * 1000, "reply": reply, "error": err, "agent_cpu_ms": (cpu1 - cpu0) * 1000,
                  "ms_per_1k_entries": wall * 1000 / (entries / 1000.0)}
    r["adopt"].update(probe_figures(samples, t0, t1))
    r["again"] = {"wall_ms": wall2 * 1000, "reply": reply2, "error": err2, "agent_cpu_ms": (cpu2 - cpu1) * 1000,
                  "ms_per_1k_entries": wall2 * 1000 / (entries / 1000.0)}
    r["again"].update(probe_figures(samples, t2, t3))
    r["probe_echoes"] = len(samples)
    ha0, ha1 = before.get("ha") or {}, after.get("ha") or {}
    off0, off1 = before.get("offload") or {}, after.get("offload") or {}
    r["adopted"] = (reply or {}).get("adopted", (ha1.get("calls_adopted", 0) - ha0.get("calls_adopted", 0)))
    r["live_calls"] = after.get("live_calls")
    r["offload_installed"] = (off1.get("installed") or 0) - (off0.get("installed") or 0)
    checks = r["checks"]
    if err:
        checks.append("ha adopt: %s" % err)
    if r["adopted"] != labelled:
        checks.append("adopted %s calls of %d labelled" % (r["adopted"], labelled))
    if reply and (reply.get("labelled_connections") != labelled or reply.get("conflicts") or
                  reply.get("invalid_labels")):
        checks.append("ha adopt: %s" % reply)
    if reply2 and (reply2.get("already_known") != labelled or reply2.get("adopted")):
        checks.append("second ha adopt: %s" % reply2)
    if r["offload_installed"] < labelled:
        checks.append("%d of %d adopted calls offloaded" % (r["offload_installed"], labelled))
    return r


def run_ha_sync(args, bench):
    """The ha-sync mode: (a) setup rate, (b) `ha adopt` per (entries, labelled)."""
    setup, setup_runs = run_ha_setup(args, bench) if args.ha_setup_calls > 0 else ({}, [])
    adopt = []
    for entries in args.ha_entries:
        for labelled in args.ha_labelled:
            if labelled > entries:
                continue
            log("ha-sync adopt: %d conntrack entries, %d labelled ..." % (entries, labelled))
            try:
                r = run_ha_adopt(args, bench, entries, labelled)
            except (RuntimeError, netns.LabError, subprocess.SubprocessError, OSError, ValueError) as e:
                log("FAILED: %s" % e)
                adopt.append({"entries": entries, "labelled": labelled, "error": str(e),
                              "checks": ["run failed: %s" % str(e).splitlines()[0]]})
                continue
            a = r["adopt"]
            log("  adopt %.0f ms (%.2f ms per 1k entries), %s adopted, loop pause %s ms (max gap %s ms), "
                "again %.0f ms, %d check problem(s), %.1f s" % (
                    a["wall_ms"], a["ms_per_1k_entries"], r["adopted"], fmt(a["max_rtt_ms"]),
                    fmt(a["max_gap_ms"]), r["again"]["wall_ms"], len(r["checks"]), r["wall_s"]))
            adopt.append(r)
    return {"setup_calls": args.ha_setup_calls, "rounds": args.ha_rounds, "setup": setup, "adopt": adopt,
            "setup_runs": setup_runs}


def print_ha(ha, out=sys.stdout):
    def p(*a):
        print(*a, file=out)

    p("\nHA sync (--ha-sync connlabel): (a) setup rate, a fresh lab per run, %d calls, window as above," %
      ha["setup_calls"])
    p("median of %d round(s); x kern / x off = against the kernel helper / agent-offload without labels of" %
      ha["rounds"])
    p("the same run; +labels = rules with --conntrack-labels only (label space, no writes); +ha = also")
    p("--ha-sync connlabel (one synchronous ctnetlink update per call built and per call torn down).")
    hdr = "%-21s %9s %7s %6s %9s %7s %6s %8s %8s %9s" % (
        "variant", "setup/s", "x kern", "x off", "down/s", "x kern", "x off", "agent-us", "sys-us", "labels")
    p(hdr)
    p("-" * len(hdr))
    for name, _, _, _ in HA_VARIANTS:
        f = ha["setup"].get(name)
        if f is None:
            continue
        p("%-21s %9s %7s %6s %9s %7s %6s %8s %8s %9s" % (
            name, fmt(f["setup_per_s"]), fmt(f.get("setup_vs_kernel"), "%.2f", ""),
            fmt(f.get("setup_vs_off"), "%.2f", ""), fmt(f["teardown_per_s"]),
            fmt(f.get("teardown_vs_kernel"), "%.2f", ""), fmt(f.get("teardown_vs_off"), "%.2f", ""),
            fmt(f["agent_cpu_us_per_setup"]), fmt(f["system_cpu_us_per_setup"]),
            "%s+%s" % (fmt(f["labels_written_setup"]), fmt(f["labels_written_teardown"]))
            if f["labels_written_setup"] is not None else "-"))
    if ha["adopt"]:
        p("\n(b) `pptp-fixupctl ha adopt` (agent-offload, --ha-sync connlabel) over a conntrack table of N entries")
        p("(ctnetlink-created TCP ESTABLISHED), M of them labelled control connections of one call each.")
        p("wall = the command's wall time; ms/1k = wall per 1,000 entries; pause = largest round trip of a")
        p("control-connection Echo probe (every 1 ms through the agent's queue) that overlapped it, gap = the")
        p("largest gap between its replies then (base: before it); again = a second adopt, every call known;")
        p("dump = a bare ctnetlink dump of the table from Python (no parsing), flt = the same with the kernel-side")
        p("filter (CTA_FILTER: TCP, original destination port 1723), ms.")
        hdr = "%8s %7s %8s %7s %8s %8s %7s %7s %7s %8s %8s %6s %5s" % (
            "entries", "labeled", "wall ms", "ms/1k", "agent ms", "adopted", "pause", "gap", "base", "again ms",
            "again ps", "dump", "flt")
        p(hdr)
        p("-" * len(hdr))
        for r in ha["adopt"]:
            if "error" in r:
                p("%8d %7d FAILED: %s" % (r["entries"], r["labelled"], r["error"]))
                continue
            a, g, kd = r["adopt"], r["again"], r.get("kernel_dump") or {}
            p("%8d %7d %8.0f %7.2f %8.0f %8s %7s %7s %7s %8.0f %8s %6s %5s" % (
                r["entries"], r["labelled"], a["wall_ms"], a["ms_per_1k_entries"], a["agent_cpu_ms"],
                fmt(r["adopted"]), fmt(a["max_rtt_ms"], "%.0f"), fmt(a["max_gap_ms"], "%.0f"),
                fmt(a["baseline_max_rtt_ms"], "%.1f"), g["wall_ms"], fmt(g["max_rtt_ms"], "%.0f"),
                fmt(per(kd.get("full_seconds"), 1, 1000.0)), fmt(per(kd.get("filtered_seconds"), 1, 1000.0))))


def draw_ha(axes, ha, colours):
    """The ha-sync row of the chart: setups/s and teardowns/s per variant,
    adopt wall time and loop pause per table."""
    ax = axes[0]
    names = [n for n, _, _, _ in HA_VARIANTS if n in ha["setup"]]
    cols = {KERNEL: colours[KERNEL], "agent-offload": colours["agent-offload"],
            "agent-offload+labels": "#7fb3e0", HA_ON: "#c0392b"}
    if names:
        vals = [ha["setup"][n]["setup_per_s"] or 0 for n in names]
        b = ax.bar(range(len(names)), vals, color=[cols[n] for n in names])
        for rect, n in zip(b, names):
            f = ha["setup"][n]
            x = f.get("setup_vs_kernel")
            ax.annotate("%.0f%s" % (f["setup_per_s"] or 0, "\n%.2fx kern" % x if x else ""),
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.axhline(TARGETS["setups_per_s"], color="k", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("agent-offload", "offload").replace("+", "\n+") for n in names], fontsize=8)
        ax.set_ylim(0, 1.3 * max(max(vals), TARGETS["setups_per_s"]))
    ax.set_title("HA sync: call setups/s (%d calls; median of %d)" % (ha["setup_calls"], ha["rounds"]),
                 fontsize=10)
    ax.set_ylabel("calls/s", fontsize=8)
    ax = axes[1]
    if names:
        vals = [ha["setup"][n]["teardown_per_s"] or 0 for n in names]
        b = ax.bar(range(len(names)), vals, color=[cols[n] for n in names])
        for rect, v in zip(b, vals):
            ax.annotate("%.0f" % v, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("agent-offload", "offload").replace("+", "\n+") for n in names], fontsize=8)
        ax.set_yscale("log")
    ax.set_title("HA sync: call teardowns/s (log)", fontsize=10)
    ax.set_ylabel("calls/s", fontsize=8)
    ax = axes[2]
    ok = [r for r in ha["adopt"] if "error" not in r]
    if ok:
        labels = ["%dk entries\n%dk labelled" % (r["entries"] // 1000, r["labelled"] // 1000)
                  if r["labelled"] >= 1000 else "%d entries\n%d labelled" % (r["entries"], r["labelled"])
                  for r in ok]
        xs = list(range(len(ok)))
        w = 0.4
        walls = [r["adopt"]["wall_ms"] for r in ok]
        pauses = [r["adopt"]["max_rtt_ms"] or 0 for r in ok]
        b1 = ax.bar([x - w / 2 for x in xs], walls, w, label="ha adopt wall", color="#c0392b")
        b2 = ax.bar([x + w / 2 for x in xs], pauses, w, label="packet-loop pause (probe)", color="#e59866")
        for rect, r in zip(b1, ok):
            ax.annotate("%.0f ms\n%.1f/1k" % (r["adopt"]["wall_ms"], r["adopt"]["ms_per_1k_entries"]),
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom",
                        fontsize=6.5)
        for rect, v in zip(b2, pauses):
            ax.annotate("%.0f" % v, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                        va="bottom", fontsize=6.5)
        ax.axhline(100, color="k", linestyle=":", linewidth=1)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylim(0, 1.3 * max(walls + pauses + [100]))
        ax.legend(fontsize=7)
    ax.set_title("HA sync: `ha adopt` over the conntrack table", fontsize=10)
    ax.set_ylabel("ms", fontsize=8)


# ------------------------------------------------------------------ report

def fmt(v, spec="%.0f", none="-"):
    return none if v is None else spec % v


def mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def build_rows(runs, modes):
    """Per configuration: each mode's figures and, for each agent mode, its
    ratios against the kernel helper of the same configuration and run."""
    rows = []
    by = {}
    for r in runs:
        by.setdefault((r["calls"], r["payload"]), {})[r["mode"]] = r
    for (calls, payload), present in by.items():
        row = {"calls": calls, "payload": payload, "modes": {}, "vs_kernel": {}}
        for mode in modes:
            r = present.get(mode)
            if r is None:
                continue
            m = phase_of(r["pns"], "max") or {}
            pc = phase_of(r["pns"], "paced") or {"rtt_us": {}}
            row["modes"][mode] = {
                "delivered_pps": m.get("delivered_pps"),
                "system_cpu_us_per_echo": m.get("system_cpu_us_per_echo"),
                "path_cpu_us_per_echo": m.get("path_cpu_us_per_echo"),
                "paced_system_cpu_us_per_echo": pc.get("system_cpu_us_per_echo"),
                "paced_p50_us": pc["rtt_us"].get("p50"),
                "paced_p99_us": pc["rtt_us"].get("p99"),
                "paced_p99_per_second_median_us": pc["rtt_us"].get("p99_per_second_median"),
                "paced_overloaded": pc.get("overloaded"),
                "setup_calls_per_s": r.get("setup_calls_per_s"),
                "teardown_calls_per_s": r.get("teardown_calls_per_s"),
                "queue_gre_share": m.get("queue_gre_share"),
            }
        k = row["modes"].get(KERNEL)
        for mode, f in row["modes"].items():
            if mode == KERNEL or k is None:
                continue

            def sub(a, b):
                return (a - b) if (a is not None and b is not None) else None

            row["vs_kernel"][mode] = {
                "delivered_pps": per(f["delivered_pps"], k["delivered_pps"]),
                "system_cpu_per_echo": per(f["system_cpu_us_per_echo"], k["system_cpu_us_per_echo"]),
                "path_cpu_per_echo": per(f["path_cpu_us_per_echo"], k["path_cpu_us_per_echo"]),
                "paced_system_cpu_per_echo": per(f["paced_system_cpu_us_per_echo"],
                                                 k["paced_system_cpu_us_per_echo"]),
                "p99_added_us": sub(f["paced_p99_us"], k["paced_p99_us"]),
                "p99_per_second_added_us": sub(f["paced_p99_per_second_median_us"],
                                               k["paced_p99_per_second_median_us"]),
                "p50_added_us": sub(f["paced_p50_us"], k["paced_p50_us"]),
                "setup_main": per(f["setup_calls_per_s"], k["setup_calls_per_s"]),
                "kernel_overloaded_paced": k["paced_overloaded"],
            }
        rows.append(row)
    return rows


def setup_summary(setup_runs):
    """The setup-rate runs: per mode, setups/s over --setup-calls calls."""
    out = {}
    for r in setup_runs:
        if "error" in r or not r.get("setup_rate_calls"):
            continue
        out[r["mode"]] = {"calls": r["setup_rate_calls"], "setup_per_s": r.get("setup_rate_per_s"),
                          "teardown_per_s": r.get("setup_rate_teardown_per_s"),
                          "agent_cpu_us_per_setup": r.get("agent_cpu_us_per_setup"),
                          "system_cpu_us_per_setup": r.get("system_cpu_us_per_setup"),
                          "offloaded": r.get("setup_rate_offloaded"), "checks": r["checks"]}
    k = out.get(KERNEL)
    for mode, f in out.items():
        if mode != KERNEL and k:
            f["vs_kernel"] = per(f["setup_per_s"], k["setup_per_s"])
    return out


def target_verdicts(rows, setups, scale):
    """The issue's targets for agent-offload, one line each."""
    out = []

    def verdict(name, config, value, ok, bound):
        out.append({"target": name, "config": config, "value": value, "met": ok, "bound": bound})

    for row in rows:
        v = row["vs_kernel"].get("agent-offload")
        if v is None:
            continue
        cfg = "%dc/%dB" % (row["calls"], row["payload"])
        if row["calls"] == 1:
            x = v["delivered_pps"]
            verdict("rate >= %.1fx kernel at 1 call" % TARGETS["rate_1_call"], cfg, x,
                    x is not None and x >= TARGETS["rate_1_call"], TARGETS["rate_1_call"])
        if row["calls"] >= 10000:
            x = v["delivered_pps"]
            verdict("rate >= %.0fx kernel at 10,000 calls" % TARGETS["rate_10000_calls"], cfg, x,
                    x is not None and x >= TARGETS["rate_10000_calls"], TARGETS["rate_10000_calls"])
        x = v["system_cpu_per_echo"]
        verdict("CPU/packet <= %.1fx kernel" % TARGETS["cpu_per_packet"], cfg, x,
                x is not None and x <= TARGETS["cpu_per_packet"], TARGETS["cpu_per_packet"])
        x = v["p99_added_us"]
        verdict("added p99 <= %.0f us%s" % (TARGETS["p99_added_us"], " (kernel overloaded)"
                                             if v.get("kernel_overloaded_paced") else ""), cfg, x,
                x is not None and x <= TARGETS["p99_added_us"], TARGETS["p99_added_us"])
        out[-1]["per_second_median"] = v.get("p99_per_second_added_us")
    f = setups.get("agent-offload")
    if f:
        x = f["setup_per_s"]
        verdict("setups/s >= %.0f (%d calls, window)" % (TARGETS["setups_per_s"], f["calls"]), "setup run", x,
                x is not None and x >= TARGETS["setups_per_s"], TARGETS["setups_per_s"])
    if scale and scale.get("setup_calls_per_s") is not None:
        x = scale["setup_calls_per_s"]
        verdict("setups/s >= %.0f (offload-scale, %d calls, no packets)" % (TARGETS["setups_per_s"],
                                                                          scale["calls"]),
                "scale", x, x >= TARGETS["setups_per_s"], TARGETS["setups_per_s"])
    return out


def print_report(runs, rows, setups, scale, verdicts, modes, args, out=sys.stdout):
    def p(*a):
        print(*a, file=out)

    all_runs = runs
    runs = [r for r in all_runs if r.get("kind") != "setup-rate"]

    def name(r):
        return ("setup-rate run" if r.get("kind") == "setup-rate" else "%dc/%dB" % (r["calls"], r["payload"]))

    p("\nData plane, one line per run. 'max' phase: unpaced for the configured time; 'pcd' = paced phase")
    p("(same target rate in every mode; '*' = overloaded: offered below 95% of the target, loss above 1% or")
    p("a median round trip above 10 ms).")
    p("deliv/s = valid echoes per second; loss% = 1 - echoes/sent ('h': partly lost by the harness itself);")
    p("qdrop% = share of sent packets the kernel dropped at the agent's full NFQUEUE; queue% = share of the")
    p("echoes' router crossings the queue saw (100 on the queue path, ~0 offloaded). p50/p99 = round trip")
    p("PNS->PAC->PNS in us (max phase: includes queueing under overload). agCPUs = agent CPU s in the max")
    p("phase. sys-us = whole-machine busy CPU (/proc/stat) per echo; path-us = CPU of the path only (harness")
    p("+ agent + softirq) per echo; both max phase.")
    hdr = ("%-12s %-13s %8s %8s %7s %6s %6s %7s %7s %6s %8s %6s %6s %7s %7s" %
           ("config", "mode", "offer/s", "deliv/s", "loss%", "qdrop%", "queue%", "p50us", "p99us", "pcd50",
            "pcd99", "agCPUs", "RSSMiB", "sys-us", "path-us"))
    p(hdr)
    p("-" * len(hdr))
    for r in runs:
        m = phase_of(r["pns"], "max") or {}
        pc = phase_of(r["pns"], "paced") or {"rtt_us": {}}
        is_agent = r["mode"] in AGENT_MODES
        qdrop = per(m.get("queue_dropped"), m.get("sent"), 100.0) if is_agent else None
        p("%-12s %-13s %8s %8s %7s %6s %6s %7s %7s %6s %8s %6s %6s %7s %7s" % (
            "%dc/%dB" % (r["calls"], r["payload"]), r["mode"],
            fmt(m.get("offered_pps")), fmt(m.get("delivered_pps")),
            fmt(m.get("loss_pct"), "%.2f") + ("h" if m.get("harness_drops") else " "),
            fmt(qdrop, "%.2f"),
            fmt(per(m.get("queue_gre_share"), 1, 100.0), "%.1f") if is_agent else "-",
            fmt(m.get("rtt_us", {}).get("p50")), fmt(m.get("rtt_us", {}).get("p99")),
            fmt(pc["rtt_us"].get("p50")),
            fmt(pc["rtt_us"].get("p99")) + ("*" if pc.get("overloaded") else " "),
            fmt(m.get("agent_cpu_s"), "%.2f") if is_agent else "-",
            fmt((r.get("agent_rss_up") or 0) / 2**20, "%.1f") if is_agent else "-",
            fmt(m.get("system_cpu_us_per_echo"), "%.1f"),
            fmt(m.get("path_cpu_us_per_echo"), "%.1f")))

    p("\nAgainst the kernel helper, same configuration, same run (x = mode / kernel). rate-x = delivered")
    p("echoes/s, max phase; cpu-x = whole-machine CPU (/proc/stat) per delivered echo, max phase; path-x = the")
    p("same for the path's CPU only; +p99us = the mode's p99 round trip minus the kernel helper's, paced phase")
    p("('*' = the kernel helper was overloaded there); +p99s = the same for the median over the phase's seconds")
    p("of each second's p99 (robust to a few seconds stalled by other tenants); setup/s = the configuration's")
    p("N calls set up (window --window; one call's latency at N = 1), setup-x its ratio. Targets for")
    p("agent-offload: rate-x >= 1.0 at 1 call and >= 9 at 10,000 calls, cpu-x <= 1.0, +p99us <= 50;")
    p("setups/s >= 5000: see 'Setup rate'.")
    hdr = "%-12s %-13s %7s %6s %6s %9s %8s %8s %7s" % ("config", "mode", "rate-x", "cpu-x", "path-x", "+p99us",
                                                        "+p99s", "setup/s", "setup-x")
    p(hdr)
    p("-" * len(hdr))
    for row in rows:
        for mode in modes:
            f = row["modes"].get(mode)
            if f is None:
                continue
            v = row["vs_kernel"].get(mode, {})
            p("%-12s %-13s %7s %6s %6s %9s %8s %8s %7s" % (
                "%dc/%dB" % (row["calls"], row["payload"]), mode,
                fmt(v.get("delivered_pps"), "%.2f", "" if mode == KERNEL else "-"),
                fmt(v.get("system_cpu_per_echo"), "%.2f", "" if mode == KERNEL else "-"),
                fmt(v.get("path_cpu_per_echo"), "%.2f", "" if mode == KERNEL else "-"),
                (fmt(v.get("p99_added_us"), "%+.0f") + ("*" if v.get("kernel_overloaded_paced") else " "))
                if mode != KERNEL else "",
                fmt(v.get("p99_per_second_added_us"), "%+.0f") if mode != KERNEL else "",
                fmt(f.get("setup_calls_per_s")),
                fmt(v.get("setup_main"), "%.2f", "" if mode == KERNEL else "-")))

    p("\nControl plane of the configurations: setup/s = the N calls set up (SCCRQ/SCCRP/OCRQ/OCRP, then one")
    p("GRE packet each; window --window), down/s = torn down (CCRQ/CDN/StopCCRQ/RP); agent-us = agent CPU per")
    p("call set up; agent B/call = agent RSS growth per call; kern B/call = whole-machine kernel memory")
    p("growth per call (slab objects + percpu + vmalloc; includes the harness's sockets and conntrack in")
    p("every mode; noise below ~1000 calls).")
    hdr2 = "%-7s %-13s %9s %9s %8s %9s %10s %10s" % (
        "calls", "mode", "setup/s", "down/s", "agent-us", "RSS MiB", "agent B/c", "kern B/c")
    p(hdr2)
    p("-" * len(hdr2))
    seen = set()
    for r in runs:
        key = (r["calls"], r["mode"])
        if key in seen:
            continue
        seen.add(key)
        same = [x for x in runs if x["calls"] == r["calls"] and x["mode"] == r["mode"]]
        is_agent = r["mode"] in AGENT_MODES
        p("%-7d %-13s %9s %9s %8s %9s %10s %10s" % (
            r["calls"], r["mode"],
            fmt(mean(x.get("setup_calls_per_s") for x in same)),
            fmt(mean(x.get("teardown_calls_per_s") for x in same)),
            fmt(mean(per(x.get("agent_setup_cpu_s"), x["calls"], 1e6) for x in same)) if is_agent else "-",
            fmt((r.get("agent_rss_up") or 0) / 2**20, "%.1f") if is_agent else "-",
            fmt(mean(x.get("agent_bytes_per_call") for x in same)) if is_agent else "-",
            fmt(mean(x.get("kernel_bytes_per_call") for x in same))))

    if setups:
        p("\nSetup rate: one more run per mode, in a fresh lab: %d calls set up, %d at a time, each with its" % (
            next(iter(setups.values()))["calls"], args.window))
        p("first GRE packet, then torn down (after one 1-call configuration whose figures are not used).")
        p("agent-us / sys-us = agent / whole-machine CPU per call set up; offloaded = calls whose maps the")
        p("agent programmed meanwhile (agent-offload).")
        hdr3 = "%-13s %9s %7s %9s %8s %8s %9s" % ("mode", "setup/s", "x kern", "down/s", "agent-us", "sys-us",
                                                   "offloaded")
        p(hdr3)
        p("-" * len(hdr3))
        for mode in modes:
            f = setups.get(mode)
            if f is None:
                continue
            p("%-13s %9s %7s %9s %8s %8s %9s" % (
                mode, fmt(f["setup_per_s"]), fmt(f.get("vs_kernel"), "%.2f", ""), fmt(f["teardown_per_s"]),
                fmt(f["agent_cpu_us_per_setup"]), fmt(f["system_cpu_us_per_setup"]),
                fmt(f["offloaded"]) if mode == "agent-offload" else "-"))

    if scale:
        p("\nOffloaded calls at scale (pptp-offload-scale: the agent's CallTable + offload bridge, no packets,")
        p("a namespace of its own; median of %d round(s)):" % len(scale.get("rounds", [])))
        if scale.get("error") or scale.get("errors"):
            p("  FAILED: %s" % (scale.get("error") or "; ".join(scale["errors"])))
        if scale.get("setup_calls_per_s") is not None:
            p("  %d calls: %.0f setups/s with the map programming (one transaction per call); counter read"
              % (scale["calls"], scale["setup_calls_per_s"]))
            p("  %.3f s (the agent's poll; bare dump %.3f s); restart adoption %.2f s (%.0f calls/s); removal"
              % (scale["poll_seconds"], scale["dump_seconds"], scale["adopt_seconds"], scale["adopt_calls_per_s"]))
            p("  %.0f calls/s. Memory per call: agent %.0f B (RSS), kernel %.0f B (slab objects %.0f + percpu"
              % (scale["teardown_calls_per_s"], scale["agent_bytes_per_call"], scale["kernel_bytes_per_call"],
                 scale["kernel_slab_objects_per_call"]))
            p("  %.0f + vmalloc %.0f); with the empty table's own share %.0f B; empty table %.0f B (whole-machine noise)."
              % (scale["kernel_percpu_per_call"], scale["kernel_vmalloc_per_call"],
                 scale["kernel_total_bytes_per_call"], scale["kernel_empty_table_bytes"]))

    if verdicts:
        p("\nTargets (agent-offload against the kernel helper, same run):")
        for v in verdicts:
            p("  %-4s %-58s %-12s %s%s" % ("met" if v["met"] else "MISS", v["target"], v["config"],
                                          fmt(v["value"], "%.2f"),
                                          "  (per-second median: %s)" % fmt(v["per_second_median"], "%+.0f")
                                          if "per_second_median" in v else ""))

    noisy = [(r, n) for r in all_runs for n in r.get("noise", [])]
    if noisy:
        p("\nNoise: other processes used the CPUs during %d phase(s); compare ratios, not absolute figures:" %
          len(noisy))
        for r, n in noisy:
            p("  %s %s: %s" % (name(r), r["mode"], n))
    problems = [(r, c) for r in all_runs for c in r["checks"]]
    p("\nChecks: %s" % ("all passed (keys, sources, sequence, duplicates, socket drops, counters, offload)"
                        if not problems else "%d problem(s)" % len(problems)))
    for r, c in problems:
        p("  %s %s: %s" % (name(r), r["mode"], c))


# ------------------------------------------------------------------- chart

def draw_chart(doc, base):
    """results.png and results.svg beside the JSON: the ratios at a glance.
    Returns the paths written, or a reason why none."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "python3-matplotlib is not installed (apt-get install python3-matplotlib); no chart"
    rows = [r for r in doc["rows"] if r["vs_kernel"]]
    ha = doc.get("ha_sync")
    has_ha = bool(ha and (ha.get("setup") or ha.get("adopt")))
    if not rows and not has_ha:
        return None, "no configuration with the kernel helper and an agent mode, no ha-sync figures; no chart"
    agent_modes = [m for m in doc["meta"]["modes"] if m in AGENT_MODES]
    colours = {"agent-queue": "#d08c30", "agent-offload": "#2e7bbf", KERNEL: "#888888"}
    labels = ["%d call%s\n%d B" % (r["calls"], "" if r["calls"] == 1 else "s", r["payload"]) for r in rows]
    x = list(range(len(rows)))
    width = 0.8 / max(1, len(agent_modes))

    nrows = (2 if rows else 0) + (1 if has_ha else 0)
    fig, axes = plt.subplots(nrows, 3, figsize=(16, 4.5 * nrows), squeeze=False)
    if has_ha:
        draw_ha(axes[nrows - 1], ha, colours)
    if not rows:
        fig.suptitle("pptp-fixupd --ha-sync connlabel (same run, %s%s)" % (
            doc["meta"]["date"], "; quick: figures not meaningful" if doc["meta"]["quick"] else ""))
        return save_chart(fig, plt, base), None
    fig.suptitle("pptp-fixupd vs the kernel's PPTP helper (same run, %s; %s)" % (
        doc["meta"]["date"], "quick: figures not meaningful" if doc["meta"]["quick"] else
        "%g s unpaced, %g kpps paced" % (doc["meta"]["seconds"], doc["meta"]["paced_rate"] / 1000)))

    def bars(ax, key, title, ylabel, log=False, lines=(), source="vs_kernel", signed=False, ticks=None):
        for i, mode in enumerate(agent_modes):
            vals = [(r[source].get(mode) or {}).get(key) for r in rows]
            xs = [xi + (i - (len(agent_modes) - 1) / 2) * width for xi in x]
            h = [v if v is not None else 0 for v in vals]
            b = ax.bar(xs, h, width, label=mode, color=colours[mode])
            for rect, v in zip(b, vals):
                if v is not None:
                    ax.annotate(("%+.0f" if signed else "%.2g") % v,
                                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                                ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        for y, text, style in lines:
            ax.axhline(y, color="k", linestyle=style, linewidth=1)
            ax.annotate(text, (ax.get_xlim()[1], y), ha="right", va="bottom", fontsize=7)
        if log:
            ax.set_yscale("log")
        if signed:
            ax.set_yscale("symlog", linthresh=100)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks or labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)

    bars(axes[0][0], "delivered_pps", "Delivered GRE rate vs kernel helper (max phase)", "x kernel", log=True,
         lines=((1.0, "1.0x (target at 1 call)", "--"), (9.0, "9x (target at 10,000 calls)", ":")))
    bars(axes[0][1], "system_cpu_per_echo", "Whole-machine CPU per delivered packet vs kernel (max phase)",
         "x kernel", lines=((1.0, "1.0x (target: at most)", "--"),))
    for i, mode in enumerate(agent_modes):  # the per-second-median variant as markers
        vals = [(r["vs_kernel"].get(mode) or {}).get("p99_per_second_added_us") for r in rows]
        xs = [xi + (i - (len(agent_modes) - 1) / 2) * width for xi, v in zip(x, vals) if v is not None]
        if xs:
            axes[0][2].plot(xs, [v for v in vals if v is not None], "kx", markersize=6,
                            label="per-second p99 median" if i == 0 else None)
    bars(axes[0][2], "p99_added_us", "Added p99 round trip at %g kpps paced (mode - kernel)" % (
        doc["meta"]["paced_rate"] / 1000), "us (symlog)", signed=True, lines=((50, "+50 us (target: at most)",
                                                                              "--"), (0, "", "-")),
         ticks=[lab + ("\n(kernel overloaded)" if any((v or {}).get("kernel_overloaded_paced")
                                                      for v in r["vs_kernel"].values()) else "")
                for lab, r in zip(labels, rows)])

    ax = axes[1][0]
    all_modes = doc["meta"]["modes"]
    setups = doc.get("setup_rate") or {}
    groups = []
    if setups:
        groups.append(("setup run\n%d calls" % next(iter(setups.values()))["calls"],
                       {m: f.get("setup_per_s") for m, f in setups.items()}))
    for r in rows:
        groups.append(("%d call%s\n(config)" % (r["calls"], "" if r["calls"] == 1 else "s"),
                       {m: f.get("setup_calls_per_s") for m, f in r["modes"].items()}))
    seen_groups = set()
    groups = [g for g in groups if not (g[0] in seen_groups or seen_groups.add(g[0]))]  # one per call count
    w = 0.8 / max(1, len(all_modes))
    for i, mode in enumerate(all_modes):
        vals = [g[1].get(mode) for g in groups]
        xs = [xi + (i - (len(all_modes) - 1) / 2) * w for xi in range(len(groups))]
        b = ax.bar(xs, [v or 0 for v in vals], w, label=mode, color=colours[mode])
        for rect, v in zip(b, vals):
            if v:
                ax.annotate("%.0f" % v, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.axhline(TARGETS["setups_per_s"], color="k", linestyle="--", linewidth=1)
    ax.annotate("5,000/s (target: at least)", (ax.get_xlim()[1], TARGETS["setups_per_s"]), ha="right",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_title("Call setups/s (window %d; at 1 call: one call's latency)" % doc["meta"]["window"], fontsize=10)
    ax.set_ylabel("calls/s", fontsize=8)
    ax.legend(fontsize=7)

    ax = axes[1][1]
    scale = doc.get("scale") or {}
    names, vals, cols = [], [], []
    if scale.get("agent_bytes_per_call") is not None:
        names += ["scale:\nagent", "scale:\nkernel"]
        vals += [scale["agent_bytes_per_call"], scale["kernel_bytes_per_call"]]
        cols += [colours["agent-offload"], "#5aa469"]
        hatches = ["", ""]
    else:
        hatches = []
    big = [r for r in doc["runs"] if "error" not in r and r["calls"] >= 1000]
    for mode in all_modes:
        same = [r for r in big if r["mode"] == mode]
        if mode in AGENT_MODES:
            v = mean(r.get("agent_bytes_per_call") for r in same)
            if v is not None:
                names.append("%s\nRSS" % mode.replace("agent-", ""))
                vals.append(v)
                cols.append(colours[mode])
                hatches.append("")
        v = mean(r.get("kernel_bytes_per_call") for r in same)
        if v is not None:
            names.append("%s\nkernel*" % mode.replace("agent-", "").replace("kernel-", ""))
            vals.append(v)
            cols.append(colours[mode])
            hatches.append("//")
    if names:
        b = ax.bar(range(len(names)), vals, color=cols, hatch=hatches)
        ax.set_ylim(0, 1.45 * max(max(vals), 1))  # room for the note above the bars
        for rect, v in zip(b, vals):
            ax.annotate("%.0f" % v, (rect.get_x() + rect.get_width() / 2, max(0, rect.get_height())),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7)
    ax.set_title("Memory per call: %s offloaded calls (pptp-offload-scale)%s" % (
        fmt(scale.get("calls")), (", %s-call lab runs" % "/".join(str(c) for c in sorted({r["calls"] for r in big})))
        if big else ""), fontsize=9)
    ax.set_ylabel("bytes per call", fontsize=8)
    if big:
        ax.annotate("scale: pptp-offload-scale (agent CallTable RSS, kernel nft maps)\n"
                    "RSS: pptp-fixupd in the lab runs; * whole-machine kernel memory in\n"
                    "the lab runs, includes the harness's 2 TCP sockets per call", (0.01, 0.97),
                    xycoords="axes fraction", va="top", fontsize=7)

    ax = axes[1][2]
    ax.axis("off")
    text = ["Targets (agent-offload vs kernel helper):"]
    for v in doc.get("targets", []):
        text.append("%s  %s %s: %s" % ("met " if v["met"] else "MISS", v["config"], v["target"],
                                       fmt(v["value"], "%.2f")))
    problems = sum(len(r["checks"]) for r in doc["runs"] + doc.get("setup_runs", []))
    text.append("")
    text.append("checks: %s" % ("all passed" if not problems else "%d problem(s), see results.json" % problems))
    ax.text(0, 1, "\n".join(text), va="top", ha="left", fontsize=7.5, family="monospace", transform=ax.transAxes)

    return save_chart(fig, plt, base), None


def save_chart(fig, plt, base):
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = base + "." + ext
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


# -------------------------------------------------------------------- main

def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="calls 1,100, payload 64, 1 s phases, 200 setup-rate calls, 4096 scale calls once "
                         "(CI smoke; figures are not meaningful)")
    ap.add_argument("--seconds", type=float, help="unpaced phase length (default 5, quick 1)")
    ap.add_argument("--calls", type=int_list, help="default 1,100,10000 (quick 1,100)")
    ap.add_argument("--payloads", type=int_list, help="PPP payload bytes, default 64,1400 (quick 64)")
    ap.add_argument("--rate", type=float, default=0, help="rate of the 'max' phase, pps (0 = unpaced)")
    ap.add_argument("--paced-rate", type=float, default=10000,
                    help="rate of the latency phase, pps, same in every mode (0 = no paced phase)")
    ap.add_argument("--paced-seconds", type=float, help="default 2 (quick 1)")
    ap.add_argument("--window", type=int, default=128, help="calls being set up (or torn down) at once")
    ap.add_argument("--setup-calls", type=int,
                    help="calls of the setup-rate phase of every run (default 10000, quick 200; 0 = none)")
    ap.add_argument("--setup-timeout", type=float, default=120)
    ap.add_argument("--modes", default=",".join(MODES + (HA_MODE,)),
                    help="comma list of %s (default all; 'agent' = agent-queue; %s: the --ha-sync connlabel "
                         "runs, after the others)" % (", ".join(MODES + (HA_MODE,)), HA_MODE))
    ap.add_argument("--ha-setup-calls", type=int,
                    help="ha-sync: calls of each setup-rate run (default --setup-calls, or 10000 if that is 0; "
                         "0 = no setup-rate runs)")
    ap.add_argument("--ha-rounds", type=int, help="ha-sync: setup-rate runs per variant, median taken "
                                                   "(default 3, quick 1)")
    ap.add_argument("--ha-entries", type=int_list,
                    help="ha-sync: conntrack table sizes for `ha adopt` (default 10000,100000; quick 2000)")
    ap.add_argument("--ha-labelled", type=int_list,
                    help="ha-sync: labelled control connections among them (default 1000,10000; quick 200)")
    ap.add_argument("--ha-probe-lead", type=float, default=1.0,
                    help="ha-sync: seconds of probe before the adopt (its baseline)")
    ap.add_argument("--scale-calls", type=int,
                    help="offloaded calls of pptp-offload-scale (default 65536, quick 4096; 0 = skip it)")
    ap.add_argument("--scale-rounds", type=int, help="pptp-offload-scale runs, median taken (default 3, quick 1)")
    ap.add_argument("--bench-bin", help="pptp-bench (default: next to $PPTP_FIXUP_BIN); pptp-offload-scale is "
                                        "looked for beside it")
    ap.add_argument("--scale-bin", help="pptp-offload-scale (default: beside pptp-bench)")
    ap.add_argument("--json-out", default=os.path.join(REPO, "build", "bench", "results.json"))
    ap.add_argument("--no-chart", action="store_true", help="no results.png / results.svg")
    ap.add_argument("--smoke", action="store_true",
                    help="exit 1 unless every run produced numbers (all calls up, some echoes, setup rate) and "
                         "agent-offload really offloaded; nothing about speed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (network namespaces)")
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    args.paced_seconds = args.paced_seconds if args.paced_seconds is not None else (1.0 if args.quick else 2.0)
    args.calls = args.calls or ([1, 100] if args.quick else [1, 100, 10000])
    args.payloads = args.payloads or ([64] if args.quick else [64, 1400])
    args.setup_calls = args.setup_calls if args.setup_calls is not None else (200 if args.quick else 10000)
    args.scale_calls = args.scale_calls if args.scale_calls is not None else (4096 if args.quick else 65536)
    args.scale_rounds = max(1, args.scale_rounds if args.scale_rounds is not None else (1 if args.quick else 3))
    modes = []
    ha_mode = False
    for m in args.modes.split(","):
        m = ALIASES.get(m.strip(), m.strip())
        if not m:
            continue
        if m == HA_MODE:
            ha_mode = True
            continue
        if m not in MODES:
            sys.exit("run.py: unknown mode %r (expected %s)" % (m, ", ".join(MODES + (HA_MODE,))))
        if m not in modes:
            modes.append(m)
    if args.ha_setup_calls is None:
        args.ha_setup_calls = args.setup_calls or (200 if args.quick else 10000)
    args.ha_rounds = max(1, args.ha_rounds if args.ha_rounds is not None else (1 if args.quick else 3))
    args.ha_entries = args.ha_entries or ([2000] if args.quick else [10000, 100000])
    args.ha_labelled = args.ha_labelled or ([200] if args.quick else [1000, 10000])
    if not 0 <= args.ha_setup_calls <= 30000:
        sys.exit("run.py: --ha-setup-calls must be 0..30000")
    if max(args.ha_labelled) > 30000 or min(args.ha_labelled) < 0 or min(args.ha_entries) < 1:
        sys.exit("run.py: --ha-labelled must be 0..30000 (distinct Call IDs), --ha-entries at least 1")
    for n in args.calls:
        if not 1 <= n <= 30000:
            sys.exit("run.py: --calls values must be 1..30000 (inside and public Call IDs are kept apart)")
    if not 0 <= args.setup_calls <= 30000 or max(args.calls) + args.setup_calls > 32000:
        sys.exit("run.py: --setup-calls must be 0..30000, and calls + setup calls at most 32000")
    bench = bench_binary(args)
    if not os.access(bench, os.X_OK):
        sys.exit("run.py: no pptp-bench at %s (build the preset, or --bench-bin)" % bench)
    netns.reap_stale()

    started = time.monotonic()
    runs = []
    configs = [(c, p) for c in args.calls for p in args.payloads]
    for i, (calls, payload) in enumerate(configs):
        order = modes if i % 2 == 0 else list(reversed(modes))  # alternate who goes first
        for mode in order:
            log("%d calls, %d-byte payload, %s ..." % (calls, payload, mode))
            try:
                r = run_one(args, bench, mode, calls, payload)
            except (RuntimeError, netns.LabError, subprocess.SubprocessError, OSError) as e:
                log("FAILED: %s" % e)
                r = {"mode": mode, "calls": calls, "payload": payload, "error": str(e),
                     "checks": ["run failed: %s" % str(e).splitlines()[0]]}
                runs.append(r)
                continue
            m = phase_of(r["pns"], "max")
            log("  %.0f pps delivered of %.0f offered, loss %.2f%%, %d check problem(s), %.1f s" % (
                m["delivered_pps"], m["offered_pps"], m["loss_pct"], len(r["checks"]), r["wall_s"]))
            runs.append(r)
    # The setup rate: a run of its own per mode (1 call, a short unpaced
    # phase, then --setup-calls calls set up and torn down), so every mode
    # starts it from a clean lab: no calls, expectations, keymaps or
    # TIME_WAIT connections of a configuration before it.
    setup_runs = []
    if args.setup_calls > 0:
        order = modes if len(configs) % 2 == 0 else list(reversed(modes))
        for mode in order:
            log("setup rate: %d calls, %s ..." % (args.setup_calls, mode))
            try:
                r = run_one(args, bench, mode, 1, 64, setup_calls=args.setup_calls, seconds=min(args.seconds, 0.5),
                            paced=False)
            except (RuntimeError, netns.LabError, subprocess.SubprocessError, OSError) as e:
                log("FAILED: %s" % e)
                setup_runs.append({"mode": mode, "calls": 1, "payload": 64, "kind": "setup-rate", "error": str(e),
                                   "checks": ["run failed: %s" % str(e).splitlines()[0]]})
                continue
            log("  %s setups/s, %s teardowns/s, %d check problem(s), %.1f s" % (
                fmt(r.get("setup_rate_per_s")), fmt(r.get("setup_rate_teardown_per_s")), len(r["checks"]),
                r["wall_s"]))
            setup_runs.append(r)
    scale = run_scale(args) if args.scale_calls > 0 and modes else None
    ha = run_ha_sync(args, bench) if ha_mode else None
    elapsed = time.monotonic() - started
    ok_runs = [r for r in runs if "error" not in r]
    rows = build_rows(ok_runs, modes)
    setups = setup_summary(setup_runs)
    verdicts = target_verdicts(rows, setups, scale)
    if modes:
        print_report(ok_runs + [r for r in setup_runs if "error" not in r], rows, setups, scale, verdicts, modes,
                     args)
    if ha:
        print_ha(ha)
        problems = [(r.get("variant"), c) for r in ha["setup_runs"] for c in r["checks"]] + [
            ("adopt %d/%d" % (r["entries"], r["labelled"]), c) for r in ha["adopt"] for c in r["checks"]]
        print("\nHA sync checks: %s" % ("all passed (labels written, no failures; adopted = labelled, "
                                        "offloaded, second adopt all known)" if not problems
                                        else "%d problem(s)" % len(problems)))
        for who, c in problems:
            print("  %s: %s" % (who, c))
    for r in runs + setup_runs:
        if "error" in r:
            print("FAILED run: %dc/%dB %s: %s" % (r["calls"], r["payload"], r["mode"], r["error"]))

    doc = {
        "meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "seconds": args.seconds, "paced_rate": args.paced_rate,
                 "paced_seconds": args.paced_seconds, "calls": args.calls, "payloads": args.payloads,
                 "modes": modes, "window": args.window, "setup_calls": args.setup_calls,
                 "quick": args.quick, "elapsed_s": elapsed, "bench": bench, "argv": sys.argv[1:],
                 "agent_bin": os.environ.get("PPTP_FIXUP_BIN"), "targets": TARGETS, "ha_sync": ha_mode,
                 "ha_setup_calls": args.ha_setup_calls, "ha_rounds": args.ha_rounds,
                 "ha_entries": args.ha_entries, "ha_labelled": args.ha_labelled},
        "rows": rows,
        "setup_rate": setups,
        "targets": verdicts,
        "scale": scale,
        "runs": runs,
        "setup_runs": setup_runs,
        "ha_sync": ha,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    chart = "chart: off (--no-chart)"
    if not args.no_chart:
        try:
            paths, why = draw_chart(doc, os.path.splitext(os.path.abspath(args.json_out))[0])
            chart = ("chart: " + ", ".join(paths)) if paths else why
        except Exception as e:  # a chart problem must not lose the measurements
            chart = "chart failed: %r (the JSON is complete)" % (e,)
    n_runs = len(runs) + len(setup_runs) + (len(ha["setup_runs"]) + len(ha["adopt"]) if ha else 0)
    print("\nbenchmark time %.0f s (%d runs); JSON: %s; %s" % (elapsed, n_runs, args.json_out, chart))

    if args.smoke:
        bad = []
        for c in args.calls:
            for p in args.payloads:
                for mode in modes:
                    what = "%dc/%dB %s" % (c, p, mode)
                    r = next((x for x in ok_runs if (x["calls"], x["payload"], x["mode"]) == (c, p, mode)), None)
                    m = phase_of(r["pns"], "max") if r else None
                    if r is None or m is None or r["pns"]["setup"]["calls_up"] != c or not m["received"] \
                            or m.get("delivered_pps") is None or m["rtt_us"].get("p99") is None \
                            or m.get("system_cpu_us_per_echo") is None:
                        bad.append(what + ": no data-plane numbers")
                        continue
                    pc = phase_of(r["pns"], "paced")
                    if args.paced_rate > 0 and args.paced_seconds > 0 and (
                            pc is None or pc["rtt_us"].get("p99") is None):
                        bad.append(what + ": no paced p99")
                    if mode == "agent-offload":
                        queue_gre, echoes = r.get("queue_gre_traffic"), r.get("echoes") or 0
                        if (r.get("offload_installed") or 0) < c:
                            bad.append(what + ": %s calls offloaded of %d" % (r.get("offload_installed"), c))
                        if queue_gre is None or queue_gre * 10 > echoes:
                            bad.append(what + ": the queue saw %s GRE packets for %d echoes" % (queue_gre, echoes))
                    if mode == "agent-queue" and r.get("offload_mode") != "off":
                        bad.append(what + ": offload mode %r" % r.get("offload_mode"))
        if args.setup_calls > 0:
            for mode in modes:
                f = setups.get(mode)
                if f is None or not f["setup_per_s"] or not f["teardown_per_s"]:
                    bad.append("setup rate %s: no numbers" % mode)
                elif mode == "agent-offload" and (f["offloaded"] or 0) < args.setup_calls:
                    bad.append("setup rate %s: %s of %d calls offloaded" % (mode, f["offloaded"], args.setup_calls))
        if scale is not None and (scale.get("error") or scale.get("errors")
                                  or scale.get("offloaded_min", 0) < args.scale_calls
                                  or scale.get("kernel_bytes_per_call") is None):
            bad.append("pptp-offload-scale: %s" % (scale.get("error") or scale.get("errors")
                                                   or "not every call offloaded"))
        if ha:
            for name, _, _, _ in HA_VARIANTS:
                f = ha["setup"].get(name)
                if args.ha_setup_calls > 0 and (f is None or not f["setup_per_s"]):
                    bad.append("ha-sync setup rate %s: no numbers" % name)
            f = ha["setup"].get(HA_ON)
            if f is not None and ((f["labels_written_setup"] or 0) < args.ha_setup_calls
                                  or f["label_write_failures"]):
                bad.append("ha-sync: %s labels written for %d calls, %s failures" % (
                    f["labels_written_setup"], args.ha_setup_calls, f["label_write_failures"]))
            for r in ha["adopt"]:
                if "error" in r or r["adopted"] != r["labelled"] or r["adopt"].get("max_rtt_ms") is None:
                    bad.append("ha-sync adopt %d/%d: %s" % (r["entries"], r["labelled"], r.get("error") or (
                        "adopted %s" % r["adopted"])))
        if bad:
            print("smoke: " + "; ".join(bad))
            return 1
        print("smoke: every mode produced numbers for every configuration; agent-offload offloaded its calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
