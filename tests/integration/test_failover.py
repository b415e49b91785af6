#!/usr/bin/python3
"""Failover of an active/standby pair of PPTP NAT gateways (issue 13, part 3;
run as root).

lab.ha.HaPair: keepalived moves the inside gateway address and the public
address (one sync group, gw-a preferred), conntrackd (FTFW, UDP over a sync
link) syncs conntrack, pptp-fixupd --ha-sync connlabel on both gateways, all
configs rendered from the shipped examples in packaging/ha/.

Takeover: several real clients (pptp) call the real pptpd through gw-a and
their GRE echoes; beside them two plain TCP connections through gw-a, one
without a label and one with a label that is not the agent's, and one with a
damaged label of the agent's format. gw-a then fails as a dead gateway does
(all its links down at once) and its agent stops (SIGTERM, exit 0). Then:

- every call's GRE echoes again through gw-b within TAKEOVER_BOUND seconds
  (the time is measured and printed: "takeover: X.XX s until all N calls
  echo", with the VRRP, commit and adoption moments from the notify log);
- gw-b's agent adopted exactly the calls (stats "ha": calls_adopted N), with
  the same inside address, inside, public and outside Call IDs as gw-a had,
  at the public VIP; the unlabelled connection is not a labelled entry, and
  the two foreign/damaged labels (on connections to another port) are not
  even read: the kernel filters the agent's dump to the fixup port
  (invalid_labels 0; labels on control connections that are not the agent's
  are tested in test_ha_labels.py);
- captures at every client and at the server, before the failure and after
  it: the same Call IDs in the GRE keys each way, the GRE at the server
  from/to the public VIP only;
- afterwards each client still echoes every frame.

Failback (the same test, going on): gw-a comes back as a rebooted box does
(HaPair.reboot: its agent, conntrackd and keepalived gone, the agent's
rules and GRE offload table removed, its kernel conntrack flushed; then
links up, the rules, a fresh agent, conntrackd, keepalived). With
nopreempt it stays BACKUP and gw-b keeps the VIPs; gw-a's conntrackd gets
gw-b's connections into its external cache (the notify's resync request)
while the calls echo on through gw-b. Through gw-b a new call is made
(client5, its label written by gw-b's agent) and client4's call is cleared
(its label rewritten by gw-b, no call left). Then gw-b fails the same way
and its agent stops (exit 0):

- every remaining call (three adopted twice, the new one) echoes again
  through gw-a within TAKEOVER_BOUND ("failback: X.XX s until all N calls
  echo"); gw-a's fresh agent adopted exactly those (calls_adopted 4, none
  already known, no conflict, the two foreign labels counted again) with
  the same Call IDs, captures at the clients and the server show the same
  Call IDs through gw-b and after the failback;
- the cleared call is not back: not in gw-a's sessions, no GRE at client4,
  and GRE from the server to its public Call ID is dropped by gw-a's agent
  (gre_no_matching_call), not translated;
- stopping the clients clears their calls through gw-a, whose agent exits 0.

OldAgentFailback: the same round trip, but gw-a comes back WITHOUT a
reboot (links down and up, its agent, conntrackd and keepalived running on).
The live calls go on (the old agent's adoption counts its own calls as
already known, takes the new ones, no conflict), and a control connection
opened through gw-b goes on through gw-a. The labels are the truth about
connections the old agent knew: the call cleared through gw-b is torn down
on gw-a at the adoption (not-in-ha-label; its GRE to that public Call ID is
dropped, it never reaches the cleared client), and a control connection
whose bytes went through gw-b meanwhile goes on through gw-a (its streams
are picked up again where they are: an Echo-Request is answered). The control
bytes come from a small PNS of the test's own (Echoer: SCCRQ, OCRQ, then
Echo-Requests on demand).

ConntrackdLabels, without the agent (what the design rests on, measured
with conntrackd 1.4.7): a label set on gw-a's entry (all 128 bits) reaches
gw-b's external cache and "conntrackd -c" writes it into gw-b's kernel entry,
but only if entries have label space there (no connlabel rule on gw-b: the
commit succeeds and the label is silently dropped; hence --conntrack-labels
on both gateways); a later change is carried to an entry already committed;
a change to all zeros is not (the old label stays); after the takeover the
TCP connection goes on through gw-b with its SNAT to the public VIP and the
"be liberal" flag conntrackd's commit sets (TCPWindowTracking Off), with
net.netfilter.nf_conntrack_tcp_be_liberal left at 0.

    sudo /usr/bin/python3 tests/integration/test_failover.py [-v]
"""

import json
import os
import subprocess
import sys
import threading
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import ha  # noqa: E402
from lab.ha_label import one_call_label  # noqa: E402
from lab.pcap import ipv4_packets  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

CLIENTS = 4
TAKEOVER_BOUND = 15.0
PROBE_TIMEOUT = 0.2          # one probe frame: sent, echo awaited this long
GIVE_UP = 40.0
PLAIN_PORT = 5000            # plain TCP beside the calls (not a fixup port)

# Holds one TCP connection open (prints its local port, then sleeps).
HOLDER = ("import socket,sys,time\n"
          "s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
          "print(s.getsockname()[1],flush=True)\n"
          "time.sleep(3600)\n")
# One TCP connection driven from stdin: each line sent, its echo awaited
# (up to 0.5 s), "ok" or "timeout" printed.
PINGER = ("import socket,sys\n"
          "s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
          "print(s.getsockname()[1],flush=True)\n"
          "s.settimeout(0.5)\n"
          "for line in sys.stdin:\n"
          "    s.sendall(line.encode())\n"
          "    try:\n"
          "        print('ok' if s.recv(4096) else 'eof',flush=True)\n"
          "    except socket.timeout:\n"
          "        print('timeout',flush=True)\n")
LISTENER = ("import socket,sys,time\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(16)\n"
            "def echo(c):\n"
            "    while True:\n"
            "        d=c.recv(4096)\n"
            "        if not d: return\n"
            "        c.sendall(d)\n"
            "import threading\n"
            "while True:\n"
            "    threading.Thread(target=echo,args=(s.accept()[0],),daemon=True).start()\n")


def log(*a):
    print("    [failover]", *a, flush=True)


def triple(s):
    return (s["inside_address"], s["inside_call_id"], s["public_call_id"], s["outside_call_id"])


def gre_keys(path):
    """{(src, dst): set of GRE Call IDs (keys)} of enhanced GRE in a capture."""
    out = {}
    for d in ipv4_packets(path):
        g = d.get("gre")
        if d["proto"] == 47 and g and g["proto"] == 0x880B:
            out.setdefault((d["src"], d["dst"]), set()).add(g["call_id"])
    return out


def captures(lab, roles, phase):
    """GRE captures at each client (its own only: while the switch floods
    frames for the failed gateway's MAC, a client sees the others' too) and
    at the server."""
    return {r: lab.capture(r, path=os.path.join(lab.tmpdir, "%s-%d.pcap" % (r, phase)),
                           bpf=["ip", "proto", "47"] + ([] if r == "server" else ["and", "host", lab.addr_of(r)]))
            for r in roles + ["server"]}


def damaged_label():
    """The agent's format (magic 0xB7, version 1, one outgoing call) whose
    checksum does not match."""
    b = bytearray(one_call_label(1, 2, 3))
    b[3] ^= 0x5A
    return bytes(b)


FOREIGN_LABEL = bytes([0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40])   # someone else's bits 0, 126


def start_plain_server(lab):
    lab.spawn("server", [ha.PYTHON, "-c", LISTENER, ha.SERVER, str(PLAIN_PORT)],
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_until(lambda: lab.listening_on("server", ha.SERVER, PLAIN_PORT), 5):
        raise AssertionError("no listener on %s:%d" % (ha.SERVER, PLAIN_PORT))


class ConntrackdLabels(unittest.TestCase):
    """What the design rests on, without the agent (the Step 1 measurement,
    kept): conntrackd 1.4.7 carries a TCP entry's conntrack label (all 128
    bits) and its later changes to the standby, whose commit writes them
    into the kernel, but only where entries have label space; a change to
    all zeros is not carried; after the takeover the connection goes on,
    with its SNAT and the "be liberal" flag of a committed entry."""

    def test_labels_sync_and_commit(self):
        with ha.HaPair(clients=1, agents=False, label_space=("gw-a",)) as lab:
            start_plain_server(lab)
            p = lab.spawn("client1", [ha.PYTHON, "-c", PINGER, ha.SERVER, str(PLAIN_PORT)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            port = int(p.stdout.readline())

            def ping():
                p.stdin.write(b"x\n")
                p.stdin.flush()
                return p.stdout.readline().strip().decode()
            self.assertEqual(ping(), "ok")
            orig = {"src": lab.addr_of("client1"), "dst": ha.SERVER, "proto": 6, "sport": port,
                    "dport": PLAIN_PORT}

            def entry(role):
                found = [e for e in lab.ct_entries(role) if e.get("orig") == orig]
                return found[0] if found else None

            def commit_and_read():
                time.sleep(0.5)         # the update reaches gw-b's external cache
                lab.ctd("gw-b", "-c")
                return entry("gw-b")

            all_bits = bytes(range(0xF0, 0x100))       # bit 127 included
            lab.ct_set_label("gw-a", orig, all_bits)
            self.assertEqual(entry("gw-a")["labels"], all_bits.hex())
            self.assertTrue(wait_until(lambda: "sport=%d dport=%d" % (port, PLAIN_PORT) in lab.ctd("gw-b", "-e"), 5))
            e = commit_and_read()
            self.assertIsNotNone(e)
            self.assertIsNone(e["labels"], "gw-b has no connlabel rule: the commit drops the label")
            log("no label space on the standby: committed without the label")

            lab.exec("gw-b", ["conntrack", "-D", "-p", "tcp", "--orig-port-src", str(port)])
            lab.give_label_space("gw-b")
            e = commit_and_read()
            self.assertEqual(e["labels"], all_bits.hex())
            self.assertEqual(e["reply"]["dst"], ha.PUBLIC_VIP)     # the SNAT
            log("label carried and committed:", e["labels"])

            changed = bytes([0xB7]) + bytes(14) + b"\x01"
            lab.ct_set_label("gw-a", orig, changed)
            self.assertEqual(commit_and_read()["labels"], changed.hex(), "a change reaches the kernel entry")
            lab.ct_set_label("gw-a", orig, bytes(16))
            self.assertEqual(commit_and_read()["labels"], changed.hex(),
                             "conntrackd 1.4.7 was measured not to carry a change to all zeros")
            log("a change is carried, a change to all zeros is not")
            lab.ct_set_label("gw-a", orig, changed)

            t0 = time.monotonic()
            lab.fail("gw-a")
            lab.wait_master("gw-b", timeout=15)
            self.assertTrue(wait_until(lambda: ping() == "ok", 20, step=0), "the connection after the takeover")
            log("TCP through gw-b again after %.2f s (TCP's retransmission backoff)" % (time.monotonic() - t0))
            e = entry("gw-b")
            self.assertEqual(e["labels"], changed.hex())
            self.assertEqual(e["reply"]["dst"], ha.PUBLIC_VIP)
            self.assertTrue(e["tcp_flags_orig"] & 0x08 and e["tcp_flags_reply"] & 0x08, e)   # BE_LIBERAL
            self.assertEqual(lab.exec("gw-b", ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"]
                                      ).stdout.strip(), "0")
            p.stdin.close()


def probe_until_echo(clients, m0, stop):
    """Each client sends one frame at a time until one echoes; {index:
    seconds after m0}, for those that echoed within GIVE_UP."""
    recovered = {}

    def probe(c):
        while time.monotonic() - m0 < GIVE_UP and not stop.is_set():
            if c.exchange(1, timeout=PROBE_TIMEOUT, interval=0) == 1:
                recovered[c.index] = time.monotonic() - m0
                return
    threads = [threading.Thread(target=probe, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return recovered


def log_switch(lab, what, role, t0, recovered, n):
    """Logs the switch to ``role``: its notify lines, the VRRP and adoption
    moments after t0 (time.time()), per client and overall; returns the
    overall time or None."""
    done = max(recovered.values()) if len(recovered) == n else None
    master_at = [t for t in lab.notify_times(role, "master: committing") if t >= t0]
    adopted_at = [t for t in lab.notify_times(role, "master: ha adopt") if t >= t0]
    log("%s notify:" % role, lab.notify_log(role).strip().replace("\n", " | "))
    log("per client (s):", {i: round(t, 2) for i, t in sorted(recovered.items())})
    if master_at:
        log("VRRP: %s master (notify) after %.2f s" % (role, master_at[-1] - t0))
    if adopted_at:
        log("commit + adopt done after %.2f s" % (adopted_at[-1] - t0))
    if done is not None:
        log("%s: %.2f s until all %d calls echo" % (what, done, n))
    else:
        log("%s: FAILED, %d of %d calls echo after %.0f s" % (what, len(recovered), n, GIVE_UP))
    return done


def control_label(lab, role, inside_addr):
    """The label (hex or None) of the control connection from inside_addr
    in role's kernel, or "gone"."""
    found = [e for e in lab.control_entries(role) if e["orig"].get("src") == inside_addr]
    return found[0]["labels"] if found else "gone"


def label_calls(label_hex):
    """Number of calls in an agent label (byte 2, low nibble)."""
    return bytes.fromhex(label_hex)[2] & 0x0F


SEND_GRE = ("import socket,sys\n"
            "sys.path.insert(0,sys.argv[1])\n"
            "from lab.pptp_proto import gre_build\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_GRE)\n"
            "for i in range(int(sys.argv[4])):\n"
            "    s.sendto(gre_build(int(sys.argv[3]),b'\\xff\\x03\\x00\\x21stale-%d'%i,seq=1000+i),(sys.argv[2],0))\n")


def stray_gre_reaches(lab, agent, role, public_call_id, n=5):
    """The server sends n GRE packets to the public VIP keyed with
    ``public_call_id``; returns (packets captured at ``role``, increase of
    the agent's gre_no_matching_call drops)."""
    cap, path = lab.capture(role, path=os.path.join(lab.tmpdir, "%s-stray.pcap" % role),
                            bpf=["ip", "proto", "47", "and", "host", lab.addr_of(role)])
    before = agent.stats().get("dropped", {}).get("gre_no_matching_call", 0)
    lab.exec("server", [ha.PYTHON, "-c", SEND_GRE, TESTS, ha.PUBLIC_VIP, str(public_call_id), str(n)])
    time.sleep(0.5)
    lab.stop_process(cap)
    after = agent.stats().get("dropped", {}).get("gre_no_matching_call", 0)
    return len([d for d in ipv4_packets(path) if d["proto"] == 47]), after - before


# A PNS of its own with one call (no GRE): after SCCRQ/OCRQ it prints its
# port and the call's result, then for each line on stdin (a timeout in
# seconds) sends an Echo-Request and prints whether the Echo-Reply came
# back: control bytes on a connection that lived through the switches.
ECHOER = r"""
import json,select,socket,sys,time
sys.path.insert(0,sys.argv[1])
from lab import pptp_proto as P
s=socket.create_connection((sys.argv[2],1723))
st=P.CtrlStream()
def recv(want,timeout):
    end=time.monotonic()+timeout
    while True:
        left=end-time.monotonic()
        r=select.select([s],[],[],max(left,0))[0] if left>0 else []
        if not r:
            return None
        data=s.recv(65536)
        if not data:
            return "eof"
        for m in st.feed(data):
            if m["type"]==P.ECHORQ:
                s.sendall(P.echorp(m["ident"]))
            elif want(m):
                return m
s.sendall(P.sccrq())
if not isinstance(recv(lambda m:m["type"]==P.SCCRP,5),dict):
    sys.exit("no SCCRP")
s.sendall(P.ocrq(int(sys.argv[3]),serial=1))
rp=recv(lambda m:m["type"]==P.OCRP,5)
print(json.dumps({"port":s.getsockname()[1],"result":rp["result"] if isinstance(rp,dict) else None}),flush=True)
ident=0
for line in sys.stdin:
    ident+=1
    t=time.monotonic()
    s.sendall(P.echorq(ident))
    m=recv(lambda m:m["type"]==P.ECHORP and m["ident"]==ident,float(line))
    print(json.dumps({"ok":isinstance(m,dict),"eof":m=="eof","s":round(time.monotonic()-t,3)}),flush=True)
"""


class Echoer:
    """ECHOER in a client namespace."""

    def __init__(self, lab, role, call_id):
        self.proc = lab.spawn(role, [ha.PYTHON, "-c", ECHOER, TESTS, ha.SERVER, str(call_id)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = json.loads(self.proc.stdout.readline() or "null")
        if not first or first["result"] != 1:
            raise AssertionError("echoer in %s: %s %s" % (role, first, self.proc.stderr.read1(4000)))
        self.port = first["port"]

    def echo(self, timeout=3.0):
        """{"ok": the Echo-Reply came, "s": seconds it took}."""
        self.proc.stdin.write(b"%f\n" % timeout)
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


class Failover(unittest.TestCase):

    def check_wire(self, lab, caps, calls, roles, phase, silent=()):
        """In the captures ``caps``: the server saw GRE of exactly
        ``calls`` (sessions), from/to the public VIP only; each client of
        ``roles`` its own call's Call IDs; the ``silent`` roles no GRE."""
        srv = gre_keys(caps["server"][1])
        self.assertEqual(set(srv), {(ha.PUBLIC_VIP, ha.SERVER), (ha.SERVER, ha.PUBLIC_VIP)},
                         "%s: GRE at the server %s" % (phase, srv))
        self.assertEqual(srv[(ha.PUBLIC_VIP, ha.SERVER)], {s["outside_call_id"] for s in calls}, phase)
        self.assertEqual(srv[(ha.SERVER, ha.PUBLIC_VIP)], {s["public_call_id"] for s in calls}, phase)
        by_inside = {s["inside_address"]: s for s in calls}
        for r in roles:
            addr = lab.addr_of(r)
            s = by_inside[addr]
            self.assertEqual(gre_keys(caps[r][1]), {(addr, ha.SERVER): {s["outside_call_id"]},
                                                    (ha.SERVER, addr): {s["inside_call_id"]}},
                             "%s: %s" % (phase, r))
        for r in silent:
            self.assertEqual(gre_keys(caps[r][1]), {}, "%s: %s has no call" % (phase, r))

    def test_takeover_and_failback(self):
        with ha.HaPair(clients=CLIENTS + 1) as lab:
            self.assertEqual(lab.master(), "gw-a")
            a, b = lab.agents["gw-a"], lab.agents["gw-b"]
            lab.start_pptpd_at("server")
            start_plain_server(lab)

            roles = ["client%d" % i for i in range(1, CLIENTS + 1)]
            new_role = "client%d" % (CLIENTS + 1)
            caps1 = captures(lab, roles, 1)
            clients = [RealClient(lab, i, server=ha.SERVER) for i in range(1, CLIENTS + 1)]
            newcomer = RealClient(lab, CLIENTS + 1, server=ha.SERVER)
            cleared = clients[-1]
            started = list(clients)
            stop_probes = threading.Event()
            try:
                for c in clients:
                    c.start()
                for c in clients:
                    self.assertTrue(c.wait_server_frame(10), c.stderr_tail())
                    self.assertEqual(c.exchange(5), 5, "client%d before the failover" % c.index)

                # Plain TCP through gw-a: one left unlabelled, one with
                # someone else's label bits, one with a damaged label.
                holders = []
                for role in roles[:3]:
                    p = lab.spawn(role, [ha.PYTHON, "-c", HOLDER, ha.SERVER, str(PLAIN_PORT)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                    holders.append((role, int(p.stdout.readline())))
                plain = {}
                for e in lab.ct_entries("gw-a"):
                    o = e.get("orig", {})
                    for role, port in holders:
                        if o.get("dport") == PLAIN_PORT and o.get("sport") == port and \
                                o.get("src") == lab.addr_of(role):
                            plain[role] = o
                self.assertEqual(len(plain), 3, lab.ct_entries("gw-a"))
                lab.ct_set_label("gw-a", plain[roles[1]], FOREIGN_LABEL)
                lab.ct_set_label("gw-a", plain[roles[2]], damaged_label())

                # gw-a: the calls, each control connection labelled; gw-b:
                # nothing yet, the connections in conntrackd's external cache.
                box = {}

                def settled():
                    box["a"] = a.sessions()
                    box["labels"] = [e["labels"] for e in lab.control_entries("gw-a")]
                    box["ext"] = lab.ctd("gw-b", "-e")
                    return len(box["a"]) == CLIENTS and \
                        all(s["state"] == "established" for s in box["a"]) and \
                        len(box["labels"]) == CLIENTS and \
                        all(lbl and lbl.startswith("b7") for lbl in box["labels"]) and \
                        box["ext"].count("dport=1723") == CLIENTS and \
                        box["ext"].count("dport=%d" % PLAIN_PORT) == 3
                self.assertTrue(wait_until(settled, 10), box)
                before = sorted(triple(s) for s in box["a"])
                log("gw-a sessions (inside, inside id, public id, outside id):", before)
                log("gw-a labels:", box["labels"])
                self.assertEqual(sorted(s["inside_address"] for s in box["a"]),
                                 sorted(lab.addr_of(r) for r in roles))
                self.assertTrue(all(s["public_address"] == ha.PUBLIC_VIP for s in box["a"]), box["a"])
                self.assertGreaterEqual(a.ha_stats()["labels_written"], CLIENTS, a.ha_stats())
                self.assertEqual(b.sessions(), [])
                time.sleep(0.5)     # the last label updates reach gw-b

                # ---- gw-a fails
                t0 = time.time()
                m0 = time.monotonic()
                lab.fail("gw-a")
                rc = a.stop()
                self.assertEqual(rc, 0, a.run_output()[-3000:])
                caps2 = captures(lab, roles, 2)
                for p, _path in caps1.values():
                    lab.stop_process(p)

                recovered = probe_until_echo(clients, m0, stop_probes)
                takeover = log_switch(lab, "takeover", "gw-b", t0, recovered, CLIENTS)
                self.assertEqual(len(recovered), CLIENTS, "calls echoing again: %s; gw-b log: %s" % (
                    recovered, b.output()[-3000:]))
                self.assertLess(takeover, TAKEOVER_BOUND)
                self.assertEqual(lab.master(), "gw-b")

                # ---- gw-b has the same calls, adopted from the labels
                for c in clients:
                    self.assertEqual(c.exchange(5), 5, "client%d after the takeover" % c.index)
                after = b.sessions()
                log("gw-b sessions:", sorted(triple(s) for s in after))
                self.assertTrue(wait_until(lambda: all(x["packets_in"] > 0 and x["packets_out"] > 0
                                                       for x in b.sessions()), 5), b.sessions())
                self.assertEqual(sorted(triple(s) for s in after), before)
                self.assertTrue(all(s["public_address"] == ha.PUBLIC_VIP for s in after), after)
                stats = b.ha_stats()
                log("gw-b ha stats:", stats)
                log("gw-b drops:", {k: v for k, v in b.stats().get("dropped", {}).items() if v})
                self.assertEqual(stats["calls_adopted"], CLIENTS, stats)
                self.assertEqual(stats["invalid_labels"], 0, stats)    # other ports: not in the dump
                self.assertEqual(stats["labelled_entries_seen"], CLIENTS, stats)
                self.assertEqual(stats["calls_in_conflict"], 0, stats)
                self.assertGreaterEqual(stats["adoption_runs"], 2, stats)   # at start, and the notify's
                self.assertIn("adopted %d call(s)" % CLIENTS, lab.notify_log("gw-b"))
                # The other port's connections are in gw-b's kernel with
                # their labels (or none), carried as they were, and outside
                # the agent's dump: the labelled entries it saw are the calls'.
                plain_b = {(e["orig"]["src"], e["orig"]["sport"]): e["labels"] for e in lab.ct_entries("gw-b")
                           if e.get("orig", {}).get("dport") == PLAIN_PORT}
                self.assertEqual(plain_b, {(plain[r]["src"], plain[r]["sport"]): lbl for r, lbl in
                                           ((roles[0], None), (roles[1], FOREIGN_LABEL.hex()),
                                            (roles[2], damaged_label().hex()))})

                # ---- the wire: the same Call IDs before and after
                for p, _path in caps2.values():
                    lab.stop_process(p)
                for phase, caps in (("before", caps1), ("after", caps2)):
                    self.check_wire(lab, caps, box["a"], roles, phase)
                log("captures: the same Call IDs at the clients and the server before and after")

                # ---- gw-a comes back as a rebooted box: backup (nopreempt)
                backups = lab.notify_log("gw-a").count("backup: done")
                masters = lab.notify_log("gw-a").count("master: done")
                r0 = time.monotonic()
                lab.reboot("gw-a")
                caps3 = captures(lab, roles + [new_role], 3)
                self.assertTrue(wait_until(lambda: lab.notify_log("gw-a").count("backup: done") > backups, 15),
                                lab.notify_log("gw-a"))
                fresh = a.ha_stats()
                log("gw-a rebooted, backup after %.2f s; its fresh agent's ha stats: %s" % (
                    time.monotonic() - r0, fresh))
                self.assertEqual(a.sessions(), [])
                self.assertEqual((fresh["adoption_runs"], fresh["labelled_entries_seen"]), (1, 0), fresh)

                def resynced():
                    box["ext_a"] = lab.ctd("gw-a", "-e")
                    return box["ext_a"].count("dport=1723") == CLIENTS and \
                        box["ext_a"].count("dport=%d" % PLAIN_PORT) == 3
                self.assertTrue(wait_until(resynced, 10), box.get("ext_a"))
                log("resync: gw-a's external cache has gw-b's %d connections %.2f s after the reboot" % (
                    CLIENTS + 3, time.monotonic() - r0))
                for c in clients:
                    self.assertEqual(c.exchange(3), 3, "client%d through gw-b, gw-a back" % c.index)

                # ---- through gw-b: a new call, and one old call cleared
                started.append(newcomer)
                newcomer.start()
                self.assertTrue(newcomer.wait_server_frame(10), newcomer.stderr_tail())
                self.assertEqual(newcomer.exchange(5), 5, "the new call through gw-b")
                new_addr, cleared_addr = lab.addr_of(new_role), cleared.localbind
                self.assertTrue(wait_until(lambda: any(s["inside_address"] == new_addr and
                                                       s["state"] == "established" for s in b.sessions()), 5))
                new_call = [s for s in b.sessions() if s["inside_address"] == new_addr][0]
                gone = [s for s in b.sessions() if s["inside_address"] == cleared_addr][0]
                started.remove(cleared)
                result = cleared.stop()
                self.assertFalse(result.exited_early, result.stderr)
                self.assertTrue(wait_until(lambda: all(s["inside_address"] != cleared_addr
                                                       for s in b.sessions()), 5), b.sessions())
                remaining = [s for s in box["a"] if s["inside_address"] != cleared_addr] + [new_call]
                expected = sorted(triple(s) for s in remaining)
                self.assertEqual(sorted(triple(s) for s in b.sessions()), expected)
                new_label = control_label(lab, "gw-b", new_addr)
                cleared_label = control_label(lab, "gw-b", cleared_addr)
                log("through gw-b: new call", triple(new_call), "label", new_label, "; cleared",
                    triple(gone), "label", cleared_label)
                self.assertEqual(label_calls(new_label), 1, new_label)
                self.assertTrue(cleared_label == "gone" or label_calls(cleared_label) == 0, cleared_label)
                self.assertGreaterEqual(b.ha_stats()["labels_written"], 2, b.ha_stats())

                # gw-a's conntrackd has the new connection (and what is left
                # of the cleared one: its TIME_WAIT entry, label without calls).
                self.assertTrue(wait_until(lambda: "src=%s " % new_addr in lab.ctd("gw-a", "-e"), 5),
                                lab.ctd("gw-a", "-e"))
                time.sleep(0.5)     # the last label updates reach gw-a
                self.assertEqual(lab.master(), "gw-b")
                self.assertEqual(lab.notify_log("gw-a").count("master: done"), masters,
                                 "nopreempt: gw-a did not take the VIPs back")
                self.assertEqual(lab.state("gw-a"), "backup")
                log("gw-a stayed backup for %.2f s after the reboot (nopreempt)" % (time.monotonic() - r0))

                # ---- gw-b fails: back to gw-a
                live = clients[:-1] + [newcomer]
                t0 = time.time()
                m0 = time.monotonic()
                lab.fail("gw-b")
                rc = b.stop()
                self.assertEqual(rc, 0, b.run_output()[-3000:])
                caps4 = captures(lab, roles + [new_role], 4)
                for p, _path in caps3.values():
                    lab.stop_process(p)
                recovered = probe_until_echo(live, m0, stop_probes)
                failback = log_switch(lab, "failback", "gw-a", t0, recovered, len(live))
                self.assertEqual(len(recovered), len(live), "calls echoing again: %s; gw-a log: %s" % (
                    recovered, a.output()[-3000:]))
                self.assertLess(failback, TAKEOVER_BOUND)
                self.assertEqual(lab.master(), "gw-a")

                for c in live:
                    self.assertEqual(c.exchange(5), 5, "client%d after the failback" % c.index)
                back = a.sessions()
                log("gw-a sessions:", sorted(triple(s) for s in back))
                self.assertEqual(sorted(triple(s) for s in back), expected)
                self.assertTrue(wait_until(lambda: all(x["packets_in"] > 0 and x["packets_out"] > 0
                                                       for x in a.sessions()), 5), a.sessions())
                self.assertTrue(all(s["public_address"] == ha.PUBLIC_VIP for s in back), back)
                stats = a.ha_stats()
                log("gw-a ha stats:", stats)
                log("gw-a drops:", {k: v for k, v in a.stats().get("dropped", {}).items() if v})
                self.assertEqual(stats["calls_adopted"], len(live), stats)
                self.assertEqual(stats["calls_already_known"], 0, stats)
                self.assertEqual(stats["calls_in_conflict"], 0, stats)
                self.assertEqual(stats["invalid_labels"], 0, stats)
                self.assertEqual(stats["adoption_runs"], 2, stats)
                # Labelled: the live calls' connections and the cleared one's
                # (TIME_WAIT, its label without calls); the two foreign ones
                # are on another port, outside the agent's filtered dump.
                self.assertEqual(stats["labelled_entries_seen"], len(live) + 1, stats)
                self.assertIn("adopted %d call(s)" % len(live), lab.notify_log("gw-a"))

                for p, _path in caps4.values():
                    lab.stop_process(p)
                for phase, caps, calls, silent in (("through gw-b", caps3, remaining + [gone], ()),
                                                   ("after the failback", caps4, remaining, (roles[-1],))):
                    self.check_wire(lab, caps, calls, [r for r in roles + [new_role] if r not in silent],
                                    phase, silent)
                log("captures: the same Call IDs through gw-b and after the failback; none for the cleared call")

                # The cleared call is not back: its public Call ID is not
                # translated to its client.
                reached, dropped = stray_gre_reaches(lab, a, roles[-1], gone["public_call_id"])
                log("GRE to the cleared call's public Call ID %d: %d reached %s, %d dropped by gw-a's agent" % (
                    gone["public_call_id"], reached, roles[-1], dropped))
                self.assertEqual(reached, 0)
            finally:
                stop_probes.set()
                time.sleep(PROBE_TIMEOUT + 0.1)     # a probe under way ends
                results = [c.stop() for c in started]
            for r in results:
                self.assertFalse(r.exited_early, r.stderr)
                self.assertEqual(r.foreign_frames, 0, r)
            # The clients cleared their calls through gw-a.
            self.assertTrue(wait_until(lambda: a.sessions() == [], 10), a.sessions())
            self.assertEqual(a.stop(), 0, a.run_output()[-3000:])


class OldAgentFailback(unittest.TestCase):
    """gw-a comes back WITHOUT a reboot (its links down and up again; its
    agent, with the calls it had, conntrackd and keepalived running on
    throughout), then gw-b fails. One scenario (setUpClass), its findings
    checked by the tests below."""

    @classmethod
    def setUpClass(cls):
        cls.obs = obs = {}
        with ha.HaPair(clients=4, name_hint="old") as lab:
            a, b = lab.agents["gw-a"], lab.agents["gw-b"]
            lab.start_pptpd_at("server")
            c1, c2, c4 = (RealClient(lab, i, server=ha.SERVER) for i in (1, 2, 4))
            started = [c1, c2]
            stop = threading.Event()
            echo_old = echo_new = None
            try:
                for c in (c1, c2):
                    c.start()
                for c in (c1, c2):
                    assert c.wait_server_frame(10), c.stderr_tail()
                # client3: a control connection with a call (no GRE) whose
                # control bytes flow while gw-b is the active one.
                echo_old = Echoer(lab, "client3", 4242)
                assert wait_until(lambda: len(a.sessions()) == 3 and
                                  lab.ctd("gw-b", "-e").count("dport=1723") == 3, 10), a.sessions()
                obs["echo_a"] = echo_old.echo()
                time.sleep(0.5)
                # gw-a's links go down; its agent runs on.
                t0, m0 = time.time(), time.monotonic()
                lab.fail("gw-a")
                obs["takeover"] = probe_until_echo([c1, c2], m0, stop)
                log_switch(lab, "takeover (gw-a's agent left running)", "gw-b", t0, obs["takeover"], 2)
                obs["echo_b"] = echo_old.echo(8.0)
                # Links up again: backup (nopreempt), conntrackd resyncs.
                backups = lab.notify_log("gw-a").count("backup: done")
                masters = lab.notify_log("gw-a").count("master: done")
                lab.restore("gw-a")
                assert wait_until(lambda: lab.notify_log("gw-a").count("backup: done") > backups, 15)
                assert wait_until(lambda: lab.ctd("gw-a", "-e").count("dport=1723") == 3, 10)
                # Through gw-b: a new call (client4) and a new echoer beside
                # it, an Echo on the old echoer's connection, client2's call
                # cleared.
                started.append(c4)
                c4.start()
                assert c4.wait_server_frame(10), c4.stderr_tail()
                echo_new = Echoer(lab, "client4", 4343)
                obs["echo_b2"] = echo_old.echo()
                obs["echo_new_b"] = echo_new.echo()
                obs["cleared"] = [s for s in b.sessions() if s["inside_address"] == c2.localbind][0]
                started.remove(c2)
                obs["c2"] = c2.stop()
                assert wait_until(lambda: len(b.sessions()) == 4, 5), b.sessions()
                obs["live"] = sorted(triple(s) for s in b.sessions())
                assert wait_until(lambda: "src=%s " % c4.localbind in lab.ctd("gw-a", "-e"), 5)
                time.sleep(0.5)
                obs["a_backup"] = sorted(triple(s) for s in a.sessions())
                obs["stayed_backup"] = lab.notify_log("gw-a").count("master: done") == masters
                # gw-b fails: back to gw-a's old agent.
                t0, m0 = time.time(), time.monotonic()
                lab.fail("gw-b")
                obs["b_rc"] = b.stop()
                obs["failback"] = probe_until_echo([c1, c4], m0, stop)
                obs["failback_s"] = log_switch(lab, "failback to the old agent", "gw-a", t0, obs["failback"], 2)
                obs["adopt"] = [line for line in lab.notify_log("gw-a").splitlines() if "ha adopt" in line][-1]
                obs["a_after"] = sorted(triple(s) for s in a.sessions())
                obs["a_stats"] = a.ha_stats()
                obs["echo_new_a"] = echo_new.echo(8.0)
                obs["echo_old_a"] = echo_old.echo(8.0)
                obs["a_drops"] = {k: v for k, v in a.stats().get("dropped", {}).items() if v}
                obs["stray"] = stray_gre_reaches(lab, a, "client2", obs["cleared"]["public_call_id"])
            finally:
                stop.set()
                time.sleep(PROBE_TIMEOUT + 0.1)
                for e in (echo_old, echo_new):
                    if e is not None:
                        e.close()
                obs["results"] = [c.stop() for c in started]
            wait_until(lambda: len(a.sessions()) <= 2, 5)
            obs["a_end"] = sorted(triple(s) for s in a.sessions())
            obs["a_rc"] = a.stop()
        log("old agent: gw-a's calls while backup:", obs["a_backup"])
        log("old agent: live calls through gw-b:", obs["live"], "cleared:", triple(obs["cleared"]))
        log("old agent: gw-a's adoption:", obs["adopt"].split(": ", 2)[-1])
        log("old agent: gw-a's calls after the failback:", obs["a_after"])
        log("old agent: Echo-Request on the old echoer's connection through gw-a, gw-b, gw-b, gw-a:",
            [obs[k] for k in ("echo_a", "echo_b", "echo_b2", "echo_old_a")])
        log("old agent: the same on the new echoer's, through gw-b, gw-a:", [obs["echo_new_b"], obs["echo_new_a"]])
        log("old agent: gw-a drops:", obs["a_drops"])
        log("old agent: GRE to the cleared call's public Call ID %d: %d reached client2, %d dropped" % (
            (obs["cleared"]["public_call_id"],) + obs["stray"]))
        log("old agent: gw-a's calls after every client ended:", obs["a_end"])

    def test_live_calls_go_on(self):
        """Every live call echoes after both switches; the old agent's
        adoption counts its own calls as already known, takes the new ones,
        no conflict; both agents exit 0."""
        obs = self.obs
        self.assertEqual(len(obs["takeover"]), 2, obs["takeover"])
        self.assertEqual(len(obs["failback"]), 2, obs["failback"])
        self.assertLess(obs["failback_s"], TAKEOVER_BOUND)
        self.assertTrue(obs["stayed_backup"])
        self.assertIn("adopted 2 call(s) from 5 labelled connection(s); 2 already here, 0 in conflict",
                      obs["adopt"])
        self.assertEqual(obs["a_stats"]["calls_in_conflict"], 0, obs["a_stats"])
        for k in ("echo_a", "echo_b", "echo_b2", "echo_new_b", "echo_new_a"):
            self.assertTrue(obs[k]["ok"], (k, obs[k]))
        for r in obs["results"] + [obs["c2"]]:
            self.assertFalse(r.exited_early, r.stderr)
            self.assertEqual(r.foreign_frames, 0, r)
        self.assertEqual((obs["a_rc"], obs["b_rc"]), (0, 0))

    def test_ended_call_not_kept(self):
        """The call cleared through gw-b is torn down on the old agent at
        its adoption (its label no longer names it), and GRE to its public
        Call ID reaches no client."""
        obs = self.obs
        cleared = triple(obs["cleared"])
        self.assertNotIn(cleared, obs["a_after"])
        self.assertEqual(obs["a_stats"]["calls_ended_elsewhere"], 1, obs["a_stats"])
        self.assertEqual(obs["stray"][0], 0, "GRE of the cleared call reached its client")

    def test_control_connection_goes_on(self):
        """A control connection whose bytes went through gw-b meanwhile
        goes on through the old agent: its streams are picked up again
        where they are now, not where the old agent last saw them."""
        self.assertTrue(self.obs["echo_old_a"]["ok"], self.obs["echo_old_a"])
        self.assertGreaterEqual(self.obs["a_stats"]["connections_resynchronized"], 1, self.obs["a_stats"])
        self.assertEqual(self.obs["a_drops"].get("control_hold_timeout", 0), 0, self.obs["a_drops"])

if __name__ == "__main__":
    run_tests()
