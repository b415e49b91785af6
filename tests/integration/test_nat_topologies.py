#!/usr/bin/python3
"""Real pptp clients and pptpd through the NAT topologies of issue 12 ("Follow
the kernel's NAT"), each with the agent and with the kernel's PPTP helper
(nf_conntrack_pptp/nf_nat_pptp, mode "kernel-helper") as a baseline, in the
same test (run as root).  Topologies from lab.topology:

1. port forward: an inside pptpd behind DNAT of TCP/1723 on the public
   address, dialled by three real outside clients, while two real inside
   clients (and a synthetic one, client3) dial the outside "server" through
   the same router; the server also dials the inside pptpd, so the inside
   server's Call IDs and the inside clients' share one (public address,
   outside peer).  The collision is forced: client3 holds Call ID 128
   (public 128, the agent preserving Call IDs here) and the server is the
   inside pptpd's second caller, which pptpd gives Call ID 128;
2. SNAT to a pool of two public addresses on out0, four inside clients the
   kernel spreads over both (by its hash of the addresses: 3 and 1); each
   call's public address is the one its control connection reached the
   server from;
3. two uplinks, each with its own MASQUERADE, client2 routed out of the
   second by ``ip rule from 198.18.0.12 table 2``; at the server each
   uplink's interface carries only its own call's TCP and GRE;
4. static 1:1 NAT of client1 to 203.0.113.5, beside a masqueraded client2;
5. PPTP on the gateway itself: a pptp client in the router dialling the
   outside pptpd and a pptpd in the router dialled from outside ("ext1"),
   with the fixup rules and the agent in place, beside a masqueraded inside
   client; the agent passes the GRE to the gateway on (gre_to_gateway).

Every call must echo every frame (GRE both ways) and nothing of another
call; in a capture at every PPTP peer, each call's GRE goes both ways
between the two addresses of its own control connection as that peer saw
them, with the Call IDs its control messages gave, no two calls would
share a (source, destination, Call ID), and no GRE there belongs to no call
(``gre_problems``).  In agent mode also: its sessions' public addresses,
calls built, no call refused for an unknown mapping, no GRE dropped.

The agent's result is asserted; the kernel helper's is logged and recorded
for every topology and asserted only where it is known to work
(HELPER_WORKS).  The summary at the end lists both, per topology
(PPTP_FIXUP_TEST_RECORD=FILE also writes it as JSON).  The queue-only run
(PPTP_FIXUP_TEST_GRE_OFFLOAD=off) runs the agent only.

GatewayOwnCallIds: an inside client's call may not take the public Call ID
of the gateway's own PPTP call with the same server (the agent learns it
from the gateway's GRE).

    sudo /usr/bin/python3 tests/integration/test_nat_topologies.py [-v]
"""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab import topology as topo  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.pcap import control_messages, ipv4_packets  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402
from lab.synthetic_pns import HeldCall  # noqa: E402

SERVER = topo.SERVER
PUBLIC = topo.ROUTER_OUT
CAPTURE = ["ip", "proto", "47", "or", "tcp", "port", "1723"]
# The helper's baseline does not depend on the agent's GRE path: the
# queue-only run of this file (PPTP_FIXUP_TEST_GRE_OFFLOAD=off) runs the
# agent only.
MODES = ("agent",) if os.environ.get("PPTP_FIXUP_TEST_GRE_OFFLOAD") == "off" else ("kernel-helper", "agent")
COLLIDING = 128   # the inside pptpd's Call ID for its second control connection

# Topologies where the kernel helper is known to carry every call (asserted
# there); elsewhere its result would only be recorded.  Measured on Linux
# 6.18 (Debian 12 userland): the helper carries all five.  (It replaces
# every PNS's Call ID with its control connection's source port as the PAC
# sees it, inside clients' and outside ones' alike, and leaves PAC Call IDs
# alone, so the collision port_forward forces on the agent does not arise
# with it.)
HELPER_WORKS = {"port_forward", "snat_pool", "two_uplinks", "static_nat", "gateway_pptp"}

RECORDS = []      # one dict per (topology, mode)


def log(*a):
    print("    [nat-topo]", *a, flush=True)


# ------------------------------------------------------------------ checks

def gre_problems(path, host_addrs):
    """What is wrong with the GRE in a capture at a PPTP peer whose own
    addresses are ``host_addrs``: every call of a control connection seen
    there (OCRQ and its OCRP) must have GRE both ways between the
    connection's two addresses, keyed with the Call ID the receiving side
    gave; GRE of no call, or a (source, destination, key) two calls would
    share, is a problem.  Returns (problems, calls)."""
    msgs = control_messages(path)
    requests = [(src, dst, m["call_id"]) for src, dst, m in msgs if m["name"] == "OCRQ"]
    replies = [(src, dst, m) for src, dst, m in msgs if m["name"] == "OCRP"]
    calls, problems = [], []
    for pns, pac, pns_id in requests:
        rep = [m for src, dst, m in replies
               if (src, dst) == (pac, pns) and m["peer_call_id"] == pns_id]
        if len(rep) != 1:
            problems.append("OCRQ %s -> %s call-id %d: %d replies" % (pns, pac, pns_id, len(rep)))
            continue
        calls.append({"pns": pns, "pac": pac, "pns_id": pns_id,
                      "pac_id": rep[0]["call_id"], "result": rep[0]["result"]})
    expected = collections.Counter()
    for c in calls:
        expected[(c["pns"], c["pac"], c["pac_id"])] += 1   # PNS -> PAC: the PAC's ID
        expected[(c["pac"], c["pns"], c["pns_id"])] += 1   # PAC -> PNS: the PNS's ID
    for key, n in expected.items():
        if n > 1:
            problems.append("%d calls share GRE %s > %s call-id %d" % ((n,) + key))
    seen = collections.Counter()
    for p in ipv4_packets(path):
        if p["proto"] == 47 and p.get("gre") and p.get("gre_proto") == 0x880B:
            seen[(p["src"], p["dst"], p["gre"]["call_id"])] += 1
    for key in expected:
        if not seen[key] and (key[0] in host_addrs or key[1] in host_addrs):
            problems.append("no GRE %s > %s call-id %d" % key)
    for key, n in seen.items():
        if key not in expected:
            problems.append("%d GRE packets %s > %s call-id %d of no call" % ((n,) + key))
    return problems, calls


def parallel(fn, items):
    """fn(item) for every item at once (threads); waits for all."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Run:
    """One topology in one mode: its clients, captures and problems."""

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.problems = []
        self.details = {}
        self.captures = {}     # role -> (Popen, path)
        self.plain_captures = []
        self.clients = []

    def check(self, ok, what):
        if not ok:
            self.problems.append(what)
        return ok

    def capture(self, *roles, iface="eth0"):
        """Captures at PPTP peers, checked by check_captures (gre_problems)."""
        for role in roles:
            self.captures[role] = self.lab.capture(role, iface=iface, bpf=CAPTURE)

    def capture_iface(self, role, iface):
        """A capture of one interface only, for the caller to read (the path,
        once check_captures has stopped it)."""
        proc, path = self.lab.capture(role, iface=iface, bpf=CAPTURE)
        self.plain_captures.append(proc)
        return path

    def client(self, index, role, server, localbind=None, wave=0):
        """A real client; clients of a lower ``wave`` start (and get their
        server's first frame) before those of the next start."""
        c = RealClient(self.lab, index, server=server, role=role, localbind=localbind)
        c.wave = wave
        self.clients.append(c)
        return c

    def run_calls(self, frames=5, hold=None):
        """Starts the clients wave by wave (each wave's at once), waiting for
        their server's first frame before the next wave starts;
        exchanges ``frames`` frames twice (``hold()`` in between, with the
        calls up), stops them all."""
        try:
            for wave in sorted({c.wave for c in self.clients}):
                batch = [c for c in self.clients if c.wave == wave]
                for c in batch:
                    c.start()
                for c in batch:
                    self.check(c.wait_server_frame(10), "%s (%s -> %s): no frame from the server"
                               % (c.role, c.localbind, c.server))
            for rnd in (1, 2):
                got = {}
                parallel(lambda c: got.__setitem__(c, c.exchange(frames, timeout=4)), self.clients)
                for c in self.clients:
                    self.check(got.get(c) == frames, "%s (%s -> %s): %s of %d frames echoed, round %d"
                               % (c.role, c.localbind, c.server, got.get(c), frames, rnd))
                if rnd == 1 and hold is not None:
                    hold()
        finally:
            parallel(lambda c: c.stop(), self.clients)
        for c in self.clients:
            r = c.result
            self.check(r.foreign_frames == 0, "%s got %d frames of another call"
                       % (c.role, r.foreign_frames))
            self.check(r.bad_fcs == 0, "%s: %d frames with a bad FCS" % (c.role, r.bad_fcs))
            self.check(not r.exited_early, "%s: pptp exited early: %s" % (c.role, r.stderr[-300:]))
        self.details["clients"] = {c.role: "%d/%d" % (c.result.frames_echoed - c.result.foreign_frames,
                                                      c.result.frames_sent) for c in self.clients}

    def check_captures(self):
        """gre_problems at every captured peer; returns {role: calls}."""
        out = {}
        for proc in self.plain_captures:
            self.lab.stop_process(proc)
        for role, (proc, path) in self.captures.items():
            self.lab.stop_process(proc)
            addrs = [a.split("/")[0] for addrs in self.lab.hosts[role].addrs.values() for a in addrs]
            problems, calls = gre_problems(path, addrs)
            self.problems += ["at %s: %s" % (role, p) for p in problems]
            out[role] = calls
            log("%s: calls at %s: %s" % (self.name, role, [
                (c["pns"], c["pns_id"], c["pac"], c["pac_id"]) for c in calls]))
        return out


def modes_test(name, scenario, agent_kwargs=None, topology_kwargs=None):
    """A test method that runs ``scenario(run)`` in a fresh topology
    ``name`` for each mode: the agent's problems fail it, the helper's only
    where HELPER_WORKS says it works."""

    def test(self):
        failures = []
        for mode in MODES:
            hooks = agent_hooks(**(agent_kwargs or {})) if mode == "agent" else {}
            t0 = time.monotonic()
            r = None
            try:
                with getattr(topo, name)(mode=mode, **hooks, **(topology_kwargs or {})) as lab:
                    r = Run(lab, "%s/%s" % (name, mode))
                    try:
                        scenario(r)
                    finally:
                        if mode == "agent":
                            r.details["agent_log"] = lab.agent.output()[-3000:]
                problems = r.problems
            except Exception as e:  # recorded; fails the test below where it counts
                problems = (r.problems if r else []) + ["error: %s" % (e,)]
            RECORDS.append(record(name, mode, t0, problems, r))
            verdict = "pass" if not problems else "FAIL"
            log("%s, %s: %s in %.1fs%s" % (name, mode, verdict, time.monotonic() - t0,
                                           "".join("\n        - " + p for p in problems)))
            if problems and (mode == "agent" or name in HELPER_WORKS):
                failures.append("%s: %s" % (mode, "; ".join(problems)))
            if problems and mode == "agent" and r and r.details.get("agent_log"):
                log("agent log (tail):\n" + r.details["agent_log"])
        self.assertEqual(failures, [])

    test.__name__ = "test_" + name
    return test


def record(name, mode, t0, problems, r):
    return {"topology": name, "mode": mode, "ok": not problems, "seconds": round(time.monotonic() - t0, 1),
            "problems": problems, "clients": (r.details.get("clients") if r else None)}


def check_agent_counters(run, calls, to_gateway=False):
    """The agent built ``calls`` calls, refused none for an unknown NAT
    mapping and dropped no GRE for want of a call; with ``to_gateway`` it
    passed GRE addressed to the gateway itself (its own PPTP) on."""
    stats = run.lab.agent.stats()
    counters, dropped = stats["counters"], stats["dropped"]
    run.details["agent_counters"] = {k: counters.get(k) for k in (
        "calls_built", "gre_inbound", "gre_outbound", "gre_to_gateway")}
    run.details["agent_dropped"] = {k: v for k, v in dropped.items() if v}
    log("%s: agent counters %s, drops %s" % (run.name, run.details["agent_counters"],
                                             run.details["agent_dropped"]))
    run.check(counters["calls_built"] == calls, "agent built %s calls, want %d" % (counters["calls_built"], calls))
    for k in ("control_nat_unknown", "gre_no_matching_call"):
        run.check(dropped.get(k, 0) == 0, "agent dropped %s: %s" % (k, dropped.get(k)))
    if to_gateway:
        run.check(counters.get("gre_to_gateway", 0) > 0, "no GRE to the gateway itself passed: %s" % counters)


def sessions_by_inside(run):
    if run.lab.mode != "agent":
        return {}
    sessions = run.lab.agent.sessions()
    run.details["sessions"] = sessions
    log("%s: sessions %s" % (run.name, [(s["inside_address"], s["inside_call_id"], s["public_address"],
                                         s["public_call_id"], s["outside_address"], s["outside_call_id"])
                                        for s in sessions]))
    return sessions


# --------------------------------------------------------------- scenarios

def port_forward(run):
    """Also forces the collision: an inside PNS (client3, synthetic) holds a
    call to the server with Call ID 128 (public 128: the agent runs with
    --call-id-allocation preserve here) before the server dials the inside
    pptpd as its second caller, and pptpd gives the N-th control connection
    Call ID 128 * (N - 1): towards the server (the same outside peer) the
    inside server's 128 needs another public Call ID."""
    lab = run.lab
    info = lab.info
    lab.start_pptpd_at("server")
    lab.start_pptpd_at("insrv")
    run.capture("server", "insrv", "ext1")
    held = HeldCall(lab, 3, call_id=COLLIDING, frames=3, role="client3", server=SERVER)
    try:
        first = held.ready()
        run.check(first.get("frames_echoed") == 3, "client3 (synthetic, Call ID %d): %s" % (COLLIDING, first))
        n = 0
        for role in info["inside_clients"]:
            if role != "client3":
                n += 1
                run.client(n, role, SERVER)
        for role in ["server"] + info["outside_clients"]:
            n += 1
            # ext1 first, the server second: its call is the inside
            # server's second (Call ID 128), the others after.
            run.client(n, role, PUBLIC, wave={"ext1": 0, "server": 1}.get(role, 2))
        seen = {}

        def hold():
            for s in sessions_by_inside(run):
                seen[(s["inside_address"], s["inside_call_id"], s["outside_address"])] = s
            again = held.send(3)
            run.check(again.get("echoed_new") == 3, "client3, second round: %s" % again)
        run.run_calls(hold=hold)
    finally:
        last = held.finish()
    run.check(last.get("frames_echoed") == 6 and last.get("gre_rx_foreign", 0) == 0,
              "client3 (synthetic): %s" % {k: last.get(k) for k in (
                  "frames_echoed", "gre_rx_foreign", "error", "returncode")})
    calls = run.check_captures()
    # The precondition of the collision: the inside server gave the
    # server's call Call ID 128 (client3's call left with Call ID 128 in the
    # agent's mode; the helper puts its TCP port there instead).
    insrv_ids = {c["pns"]: c["pac_id"] for c in calls["insrv"]}
    run.details["inside_server_call_ids"] = insrv_ids
    run.check(insrv_ids.get(SERVER) == COLLIDING,
              "the inside server's Call ID for the server's call: %s" % insrv_ids)
    # At the outside peer that is both: the Call IDs it must send its GRE
    # to the public address with, one per call, all distinct.
    to_public = [c["pns_id"] for c in calls["server"] if c["pns"] == PUBLIC] + \
        [c["pac_id"] for c in calls["server"] if c["pac"] == PUBLIC]
    run.details["keys_server_to_public"] = to_public
    log("%s: Call IDs the server's GRE to %s carries: %s" % (run.name, PUBLIC, to_public))
    run.check(len(to_public) == len(info["inside_clients"]) + 1,
              "calls between the server and %s: %s" % (PUBLIC, calls["server"]))
    run.check(len(set(to_public)) == len(to_public), "public Call IDs collide: %s" % to_public)
    # The inside server saw every outside client with its own address.
    run.check(sorted(c["pns"] for c in calls["insrv"]) ==
              sorted(lab.addr_of(r) for r in ["server"] + info["outside_clients"]),
              "callers at the inside server: %s" % calls["insrv"])
    if lab.mode == "agent":
        inside = sorted(a for a, _, _ in seen)
        want = sorted([lab.addr_of(r) for r in info["inside_clients"]] +
                      [info["inside_server"]] * (1 + len(info["outside_clients"])))
        run.check(inside == want, "agent's calls: %s" % sorted(seen))
        for s in seen.values():
            run.check(s["public_address"] == PUBLIC, "public address of %s" % s)
        mine = seen.get((lab.addr_of("client3"), COLLIDING, SERVER))
        run.check(mine is not None and mine["public_call_id"] == COLLIDING,
                  "client3's call (preserve: public Call ID %d): %s" % (COLLIDING, mine))
        theirs = seen.get((info["inside_server"], COLLIDING, SERVER))
        run.check(theirs is not None and theirs["public_call_id"] != COLLIDING,
                  "the inside server's call with the server: %s" % theirs)
        check_agent_counters(run, len(want))


def snat_pool(run):
    lab = run.lab
    pool = lab.info["pool"]
    lab.start_pptpd_at("server")
    run.capture("server", *lab.info["inside_clients"])
    for i, role in enumerate(lab.info["inside_clients"], 1):
        run.client(i, role, SERVER)
    run.run_calls(hold=lambda: sessions_by_inside(run))
    calls = run.check_captures()
    at_server = calls["server"]
    used = collections.Counter(c["pns"] for c in at_server)
    run.details["public_sources"] = dict(used)
    log("%s: control connections at the server per source: %s" % (run.name, dict(used)))
    run.check(sum(used.values()) == len(lab.info["inside_clients"]), "calls at the server: %s" % at_server)
    run.check(set(used) == set(pool), "the SNAT pool was not spread over %s: %s" % (pool, dict(used)))
    # Each client saw its own call with its own address (the return GRE came
    # to it, with its Call ID: gre_problems at each client).
    for role in lab.info["inside_clients"]:
        mine = calls[role]
        run.check(len(mine) == 1 and mine[0]["pns"] == lab.addr_of(role), "calls at %s: %s" % (role, mine))
    if lab.mode == "agent":
        sessions = run.details.get("sessions", [])
        # The public address of each call is the one the server saw its
        # control connection come from (matched by the server's Call ID).
        by_outside_id = {c["pac_id"]: c["pns"] for c in at_server}
        for s in sessions:
            run.check(by_outside_id.get(s["outside_call_id"]) == s["public_address"],
                      "session %s: public %s, the server saw %s" % (
                          s["inside_address"], s["public_address"], by_outside_id.get(s["outside_call_id"])))
        run.check(len(sessions) == len(lab.info["inside_clients"]), "sessions: %s" % sessions)
        check_agent_counters(run, len(lab.info["inside_clients"]))


def two_uplinks(run):
    lab = run.lab
    lab.start_pptpd_at("server")
    run.capture("server", iface="any")     # eth0 (uplink 1) and eth1 (uplink 2)
    per_link = {i: run.capture_iface("server", i) for i in ("eth0", "eth1")}
    run.client(1, "client1", SERVER)
    run.client(2, "client2", SERVER)
    run.run_calls(hold=lambda: sessions_by_inside(run))
    calls = run.check_captures()["server"]
    want = lab.info["public"]
    srcs = sorted(c["pns"] for c in calls)
    run.details["public_sources"] = srcs
    run.check(srcs == sorted(want.values()), "control connections at the server from %s, want %s"
              % (srcs, sorted(want.values())))
    # Each call's TCP and GRE crossed its own uplink, both ways.
    for iface, public in (("eth0", want["client1"]), ("eth1", want["client2"])):
        peers = collections.Counter((p["proto"], p["src"] if p["dst"] == SERVER else p["dst"])
                                    for p in ipv4_packets(per_link[iface]))
        run.details["uplink_" + iface] = dict(("%d %s" % k, n) for k, n in peers.items())
        run.check(set(peers) == {(6, public), (47, public)},
                  "server %s (the uplink of %s): %s" % (iface, public, dict(peers)))
    if lab.mode == "agent":
        for s in run.details.get("sessions", []):
            role = {lab.addr_of(r): r for r in want}[s["inside_address"]]
            run.check(s["public_address"] == want[role], "session %s: public %s, want %s"
                      % (role, s["public_address"], want[role]))
        run.check(len(run.details.get("sessions", [])) == 2, "sessions: %s" % run.details.get("sessions"))
        check_agent_counters(run, 2)


def static_nat(run):
    lab = run.lab
    lab.start_pptpd_at("server")
    run.capture("server")
    run.client(1, "client1", SERVER)
    run.client(2, "client2", SERVER)
    run.run_calls(hold=lambda: sessions_by_inside(run))
    calls = run.check_captures()["server"]
    want = lab.info["public"]
    srcs = sorted(c["pns"] for c in calls)
    run.details["public_sources"] = srcs
    run.check(srcs == sorted(want.values()), "control connections at the server from %s, want %s"
              % (srcs, sorted(want.values())))
    if lab.mode == "agent":
        for s in run.details.get("sessions", []):
            role = {lab.addr_of(r): r for r in want}[s["inside_address"]]
            run.check(s["public_address"] == want[role], "session %s: public %s, want %s"
                      % (role, s["public_address"], want[role]))
        run.check(len(run.details.get("sessions", [])) == 2, "sessions: %s" % run.details.get("sessions"))
        check_agent_counters(run, 2)


def gateway_pptp(run):
    lab = run.lab
    lab.start_pptpd_at("server")
    lab.start_pptpd_at("router", listen=PUBLIC)
    run.capture("server", "ext1")
    run.client(1, "client1", SERVER)
    run.client(2, "router", SERVER, localbind=PUBLIC)
    run.client(3, "ext1", PUBLIC)
    run.run_calls(hold=lambda: sessions_by_inside(run))
    calls = run.check_captures()
    run.check(len(calls["server"]) == 2, "calls at the server: %s" % calls["server"])
    run.check([c["pac"] for c in calls["ext1"]] == [PUBLIC], "calls at ext1: %s" % calls["ext1"])
    if lab.mode == "agent":
        sessions = run.details.get("sessions", [])
        run.check([s["inside_address"] for s in sessions] == [lab.addr_of("client1")],
                  "the agent's calls (the router's own are the kernel's): %s" % sessions)
        check_agent_counters(run, 1, to_gateway=True)


class TopologySelfTest(unittest.TestCase):

    def test_sigterm_removes_every_namespace(self):
        """A Topology cleans up as a netns.Lab does: SIGTERM to the process
        holding one (with a switch namespace and a pptpd) removes all its
        namespaces; nothing of it appears in the root namespace."""
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        code = ("import sys, time; sys.path.insert(0, %r)\n"
                "from lab import topology\n"
                "with topology.gateway_pptp() as lab:\n"
                "    lab.start_pptpd_at('server')\n"
                "    print(' '.join(lab.namespaces.values()), flush=True)\n"
                "    time.sleep(60)\n" % TESTS)
        p = subprocess.Popen([netns.PYTHON, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            names = netns.read_line(p.stdout, 30).decode().split()
            self.assertEqual(len(names), 5, names)   # router, client1, server, ext1, sw
            self.assertTrue(set(names) <= set(netns.list_netns()))
            self.assertEqual(subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                            text=True).stdout, links)
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        finally:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
            p.stdout.close()
            p.stderr.close()
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(set(names) & set(netns.list_netns()), set())


class NatTopologies(unittest.TestCase):
    test_1_port_forward = modes_test("port_forward", port_forward,
                                     agent_kwargs={"call_id_allocation": "preserve"},
                                     topology_kwargs={"inside_clients": 3})
    test_2_snat_pool = modes_test("snat_pool", snat_pool)
    test_3_two_uplinks = modes_test("two_uplinks", two_uplinks)
    test_4_static_nat = modes_test("static_nat", static_nat)
    test_5_gateway_pptp = modes_test("gateway_pptp", gateway_pptp)


class GatewayOwnCallIds(unittest.TestCase):

    def test_inside_call_does_not_take_the_gateways_own_call_id(self):
        """The gateway's own pptp client holds a call to the server with
        Call ID N (its control connection is the kernel's, never queued); an
        inside client then asks for Call ID N towards the same server. The
        agent learnt N from the gateway's GRE it passed on (gre_to_gateway)
        and keeps it out of its allocator, so under preserve the inside call
        gets another public Call ID and the gateway's call keeps its GRE.
        (A gateway call whose GRE has not come yet is not known: that order
        stays a limitation, see the README.) The kernel helper is not run:
        the case is the agent's."""
        with topo.gateway_pptp(mode="agent", **agent_hooks(call_id_allocation="preserve")) as lab:
            lab.start_pptpd_at("server")
            _, path = lab.capture("server", bpf=CAPTURE)
            own = RealClient(lab, 2, server=SERVER, role="router", localbind=PUBLIC)
            held = None
            try:
                own.start()
                self.assertTrue(own.wait_server_frame(10))
                self.assertEqual(own.exchange(3), 3)

                def requested():
                    return [m["call_id"] for _s, _d, m in control_messages(path) if m["name"] == "OCRQ"]
                self.assertTrue(wait_until(requested, 5), "the gateway's OCRQ not captured")
                ids = requested()
                held = HeldCall(lab, 1, call_id=ids[0], frames=3, role="client1", server=SERVER)
                first = held.ready()
                sessions = lab.agent.sessions()
                after = own.exchange(3)
                again = held.send(3)
                log("gateway's own call: Call ID %d; inside call: %s, public %s; gateway's call "
                    "after: %d of 3 echoed; inside client got %s frames not its own" % (
                        ids[0], first.get("frames_echoed"), [s["public_call_id"] for s in sessions],
                        after, again.get("gre_rx_foreign")))
                self.assertEqual(after, 3, "the gateway's own call lost its GRE")
                self.assertEqual(again.get("gre_rx_foreign"), 0, "the inside client got the gateway's frames")
            finally:
                if held is not None:
                    held.finish()
                own.stop()


def tearDownModule():
    if not RECORDS:
        return
    log("summary (topology, mode, result, seconds):")
    for r in RECORDS:
        log("  %-13s %-14s %-5s %5.1fs %s" % (r["topology"], r["mode"], "pass" if r["ok"] else "FAIL",
                                              r["seconds"], "; ".join(r["problems"])[:300]))
    path = os.environ.get("PPTP_FIXUP_TEST_RECORD")
    if path:
        with open(path, "w") as f:
            json.dump(RECORDS, f, indent=1)


if __name__ == "__main__":
    run_tests()
