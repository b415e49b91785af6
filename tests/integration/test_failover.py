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
  at the public VIP; the unlabelled connection is not a labelled entry, the
  two foreign/damaged labels are counted (invalid_labels 2) and not adopted;
- captures at every client and at the server, before the failure and after
  it: the same Call IDs in the GRE keys each way, the GRE at the server
  from/to the public VIP only;
- afterwards each client still echoes every frame; stopping the clients
  clears their calls through gw-b (its sessions empty) and both agents exit 0.

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

import os
import subprocess
import sys
import threading
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import ha  # noqa: E402
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


def crc8(label):
    """The agent's label checksum (CRC-8, polynomial 0x07, over every byte
    but byte 3), as src/ha/connection_label.cpp."""
    crc = 0
    for i, byte in enumerate(label):
        if i == 3:
            continue
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def damaged_label():
    """The agent's format (magic 0xB7, version 1, one outgoing call) whose
    checksum does not match."""
    b = bytearray(16)
    b[0], b[1], b[2] = 0xB7, 0x10 | 0x02, 0x11
    b[4:10] = bytes([0, 1, 0, 2, 0, 3])
    b[3] = crc8(b) ^ 0x5A
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


class Failover(unittest.TestCase):

    def test_takeover_keeps_calls(self):
        with ha.HaPair(clients=CLIENTS) as lab:
            self.assertEqual(lab.master(), "gw-a")
            a, b = lab.agents["gw-a"], lab.agents["gw-b"]
            lab.start_pptpd_at("server")
            start_plain_server(lab)

            roles = ["client%d" % i for i in range(1, CLIENTS + 1)]
            caps1 = captures(lab, roles, 1)
            clients = [RealClient(lab, i, server=ha.SERVER) for i in range(1, CLIENTS + 1)]
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

                recovered = {}

                def probe(c):
                    while time.monotonic() - m0 < GIVE_UP and not stop_probes.is_set():
                        if c.exchange(1, timeout=PROBE_TIMEOUT, interval=0) == 1:
                            recovered[c.index] = time.monotonic() - m0
                            return
                threads = [threading.Thread(target=probe, args=(c,), daemon=True) for c in clients]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                takeover = max(recovered.values()) if len(recovered) == CLIENTS else None
                master_at = lab.notify_times("gw-b", "master: committing")
                adopted_at = lab.notify_times("gw-b", "master: ha adopt")
                log("gw-b notify:", lab.notify_log("gw-b").strip().replace("\n", " | "))
                log("per client (s):", {i: round(t, 2) for i, t in sorted(recovered.items())})
                if master_at:
                    log("VRRP: gw-b master (notify) after %.2f s" % (master_at[-1] - t0))
                if adopted_at:
                    log("commit + adopt done after %.2f s" % (adopted_at[-1] - t0))
                if takeover is not None:
                    log("takeover: %.2f s until all %d calls echo" % (takeover, CLIENTS))
                else:
                    log("takeover: FAILED, %d of %d calls echo after %.0f s" % (len(recovered), CLIENTS, GIVE_UP))
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
                self.assertEqual(stats["invalid_labels"], 2, stats)
                self.assertEqual(stats["calls_in_conflict"], 0, stats)
                self.assertGreaterEqual(stats["adoption_runs"], 2, stats)   # at start, and the notify's
                self.assertIn("adopted %d call(s)" % CLIENTS, lab.notify_log("gw-b"))
                # The unlabelled connection is in gw-b's kernel, unlabelled
                # and not counted: the labelled entries seen are the calls'
                # and the two foreign ones.
                plain_b = {(e["orig"]["src"], e["orig"]["sport"]): e["labels"] for e in lab.ct_entries("gw-b")
                           if e.get("orig", {}).get("dport") == PLAIN_PORT}
                self.assertEqual(plain_b, {(plain[r]["src"], plain[r]["sport"]): lbl for r, lbl in
                                           ((roles[0], None), (roles[1], FOREIGN_LABEL.hex()),
                                            (roles[2], damaged_label().hex()))})
                self.assertEqual(stats["labelled_entries_seen"], CLIENTS + 2, stats)

                # ---- the wire: the same Call IDs before and after
                for p, _path in caps2.values():
                    lab.stop_process(p)
                by_inside = {s["inside_address"]: s for s in box["a"]}
                for phase, caps in (("before", caps1), ("after", caps2)):
                    srv = gre_keys(caps["server"][1])
                    self.assertEqual(set(srv), {(ha.PUBLIC_VIP, ha.SERVER), (ha.SERVER, ha.PUBLIC_VIP)},
                                     "%s: GRE at the server %s" % (phase, srv))
                    self.assertEqual(srv[(ha.PUBLIC_VIP, ha.SERVER)], {s["outside_call_id"] for s in box["a"]},
                                     phase)
                    self.assertEqual(srv[(ha.SERVER, ha.PUBLIC_VIP)], {s["public_call_id"] for s in box["a"]},
                                     phase)
                    for r in roles:
                        addr = lab.addr_of(r)
                        s = by_inside[addr]
                        seen = gre_keys(caps[r][1])
                        self.assertEqual(seen, {(addr, ha.SERVER): {s["outside_call_id"]},
                                                (ha.SERVER, addr): {s["inside_call_id"]}}, "%s: %s" % (phase, r))
                log("captures: the same Call IDs at the clients and the server before and after")
            finally:
                stop_probes.set()
                time.sleep(PROBE_TIMEOUT + 0.1)     # a probe under way ends
                results = [c.stop() for c in clients]
            for r in results:
                self.assertFalse(r.exited_early, r.stderr)
                self.assertEqual(r.foreign_frames, 0, r)
            # The clients cleared their calls through gw-b.
            self.assertTrue(wait_until(lambda: b.sessions() == [], 10), b.sessions())
            self.assertEqual(b.stop(), 0, b.run_output()[-3000:])


if __name__ == "__main__":
    run_tests()
