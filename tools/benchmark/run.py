#!/usr/bin/python3
"""Benchmark pptp-fixupd against the kernel's PPTP helper (run as root).

For each configuration (calls x payload), two runs in alternating order, each
in a fresh namespace lab (tests/lab): mode "agent" (project rules +
pptp-fixupd, no kernel helper) and mode "kernel-helper" (the kernel's
nf_conntrack_pptp / nf_nat_pptp, no agent). In each run, `pptp-bench pac`
(synthetic PAC + GRE reflector) runs in the server namespace and `pptp-bench
pns` in client1: it sets up N calls through the real control exchange, sends
GRE round-robin over them, unpaced ("max") for --seconds and then paced at
--paced-rate for --paced-seconds, and tears the calls down. At each phase
boundary the PNS waits while this script samples the agent (CPU time from
/proc/PID/stat, VmRSS, its `stats`), the whole machine's CPU (/proc/stat) and,
in kernel mode, conntrack (GRE entries, expectations, helper-bound TCP).

A fresh lab per run: no conntrack entries, TIME_WAIT sockets, agent table or
heap carried from one run to the next, so the two modes never see each
other's state and every RSS baseline is clean (about 2 s per run).

Prints a data-plane table, a control-plane table and the trust checks, and
writes everything as JSON (--json-out, default build/bench/results.json).

    tools/benchmark/run.py [--quick] [--seconds T] [--calls 1,100,10000]
                           [--payloads 64,1400] [--paced-rate PPS]
"""

import argparse
import datetime
import json
import os
import platform
import queue
import signal
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

MODES = ("agent", "kernel-helper")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def bench_binary(args):
    if args.bench_bin:
        return args.bench_bin
    src = os.environ.get("PPTP_FIXUP_BIN", os.path.join(REPO, "build", "release", "src"))
    return os.path.join(os.path.dirname(os.path.abspath(src)), "tools", "benchmark", "pptp-bench")


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
    """Whole machine: busy and steal seconds (all CPUs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK,
            "softirq": softirq / CLK_TCK, "steal": steal / CLK_TCK,
            "idle": (idle + iowait) / CLK_TCK}


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
    def __init__(self, lab, mode, pids):
        self.lab = lab
        self.mode = mode
        self.pids = dict(pids)  # role -> pid of the harness's own processes
        self.pid = None
        if mode == "agent":
            self.pid = lab.agent.proc.pid
            with open("/proc/%d/comm" % self.pid) as f:
                comm = f.read().strip()
            if comm != "pptp-fixupd":
                raise RuntimeError("agent pid %d is %r, not pptp-fixupd" % (self.pid, comm))

    def sample(self, label, heavy=False):
        s = {"label": label, "t": time.monotonic(), "system": system_cpu(),
             "softnet_drops": softnet_drops()}
        for role, pid in self.pids.items():
            s[role + "_cpu"] = proc_cpu(pid)
        if self.pid is not None:
            s["agent_cpu"] = proc_cpu(self.pid)
            s["agent_sched"] = proc_sched(self.pid)
            s.update(proc_status(self.pid))
            st = self.lab.agent.stats()
            s["agent_counters"] = st.get("counters", {})
            s["agent_dropped"] = {k: v for k, v in st.get("dropped", {}).items() if v}
            s["agent_queue"] = st.get("queue", {})
            s["agent_live_calls"] = st.get("live_calls")
        if heavy and self.mode == "kernel-helper":
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

def run_one(args, bench, mode, calls, payload):
    hooks = {}
    if mode == "agent":
        # Defaults, except the limits the load needs (one inside host with N
        # control connections) and a public Call ID range that never equals
        # an inside ID (1..N), so every GRE packet's key really is rewritten
        # and the PNS's key check proves the translation.
        hooks = agent_hooks(call_id_allocation="preserve", extra_args=[
            "--max-connections-per-host", "65536", "--max-connections", "65536",
            "--call-id-range", "%d-65535" % (calls + 1)])
    t0 = time.monotonic()
    result = {"mode": mode, "calls": calls, "payload": payload, "checks": []}
    with Lab(clients=1, mode=mode, name_hint="b", **hooks) as lab:
        plog = open(os.path.join(lab.tmpdir, "pac.log"), "w+b")
        pac = lab.spawn("server", [bench, "pac", "--listen", lab.server_addr],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=plog)
        deadline = time.monotonic() + 10
        while not lab.listening("server", 1723):
            if pac.poll() is not None or time.monotonic() > deadline:
                plog.seek(0)
                raise RuntimeError("pptp-bench pac did not start: %s" % plog.read().decode(errors="replace"))
            time.sleep(0.05)
        nlog = open(os.path.join(lab.tmpdir, "pns.log"), "w+b")
        argv = [bench, "pns", "--server", lab.server_addr, "--calls", str(calls),
                "--payload", str(payload), "--seconds", str(args.seconds),
                "--rate", str(args.rate), "--window", str(args.window),
                "--setup-timeout", str(args.setup_timeout), "--sync", "--json"]
        if args.paced_rate > 0 and args.paced_seconds > 0:
            argv += ["--paced-rate", str(args.paced_rate), "--paced-seconds", str(args.paced_seconds)]
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
        line_timeout = args.setup_timeout + 2 * (args.seconds + args.paced_seconds) + 60
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
        if mode == "agent":
            result["agent_log_tail"] = lab.agent.output().strip().splitlines()[-5:]
    result["wall_s"] = time.monotonic() - t0
    summarise(result)
    return result


def phase_of(pns, name):
    for p in pns.get("phases", []):
        if p["name"] == name:
            return p
    return None


def summarise(r):
    """Derived figures and trust checks of one run."""
    s, pns, mode, n = r["samples"], r["pns"], r["mode"], r["calls"]
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
    if mode == "agent":
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
        p["system_cpu_us_per_echo"] = (1e6 * p["system_busy_s"] / p["received"]) if p["received"] else None
        # CPU of everything on the path and nothing else: the harness's two
        # processes, the agent, and softirq time (where the kernel forwards,
        # runs conntrack and the helper, and queues to the agent; with IRQ
        # time accounting it is not charged to any task). Other tenants of
        # the machine are left out, which /proc/stat's busy time is not.
        p["pns_cpu_s"] = b["pns_cpu"] - a["pns_cpu"]
        p["pac_cpu_s"] = b["pac_cpu"] - a["pac_cpu"]
        p["path_cpu_s"] = p["pns_cpu_s"] + p["pac_cpu_s"] + p["system_softirq_s"] + (
            (b["agent_cpu"] - a["agent_cpu"]) if mode == "agent" else 0)
        p["path_cpu_us_per_echo"] = (1e6 * p["path_cpu_s"] / p["received"]) if p["received"] else None
        # A paced phase that could not be offered at its rate (the kernel
        # forwards inside the sender's own send calls, so a slow path slows
        # the generator) or lost packets measured an overloaded path.
        # Packets the harness itself lost (socket buffers of the PNS or the
        # PAC overflowed): counted in loss%, but not the path's doing.
        p["harness_drops"] = p["rx_socket_drops"] + (
            r.get("pac", {}).get("rx_socket_drops", 0) if name == "max" else 0)
        p["overloaded"] = bool(p["target_rate"] and (p["offered_pps"] < 0.95 * p["target_rate"]
                                                     or p["loss_pct"] > 1.0))
        # Busy time of the machine that was not the path's: other tenants
        # (a compiler, another test). Large values make this run noisy.
        p["foreign_cpu_s"] = max(0.0, p["system_busy_s"] - p["path_cpu_s"])
        if p["foreign_cpu_s"] > 0.25 * p["seconds"]:
            r.setdefault("noise", []).append("%s phase: %.1f CPU s of other work on the machine during %.1f s" % (
                name, p["foreign_cpu_s"], p["seconds"]))
        if mode == "agent":
            p["agent_cpu_s"] = b["agent_cpu"] - a["agent_cpu"]
            p["agent_rss"] = b.get("VmRSS")
            gin = diff(a, b, "agent_counters", "gre_inbound") or 0
            gout = diff(a, b, "agent_counters", "gre_outbound") or 0
            p["agent_gre_in"], p["agent_gre_out"] = gin, gout
            p["agent_cpu_us_per_packet"] = (1e6 * p["agent_cpu_s"] / (gin + gout)) if gin + gout else None
            p["queue_dropped"] = diff(a, b, "agent_queue", "kernel", "dropped")
            p["queue_user_dropped"] = diff(a, b, "agent_queue", "kernel", "user_dropped")
            p["agent_packets_dropped"] = diff(a, b, "agent_counters", "packets_dropped")
            # Was the agent short of CPU (runnable, waiting) or asleep while the queue overflowed?
            p["agent_runqueue_wait_s"] = diff(a, b, "agent_sched", "runqueue_wait_s")
            p["agent_voluntary_switches"] = diff(a, b, "agent_sched", "voluntary_ctxt_switches")
            p["agent_involuntary_switches"] = diff(a, b, "agent_sched", "nonvoluntary_ctxt_switches")
            p["agent_batches"] = diff(a, b, "agent_queue", "agent", "batches_sent")
            # Each echo crossed the agent twice; what it saw must cover what came back.
            check(gout >= p["received"] and gin >= p["received"],
                  "%s phase: agent counters (out %d, in %d) below the echoes (%d)" % (name, gout, gin,
                                                                                   p["received"]))
            check(not p["agent_packets_dropped"],
                  "%s phase: the agent dropped %s packets itself" % (name, p["agent_packets_dropped"]))
        else:
            # Path loss on the way out vs on the way back, from the PAC's view.
            pass
    if mode == "agent":
        r0, r1 = s.get("ready", {}), s.get("setup_done", {})
        r["agent_rss_ready"] = r0.get("VmRSS")
        r["agent_rss_up"] = r1.get("VmRSS")
        r["agent_rss_peak"] = max((x.get("VmHWM", 0) for x in s.values()), default=None)
        if r0.get("VmRSS") is not None and r1.get("VmRSS") is not None:
            r["agent_bytes_per_call"] = (r1["VmRSS"] - r0["VmRSS"]) / n
        r["agent_setup_cpu_s"] = diff(r0, r1, "agent_cpu")
        r["agent_teardown_cpu_s"] = diff(s.get("traffic_done", {}), s.get("teardown_done", {}), "agent_cpu")
        check(r1.get("agent_live_calls") == n, "agent lists %s live calls, expected %d" % (
            r1.get("agent_live_calls"), n))
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


# ------------------------------------------------------------------ report

def fmt(v, spec="%.0f", none="-"):
    return none if v is None else spec % v


def ratio(a, b):
    return (a / b) if (a is not None and b) else None


def build_rows(runs):
    rows = []
    by = {}
    for r in runs:
        by.setdefault((r["calls"], r["payload"]), {})[r["mode"]] = r
    for (calls, payload), modes in by.items():
        a, k = modes.get("agent"), modes.get("kernel-helper")
        row = {"calls": calls, "payload": payload}
        for name in ("max", "paced"):
            pa = phase_of(a["pns"], name) if a else None
            pk = phase_of(k["pns"], name) if k else None
            if pa and pk:
                row[name] = {
                    "delivered_pps_ratio": ratio(pa["delivered_pps"], pk["delivered_pps"]),
                    "p50_added_us": pa["rtt_us"]["p50"] - pk["rtt_us"]["p50"]
                    if pa["rtt_us"]["p50"] is not None and pk["rtt_us"]["p50"] is not None else None,
                    "p99_added_us": pa["rtt_us"]["p99"] - pk["rtt_us"]["p99"]
                    if pa["rtt_us"]["p99"] is not None and pk["rtt_us"]["p99"] is not None else None,
                    "path_cpu_per_echo_ratio": ratio(pa.get("path_cpu_us_per_echo"),
                                                     pk.get("path_cpu_us_per_echo")),
                    "path_cpu_per_echo_added_us": (pa["path_cpu_us_per_echo"] - pk["path_cpu_us_per_echo"])
                    if pa.get("path_cpu_us_per_echo") and pk.get("path_cpu_us_per_echo") else None,
                    "overloaded": {"agent": pa.get("overloaded"), "kernel-helper": pk.get("overloaded")},
                }
        if a and k:
            row["setup_rate_ratio"] = ratio(a["setup_calls_per_s"], k["setup_calls_per_s"])
            row["teardown_rate_ratio"] = ratio(a["teardown_calls_per_s"], k["teardown_calls_per_s"])
        rows.append(row)
    return rows


def print_report(runs, rows, out=sys.stdout):
    def p(*a):
        print(*a, file=out)

    hdr = ("%-12s %-13s %8s %8s %7s %6s %7s %7s %7s %8s %6s %6s %6s %7s %6s %6s %7s" %
           ("config", "mode", "offer/s", "deliv/s", "loss%", "qdrop%", "p50us", "p99us", "pcd50", "pcd99",
            "agCPUs", "ag-us/p", "RSSMiB", "us/echo", "ratio", "cpu-r", "+p99us"))
    p("\nData plane. 'max' phase: unpaced for the configured time; 'pcd' = paced phase (same target rate")
    p("in both modes; '*' = overloaded: offered below 95% of the target or loss above 1%). deliv/s = valid")
    p("echoes per second; loss% = 1 - echoes/sent; qdrop% = share of sent packets the kernel dropped at")
    p("the agent's full NFQUEUE. p50/p99 = round trip PNS->PAC->PNS, microseconds (max phase: includes")
    p("queueing under overload). agCPUs = agent CPU seconds in the max phase; ag-us/p = agent CPU per")
    p("packet it handled; us/echo = CPU of the whole path (harness + agent + softirq) per echo.")
    p("loss% marked 'h': part of it was lost by the harness itself (a socket buffer of the PNS or PAC")
    p("overflowed; see the checks). ratio = agent/kernel delivered pps (max phase); cpu-r = agent/kernel")
    p("us/echo (max phase); +p99us = agent p99 - kernel p99 (paced phase).")
    p(hdr)
    p("-" * len(hdr))
    rowmap = {(r["calls"], r["payload"]): r for r in rows}
    for r in runs:
        m = phase_of(r["pns"], "max") or {}
        pc = phase_of(r["pns"], "paced") or {"rtt_us": {}}
        row = rowmap.get((r["calls"], r["payload"]), {})
        is_agent = r["mode"] == "agent"
        qdrop = (100.0 * m["queue_dropped"] / m["sent"]) if is_agent and m.get("queue_dropped") is not None \
            and m.get("sent") else None
        p("%-12s %-13s %8s %8s %7s %6s %7s %7s %7s %8s %6s %6s %6s %7s %6s %6s %7s" % (
            "%dc/%dB" % (r["calls"], r["payload"]), r["mode"],
            fmt(m.get("offered_pps")), fmt(m.get("delivered_pps")),
            fmt(m.get("loss_pct"), "%.2f") + ("h" if m.get("harness_drops") else " "),
            fmt(qdrop, "%.2f"),
            fmt(m.get("rtt_us", {}).get("p50")), fmt(m.get("rtt_us", {}).get("p99")),
            fmt(pc["rtt_us"].get("p50")),
            fmt(pc["rtt_us"].get("p99")) + ("*" if pc.get("overloaded") else " "),
            fmt(m.get("agent_cpu_s"), "%.2f") if is_agent else "-",
            fmt(m.get("agent_cpu_us_per_packet"), "%.2f") if is_agent else "-",
            fmt((r.get("agent_rss_up") or 0) / 2**20, "%.1f") if is_agent else "-",
            fmt(m.get("path_cpu_us_per_echo"), "%.1f"),
            fmt(row.get("max", {}).get("delivered_pps_ratio"), "%.2f") if is_agent else "",
            fmt(row.get("max", {}).get("path_cpu_per_echo_ratio"), "%.2f") if is_agent else "",
            fmt(row.get("paced", {}).get("p99_added_us"), "%+.0f") if is_agent else ""))

    p("\nControl plane (calls set up = SCCRQ/SCCRP/OCRQ/OCRP + first GRE packet; torn down = CCRQ/CDN/"
      "StopCCRQ/RP)")
    hdr2 = "%-7s %-13s %11s %11s %7s %7s %11s %11s" % ("calls", "mode", "setup/s", "teardown/s", "ratio",
                                                       "ratio", "RSS up MiB", "bytes/call")
    p(hdr2)
    p("-" * len(hdr2))
    seen = set()
    for r in runs:
        key = (r["calls"], r["mode"])
        if key in seen:
            continue
        seen.add(key)
        same = [x for x in runs if x["calls"] == r["calls"] and x["mode"] == r["mode"]]
        setup = sum(x["setup_calls_per_s"] for x in same) / len(same)
        down = sum(x["teardown_calls_per_s"] for x in same) / len(same)
        other = [x for x in runs if x["calls"] == r["calls"] and x["mode"] != r["mode"]]
        oset = sum(x["setup_calls_per_s"] for x in other) / len(other) if other else None
        odown = sum(x["teardown_calls_per_s"] for x in other) / len(other) if other else None
        is_agent = r["mode"] == "agent"
        bpc = [x.get("agent_bytes_per_call") for x in same if x.get("agent_bytes_per_call") is not None]
        p("%-7d %-13s %11.0f %11.0f %7s %7s %11s %11s" % (
            r["calls"], r["mode"], setup, down,
            fmt(ratio(setup, oset), "%.2f") if is_agent else "",
            fmt(ratio(down, odown), "%.2f") if is_agent else "",
            fmt((r.get("agent_rss_up") or 0) / 2**20, "%.1f") if is_agent else "-",
            fmt(sum(bpc) / len(bpc), "%.0f") if is_agent and bpc else "-"))
    noisy = [(r, n) for r in runs for n in r.get("noise", [])]
    if noisy:
        p("\nNoise: other processes used the CPUs during %d phase(s); compare ratios, not absolute figures:" %
          len(noisy))
        for r, n in noisy:
            p("  %dc/%dB %s: %s" % (r["calls"], r["payload"], r["mode"], n))
    problems = [(r, c) for r in runs for c in r["checks"]]
    p("\nChecks: %s" % ("all passed (keys, sources, sequence, duplicates, socket drops, counters)"
                        if not problems else "%d problem(s)" % len(problems)))
    for r, c in problems:
        p("  %dc/%dB %s: %s" % (r["calls"], r["payload"], r["mode"], c))


# -------------------------------------------------------------------- main

def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="calls 1,100, payload 64, 1 s phases (CI smoke; figures are not meaningful)")
    ap.add_argument("--seconds", type=float, help="unpaced phase length (default 5, quick 1)")
    ap.add_argument("--calls", type=int_list, help="default 1,100,10000 (quick 1,100)")
    ap.add_argument("--payloads", type=int_list, help="PPP payload bytes, default 64,1400 (quick 64)")
    ap.add_argument("--rate", type=float, default=0, help="rate of the 'max' phase, pps (0 = unpaced)")
    ap.add_argument("--paced-rate", type=float, default=10000,
                    help="rate of the latency phase, pps, same in both modes (0 = no paced phase)")
    ap.add_argument("--paced-seconds", type=float, help="default 2 (quick 1)")
    ap.add_argument("--window", type=int, default=128, help="calls being set up at once")
    ap.add_argument("--setup-timeout", type=float, default=120)
    ap.add_argument("--modes", default="agent,kernel-helper")
    ap.add_argument("--bench-bin", help="pptp-bench (default: next to $PPTP_FIXUP_BIN)")
    ap.add_argument("--json-out", default=os.path.join(REPO, "build", "bench", "results.json"))
    ap.add_argument("--smoke", action="store_true",
                    help="exit 1 unless every run produced numbers (all calls up, some echoes); nothing about speed")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (network namespaces)")
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    args.paced_seconds = args.paced_seconds if args.paced_seconds is not None else (1.0 if args.quick else 2.0)
    args.calls = args.calls or ([1, 100] if args.quick else [1, 100, 10000])
    args.payloads = args.payloads or ([64] if args.quick else [64, 1400])
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            sys.exit("run.py: unknown mode %r" % m)
    for n in args.calls:
        if not 1 <= n <= 30000:
            sys.exit("run.py: --calls values must be 1..30000 (inside and public Call IDs are kept apart)")
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
    elapsed = time.monotonic() - started
    ok_runs = [r for r in runs if "error" not in r]
    rows = build_rows(ok_runs)
    print_report(ok_runs, rows)
    for r in runs:
        if "error" in r:
            print("FAILED run: %dc/%dB %s: %s" % (r["calls"], r["payload"], r["mode"], r["error"]))
    print("\nbenchmark time %.0f s (%d runs); JSON: %s" % (elapsed, len(runs), args.json_out))

    doc = {
        "meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "seconds": args.seconds, "paced_rate": args.paced_rate,
                 "paced_seconds": args.paced_seconds, "calls": args.calls, "payloads": args.payloads,
                 "quick": args.quick, "elapsed_s": elapsed, "bench": bench,
                 "agent_bin": os.environ.get("PPTP_FIXUP_BIN")},
        "rows": rows,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)

    if args.smoke:
        bad = []
        for c in args.calls:
            for p in args.payloads:
                for mode in modes:
                    r = next((x for x in ok_runs if (x["calls"], x["payload"], x["mode"]) == (c, p, mode)), None)
                    m = phase_of(r["pns"], "max") if r else None
                    if r is None or m is None or r["pns"]["setup"]["calls_up"] != c or not m["received"] \
                            or m.get("delivered_pps") is None or m["rtt_us"].get("p99") is None:
                        bad.append("%dc/%dB %s" % (c, p, mode))
        if bad:
            print("smoke: no numbers from " + ", ".join(bad))
            return 1
        print("smoke: both modes produced numbers for every configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
