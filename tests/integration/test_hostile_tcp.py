#!/usr/bin/python3
"""pptp-fixupd against hostile TCP, with real peers (run as root).

The agent follows each control connection as an RFC 5961 endpoint does;
these tests forge segments with raw sockets (checksums computed here) and
check what the real peers and the agent do with them:

- spoofed RSTs from outside (random sequence numbers, and one in the window
  but 1000 bytes past the next expected byte) leave two real calls up, with
  conntrack's default window checks and with nf_conntrack_tcp_be_liberal=1;
  every RST that gets past conntrack reaches the client and is counted as
  ignored;
- a bare SYN with a live connection's 4-tuple neither replaces the
  connection nor ends its call;
- an Outgoing-Call-Request forged into a synthetic client's connection with
  a wrong TCP checksum counts for nothing (its Call ID never reaches the
  server), the same bytes with a correct checksum are translated, and a
  resend of them with another Call ID is dropped; with conntrack's own
  checksum check (the default) the fixup's rules drop the INVALID segment,
  with nf_conntrack_checksum=0 the agent does;
- behind a port forward to an inside PPTP server, 100 SYNs from 100 outside
  hosts do not lock out a real outside client (limits count the host that
  opened a connection), while one host's fifth connection is still refused.
"""

import json
import os
import random
import re
import struct
import subprocess
import sys
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab import pptp_proto as P  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab, read_line  # noqa: E402
from lab.pcap import control_messages, ipv4_packets  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

SERVER = netns.SERVER_ADDR
PUBLIC = netns.ROUTER_OUT
PORT = P.PPTP_PORT
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
RNG = random.Random()

# Sends forged TCP/IPv4 segments (a JSON list on stdin) through a raw socket
# (IPPROTO_RAW: the header is ours; the kernel fills in the IP ID and
# checksum). The TCP checksum is computed here, then XORed with
# "checksum_xor" (non-zero: deliberately wrong).
RAW_TCP = r"""
import json, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from lab.junk import ip_checksum, ipv4
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
segments = json.load(sys.stdin)
for s in segments:
    data = bytes.fromhex(s.get("data", ""))
    head = struct.pack("!HHIIBBHHH", s["sport"], s["dport"], s["seq"] % 2**32,
                       s.get("ack", 0) % 2**32, 5 << 4, s["flags"],
                       s.get("window", 64240), 0, 0)
    pseudo = socket.inet_aton(s["src"]) + socket.inet_aton(s["dst"]) + \
        struct.pack("!BBH", 0, 6, len(head) + len(data))
    check = ip_checksum(pseudo + head + data) ^ s.get("checksum_xor", 0)
    tcp = head[:16] + struct.pack("!H", check) + head[18:] + data
    raw.sendto(ipv4(s["src"], s["dst"], tcp, proto=6), (s["dst"], 0))
print(len(segments))
"""

# A line-driven TCP client in a namespace: each JSON line on stdin opens one
# more connection ({"dst", "timeout", "bind"}), sends an SCCRQ and reads the
# reply ("reply": false skips that); it answers one JSON line and keeps the
# connection open. {"op": "close"} closes them all and exits.
HOLDER = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from lab import pptp_proto as P
socks = []
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("op") == "close":
        break
    s = socket.socket()
    socks.append(s)
    s.settimeout(cmd.get("timeout", 5))
    if cmd.get("bind"):
        s.bind((cmd["bind"], 0))
    res = {"connected": False}
    try:
        s.connect((cmd["dst"], cmd.get("port", P.PPTP_PORT)))
        res["connected"] = True
        s.sendall(P.sccrq())
        if cmd.get("reply", True):
            buf = b""
            while len(buf) < 12 or len(buf) < int.from_bytes(buf[:2], "big"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed by the peer")
                buf += chunk
            res["reply"] = P.parse_ctrl(buf)
    except OSError as e:
        res["error"] = repr(e)
    res["local_port"] = s.getsockname()[1]
    print(json.dumps(res), flush=True)
for s in socks:
    s.close()
"""


def log(*a):
    print("    [hostile-tcp]", *a, flush=True)


def invalid_drops(lab):
    """Packets the fixup's INVALID rules in PPTP_FIXUP_CONTROL dropped."""
    out = lab.router_exec(["iptables", "-w", "-t", "mangle", "-nvxL", "PPTP_FIXUP_CONTROL"]).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()
               if "DROP" in line and "INVALID" in line)


def send_tcp(lab, role, segments):
    """Sends forged segments (dicts as RAW_TCP reads them) from a namespace."""
    out = lab.exec(role, [netns.PYTHON, "-c", RAW_TCP, TESTS],
                   input=json.dumps(segments)).stdout
    assert int(out) == len(segments), out


def segment(src, sport, dst, dport, seq, flags, ack=0, data=b"",
            checksum_xor=0):
    return {"src": src, "sport": sport, "dst": dst, "dport": dport,
            "seq": seq % 2**32, "ack": ack % 2**32, "flags": flags,
            "data": data.hex(), "checksum_xor": checksum_xor}


class Holder:
    """HOLDER running in a namespace (stopped with the lab at the latest)."""

    def __init__(self, lab, role):
        self.lab = lab
        self.proc = lab.spawn(role, [netns.PYTHON, "-c", HOLDER, TESTS],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)

    def open(self, dst, timeout=5.0, **kw):
        self.proc.stdin.write((json.dumps(dict(kw, dst=dst, timeout=timeout))
                               + "\n").encode())
        self.proc.stdin.flush()
        line = read_line(self.proc.stdout, timeout + 5)
        if not line:
            raise netns.LabError("holder gave no answer: %r" % (
                self.proc.poll(),))
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write(b'{"op": "close"}\n')
            self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        return self.lab.stop_process(self.proc)


def tcp_segments(pcap, src, sport, dst=None, dport=None):
    for d in ipv4_packets(pcap):
        if d["proto"] == 6 and "sport" in d and d["src"] == src and \
                d["sport"] == sport and (dst is None or d["dst"] == dst) and \
                (dport is None or d["dport"] == dport):
            yield d


def next_sequence(pcap, src, sport, dst, dport):
    """The sequence number after the last byte (SYN and FIN count one) that
    ``src:sport`` sent to ``dst:dport`` in a capture, or None. RSTs do not
    count (the forged ones are in the capture too)."""
    base = best = None
    for d in tcp_segments(pcap, src, sport, dst, dport):
        if d["tcp_flags"] & TCP_RST:
            continue
        if base is None or d["tcp_flags"] & TCP_SYN:
            base = d["seq"]
        end = (d["seq"] - base + len(d["data"]) +
               (1 if d["tcp_flags"] & (TCP_SYN | TCP_FIN) else 0)) % 2**32
        best = end if best is None else max(best, end)
    return None if base is None else (base + best) % 2**32


def syn_ports(pcap, src, dst, dport=PORT):
    """Source ports of the SYNs from src to dst:dport, in capture order."""
    ports = []
    for d in ipv4_packets(pcap):
        if d["proto"] == 6 and "sport" in d and d["src"] == src and \
                d["dst"] == dst and d["dport"] == dport and \
                d["tcp_flags"] & (TCP_SYN | TCP_ACK) == TCP_SYN and \
                d["sport"] not in ports:
            ports.append(d["sport"])
    return ports


def ocrq_call_ids(data):
    """Call IDs of every whole OCRQ header in a segment's bytes."""
    head = struct.pack("!HHIH", P.MSG_SIZE[P.OCRQ], 1, P.MAGIC, P.OCRQ)
    ids, at = [], data.find(head)
    while at >= 0 and at + 14 <= len(data):
        ids.append(struct.unpack_from("!H", data, at + 12)[0])
        at = data.find(head, at + 1)
    return ids


def from_inside(pcap):
    """(src, dst, proto) of the packets in a capture whose source is an
    inside address: none may reach the server."""
    return [(d["src"], d["dst"], d["proto"]) for d in ipv4_packets(pcap)
            if d["src"].startswith("198.18.")]


def stats(lab):
    s = lab.agent.stats()
    return dict(s["counters"]), dict(s["dropped"])


def grew(before, after):
    return {k: after[k] - before.get(k, 0) for k in after
            if after[k] != before.get(k, 0)}


def start_real_clients(test, lab, indices):
    clients = [RealClient(lab, i) for i in indices]
    for c in clients:
        c.start()
    for c in clients:
        test.assertTrue(c.wait_server_frame(8),
                        "client %d got no frame from the server" % c.index)
        test.assertEqual(c.exchange(3), 3, "client %d" % c.index)
    return clients


def start_inside_pptpd(lab, index):
    """pptpd (pppd stand-in) listening on client ``index``'s address in its
    namespace, as Lab.start_pptpd does in the server's."""
    d = os.path.join(lab.tmpdir, "pptpd-client%d" % index)
    os.makedirs(d)
    opt = os.path.join(d, "options")
    open(opt, "w").close()
    conf = os.path.join(d, "pptpd.conf")
    with open(conf, "w") as f:
        f.write("ppp %s\noption %s\nlocalip 10.254.0.1\nremoteip 10.254.1.1-250"
                "\nlisten %s\nconnections 100\nnoipparam\n"
                % (netns.STANDIN, opt, netns.client_addr(index)))
    out = open(os.path.join(d, "pptpd.log"), "w+b")
    proc = lab.spawn("client%d" % index, [
        "pptpd", "-c", conf, "-f", "-p", os.path.join(d, "pptpd.pid")],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    if not wait_until(lambda: proc.poll() is not None or
                      lab.listening("client%d" % index, PORT), 10, 0.05) \
            or proc.poll() is not None:
        raise netns.LabError("inside pptpd did not listen: %s" % open(
            os.path.join(d, "pptpd.log"), errors="replace").read())
    return proc


class HostileTcp(unittest.TestCase):

    def test_spoofed_rsts_from_outside_leave_calls_up(self):
        with Lab(clients=2, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            _, spcap = lab.capture("server", bpf=["tcp", "port", str(PORT)])
            cpcaps = [lab.capture("client%d" % i,
                                  bpf=["tcp", "port", str(PORT)])[1]
                      for i in (1, 2)]
            clients = start_real_clients(self, lab, (1, 2))
            try:
                before_ids = sorted(s["id"] for s in lab.agent.sessions())
                ports = syn_ports(spcap, PUBLIC, SERVER)
                self.assertEqual(len(ports), 2, ports)
                log("NATed ports at the server:", ports, "conntrack:",
                    lab.conntrack("-L", "-p", "tcp", "--dport", str(PORT)))
                for liberal in (0, 1):
                    with self.subTest(be_liberal=liberal):
                        lab.router_exec(["sysctl", "-q", "-w",
                                         "net.netfilter.nf_conntrack_tcp_be_liberal=%d" % liberal])
                        self.spoof_rsts(lab, spcap, cpcaps, ports, clients,
                                        before_ids, "be_liberal=%d" % liberal)
            finally:
                for c in clients:
                    c.stop()

    def spoof_rsts(self, lab, spcap, cpcaps, ports, clients, before_ids,
                   label, random_per_connection=8):
        counters0, _ = stats(lab)
        segs, in_window = [], set()
        for port in ports:
            nxt = next_sequence(spcap, SERVER, PORT, PUBLIC, port)
            self.assertIsNotNone(nxt)
            for _ in range(random_per_connection):
                # Random, but never within 16 MiB of the window.
                seq = (nxt + RNG.randrange(2**24, 2**32 - 2**24)) % 2**32
                segs.append(segment(SERVER, PORT, PUBLIC, port, seq, TCP_RST))
            # Last on its connection, so that once it arrived the rest did.
            segs.append(segment(SERVER, PORT, PUBLIC, port, nxt + 1000,
                                TCP_RST))
            in_window.add((port, (nxt + 1000) % 2**32))
        sent = {s["seq"] for s in segs}
        send_tcp(lab, "server", segs)

        def rsts_at_clients():
            got = set()
            for pcap in cpcaps:
                for d in tcp_segments(pcap, SERVER, PORT):
                    if d["tcp_flags"] & TCP_RST and d["seq"] in sent:
                        got.add(d["seq"])
            return got
        self.assertTrue(wait_until(lambda: {s for _p, s in in_window} <=
                                   rsts_at_clients(), 5),
                        "%s: the in-window RSTs did not all reach the "
                        "clients: sent %s, arrived %s" % (
                            label, sorted(in_window), rsts_at_clients()))
        arrived = rsts_at_clients()
        counters1, _ = stats(lab)
        ignored = counters1["tcp_resets_ignored"] - \
            counters0["tcp_resets_ignored"]
        log("%s: sent %d RSTs (%d in the window), %d got past conntrack to "
            "the agent and on to the clients; tcp_resets_ignored +%d" % (
                label, len(segs), len(in_window), len(arrived), ignored))
        self.assertGreaterEqual(ignored, len(in_window), label)
        # Every RST the agent passed on it counted as ignored, and it
        # acted on none.
        self.assertEqual(ignored, len(arrived), label)
        for c in clients:
            self.assertEqual(c.exchange(3), 3,
                             "%s: client %d after the RSTs" % (label, c.index))
        sessions = lab.agent.sessions()
        self.assertEqual(sorted(s["id"] for s in sessions), before_ids, label)
        self.assertEqual([s["state"] for s in sessions],
                         ["established"] * 2, label)
        conns = lab.agent.ctl_json("connections")["connections"]
        self.assertEqual(sorted(c["outside_port"] for c in conns
                                if c["state"] == "established"), [PORT] * 2,
                         conns)
        self.assertNotIn("tcp-reset", lab.agent.output())
        self.assertEqual(from_inside(spcap), [], label)
        log("%s: conntrack after:" % label,
            lab.conntrack("-L", "-p", "tcp", "--dport", str(PORT)).strip())

    def test_spoofed_syn_on_a_live_connection(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            _, spcap = lab.capture("server", bpf=["tcp", "port", str(PORT)])
            (client,) = start_real_clients(self, lab, (1,))
            try:
                me = netns.client_addr(1)
                ss = lab.client_exec(1, ["ss", "-tnH", "state", "established",
                                         "dport", "=", ":%d" % PORT]).stdout
                m = re.search(r"%s:(\d+)\s+%s:%d" % (
                    re.escape(me), re.escape(SERVER), PORT), ss)
                self.assertIsNotNone(m, ss)
                lport = int(m.group(1))
                (session,) = lab.agent.sessions()
                conns = lab.agent.ctl_json("connections")["connections"]
                (conn,) = [c for c in conns if c["inside_port"] == lport]
                counters0, _ = stats(lab)
                seq = RNG.randrange(2**32)
                send_tcp(lab, "client1", [segment(me, lport, SERVER, PORT,
                                                  seq, TCP_SYN)])
                self.assertTrue(wait_until(
                    lambda: stats(lab)[0]["tcp_syns_ignored"] >
                    counters0["tcp_syns_ignored"], 5), "the SYN never got to the agent")
                self.assertEqual(client.exchange(3), 3, "the call after the SYN")
                counters1, _ = stats(lab)
                log("SYN seq %d from %s:%d: counters %s" % (
                    seq, me, lport, grew(counters0, counters1)))
                self.assertEqual(counters1["tcp_syns_ignored"] -
                                 counters0["tcp_syns_ignored"], 1)
                (after,) = lab.agent.sessions()
                self.assertEqual((after["id"], after["state"],
                                  after["public_call_id"]),
                                 (session["id"], "established",
                                  session["public_call_id"]))
                conns = lab.agent.ctl_json("connections")["connections"]
                self.assertEqual([(c["id"], c["state"]) for c in conns
                                  if c["inside_port"] == lport],
                                 [(conn["id"], "established")], conns)
                self.assertNotIn("connection-replaced", lab.agent.output())
                self.assertEqual(from_inside(spcap), [])
                (nat_port,) = syn_ports(spcap, PUBLIC, SERVER)
                at_server = [d for d in tcp_segments(spcap, PUBLIC, nat_port)
                             if d["seq"] == seq and d["tcp_flags"] & TCP_SYN]
                log("the SYN went on to the server:", bool(at_server))
            finally:
                client.stop()

    def test_bad_checksum_then_resend_with_another_call_id(self):
        # With conntrack's own checksum check on (the default) a segment
        # with a bad checksum is INVALID in PREROUTING: it has no conntrack
        # entry, so no --ctorigdstport and no NAT, and the fixup's rules drop
        # it (forwarded, it would leave with the inside address).
        self.bad_checksum_case(conntrack_checks=True)

    def test_bad_checksum_reaching_the_agent(self):
        # With that check off, what stands between the segment and the
        # server is the agent's own check.
        self.bad_checksum_case(conntrack_checks=False)

    def bad_checksum_case(self, conntrack_checks):
        with Lab(clients=2, mode="agent", **agent_hooks()) as lab:
            lab.router_exec(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_checksum=%d" % conntrack_checks])
            lab.start_pptpd()
            bpf = ["tcp", "port", str(PORT)]
            scap, spcap = lab.capture("server", bpf=bpf)
            _, c2pcap = lab.capture("client2", bpf=bpf)
            (client,) = start_real_clients(self, lab, (1,))
            holder = Holder(lab, "client2")
            try:
                (live,) = lab.agent.sessions("--inside", netns.client_addr(1))
                taken = live["public_call_id"]
                me = netns.client_addr(2)
                opened = holder.open(SERVER)
                self.assertEqual(opened.get("reply", {}).get("name"), "SCCRP",
                                 opened)
                lport = opened["local_port"]
                # What the kernel sent and received so far, from the capture.
                self.assertTrue(wait_until(lambda: any(
                    len(d["data"]) == P.MSG_SIZE[P.SCCRP] for d in
                    tcp_segments(c2pcap, SERVER, PORT, me, lport)), 5))
                snd_nxt = next_sequence(c2pcap, me, lport, SERVER, PORT)
                rcv_nxt = next_sequence(c2pcap, SERVER, PORT, me, lport)

                def ocrq(call_id, checksum_xor=0):
                    return segment(me, lport, SERVER, PORT, snd_nxt,
                                   TCP_PSH | TCP_ACK, ack=rcv_nxt,
                                   data=P.ocrq(call_id),
                                   checksum_xor=checksum_xor)
                counters0, drops0 = stats(lab)
                invalid0 = invalid_drops(lab)
                send_tcp(lab, "client2", [ocrq(777, checksum_xor=0x5A5A)])
                if conntrack_checks:
                    self.assertTrue(wait_until(lambda: invalid_drops(lab) > invalid0, 5),
                                    "the fixup's rules did not drop the INVALID segment")
                else:
                    self.assertTrue(wait_until(
                        lambda: stats(lab)[1]["control_bad_tcp_checksum"] >
                        drops0["control_bad_tcp_checksum"], 5),
                        "the segment with a bad checksum never got to the agent")
                # The same bytes but Call ID: had the bad copy counted, this
                # would be an inconsistent resend.
                send_tcp(lab, "client2", [ocrq(taken)])
                self.assertTrue(wait_until(lambda: lab.agent.sessions(
                    "--inside", me), 5), "the good OCRQ made no call")
                (forged,) = lab.agent.sessions("--inside", me)
                self.assertEqual(forged["inside_call_id"], taken)
                self.assertNotIn(forged["public_call_id"], (taken, 777))
                # And now a resend of them with another Call ID.
                send_tcp(lab, "client2", [ocrq(777)])
                self.assertTrue(wait_until(
                    lambda: stats(lab)[1]["control_inconsistent_resend"] >
                    drops0["control_inconsistent_resend"], 5),
                    "the resend with another Call ID was not dropped")
                self.assertEqual(client.exchange(3), 3, "client 1's call")
                counters1, drops1 = stats(lab)
                log("counters", grew(counters0, counters1), "dropped",
                    grew(drops0, drops1))
                self.assertEqual(drops1["control_bad_tcp_checksum"] -
                                 drops0["control_bad_tcp_checksum"], 0 if conntrack_checks else 1)
                self.assertEqual(drops1["control_inconsistent_resend"] -
                                 drops0["control_inconsistent_resend"], 1)
            finally:
                holder.close()
                client.stop()
            # Give the server's capture the last segments, then read it.
            lab.stop_process(scap)
            self.assertEqual(from_inside(spcap), [])
            ports = syn_ports(spcap, PUBLIC, SERVER)
            self.assertEqual(len(ports), 2, ports)   # client 1, then ours
            ids = {port: [cid for d in tcp_segments(spcap, PUBLIC, port,
                                                    SERVER, PORT)
                          for cid in ocrq_call_ids(d["data"])]
                   for port in ports}
            log("OCRQ Call IDs at the server per connection:", ids,
                "client 1's public", taken, "forged call's public",
                forged["public_call_id"])
            self.assertEqual(set(ids[ports[0]]), {taken})
            self.assertEqual(set(ids[ports[1]]), {forged["public_call_id"]})
            parsed = [m["call_id"] for src, _d, m in control_messages(spcap)
                      if m["name"] == "OCRQ"]
            self.assertEqual(sorted(parsed),
                             sorted([taken, forged["public_call_id"]]))

    def test_many_syns_from_distinct_outside_hosts_do_not_lock_out_a_port_forwarded_server(self):
        hooks = agent_hooks(extra_args=["--max-connections-per-host", "4"])
        with Lab(clients=1, mode="agent", **hooks) as lab:
            inside = netns.client_addr(1)
            lab.router_exec(["iptables", "-w", "-t", "nat", "-A", "PREROUTING",
                             "-i", "out0", "-p", "tcp", "--dport", str(PORT),
                             "-j", "DNAT", "--to-destination", inside])
            lab.router_exec(["iptables", "-w", "-I", "FORWARD", "-i", "out0",
                             "-o", "br-in", "-p", "tcp", "--dport", str(PORT),
                             "-d", inside, "-j", "ACCEPT"])
            start_inside_pptpd(lab, 1)
            _, cpcap = lab.capture("client1", bpf=["tcp", "port", str(PORT)])
            hosts = ["203.0.113.%d" % n for n in range(100, 200)]
            lab.server_exec(["ip", "-batch", "-"], input="".join(
                "addr add %s/24 dev eth0\n" % h for h in hosts))
            # The flood stays half-open: the SYN-ACKs to those hosts draw
            # no RST.
            lab.server_exec(["iptables", "-w", "-A", "INPUT", "-p", "tcp",
                             "--sport", str(PORT), "-m", "iprange",
                             "--dst-range", "%s-%s" % (hosts[0], hosts[-1]),
                             "-j", "DROP"])
            send_tcp(lab, "server", [
                segment(h, RNG.randrange(20000, 60000), PUBLIC, PORT,
                        RNG.randrange(2**32), TCP_SYN) for h in hosts])

            def flood_connections():
                return [c for c in lab.agent.ctl_json("connections")[
                    "connections"] if c["outside_address"] in hosts]
            self.assertTrue(wait_until(lambda: len(flood_connections()) ==
                                       len(hosts), 5),
                            "%d of %d flood connections at the agent" % (
                                len(flood_connections()), len(hosts)))
            _, drops0 = stats(lab)
            self.assertEqual(drops0["control_connection_limit"], 0)
            holder = Holder(lab, "server")
            try:
                first = holder.open(PUBLIC, bind=SERVER)
                self.assertTrue(first["connected"], first)
                reply = first.get("reply", {})
                self.assertEqual((reply.get("name"), reply.get("result")),
                                 ("SCCRP", 1), first)
                _, drops1 = stats(lab)
                self.assertEqual(drops1["control_connection_limit"], 0)
                # Four more from the same host, all held open at once.
                more = [holder.open(PUBLIC, timeout=3.0, bind=SERVER,
                                    reply=False) for _ in range(4)]
                log("flood of %d SYNs accepted; the real client's SCCRP "
                    "result %s; four more: %s" % (
                        len(hosts), reply.get("result"),
                        [(r["connected"], r.get("error")) for r in more]))
                self.assertEqual([r["connected"] for r in more],
                                 [True, True, True, False], more)
                self.assertIn("timed out", more[-1]["error"])
                counters2, drops2 = stats(lab)
                log("control_connection_limit", drops2[
                    "control_connection_limit"], "connections refused",
                    counters2["control_connections_refused"])
                self.assertGreater(drops2["control_connection_limit"], 0)
                refused_port = more[-1]["local_port"]
                self.assertEqual([d for d in tcp_segments(cpcap, SERVER,
                                                          refused_port)],
                                 [], "the refused SYN reached the server")
                accepted = {r["local_port"] for r in [first] + more[:3]}
                self.assertTrue(wait_until(lambda: set(syn_ports(
                    cpcap, SERVER, inside)) == accepted, 5),
                    (accepted, syn_ports(cpcap, SERVER, inside)))
            finally:
                holder.close()


if __name__ == "__main__":
    run_tests()
