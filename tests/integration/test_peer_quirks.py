#!/usr/bin/python3
"""Real peers' quirks with Call-Clear-Request and Call-Disconnect-Notify
(run as root).

A real `pptp` client (pptp-linux, client 1) behind the router calls a
synthetic PAC (this script run as ``test_peer_quirks.py pac STATE``, in the
server namespace on 203.0.113.10:1723, instead of pptpd) through
pptp-fixupd with random public Call IDs, so the client's inside Call ID and
its public Call ID differ.  The PAC answers SCCRQ and OCRQ (its own Call ID
4660), sends an LCP Configure-Request in GRE to the public Call ID, and
echoes every GRE frame it gets.  Once the call echoes, on a command:

(a) the PAC sends a Call-Clear-Request naming the PNS's Call ID as the PAC
    knows it (the public one).  pptp-linux answers with a
    Call-Disconnect-Notify that repeats the Call ID it got: the CCRQ must
    reach the client with its inside Call ID, the CDN leave it with that
    inside Call ID and reach the PAC with the public one.  pptp then exits
    and closes the connection (no Stop-Control-Connection);
(b) the PAC sends a Call-Disconnect-Notify naming the PNS's Call ID (as
    accel-ppp does; RFC 2637 says the PAC's own): it must reach the client
    with its inside Call ID.  pptp-linux 1.10 looks a CDN's Call ID up among
    its peers' Call IDs, so it ignores this one (as it would without NAT:
    the same happens in a lab without the agent) and keeps its call; its
    GRE now belongs to no call at the agent and is dropped; stopped, pptp
    sends a CCRQ naming its inside Call ID, which reaches the PAC with the
    public one (a call ended by a CDN keeps its translation for late
    messages about it).

Either way the agent tears the call down as cleared by the
Call-Disconnect-Notify (its log says so, not the connection's end), with no
connection reset, no wrong-sender and no unknown-Call-ID count.

    sudo /usr/bin/python3 tests/integration/test_peer_quirks.py [-v]
"""

import json
import os
import select
import socket
import subprocess
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab import pptp_proto as P  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.pcap import control_messages  # noqa: E402
from lab.ppp import LCP_CONFREQ  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

SERVER = netns.SERVER_ADDR
PUBLIC = netns.ROUTER_OUT
CLIENT = netns.client_addr(1)
PAC_CALL_ID = 4660
CDN_ADMIN_SHUTDOWN = 3  # Call-Disconnect-Notify result code
# Counters that must not move when a peer's quirk goes through.
UNCHANGED = (("counters", "control_connections_reset"),
             ("counters", "control_call_ids_neutralised"),
             ("dropped", "control_wrong_sender"),
             ("dropped", "control_unknown_call_id"),
             ("dropped", "control_out_of_state"))


def log(*a):
    print("    [peer-quirks]", *a, flush=True)


# ------------------------------------------------------------ the fake PAC

class FakePac:
    """One control connection and its call, single-threaded (select on the
    TCP connection, a raw GRE socket and stdin).  Commands on stdin, one a
    line: ``ccrq`` (Call-Clear-Request naming the public Call ID), ``cdn``
    (Call-Disconnect-Notify naming the public Call ID, accel-ppp style).
    What it saw goes to the JSON file ``state_path`` after every event."""

    LCP_RESEND = 0.25  # until the client's GRE shows its socket is up

    def __init__(self, state_path):
        self.state_path = state_path
        self.conn = None
        self.raw = None
        self.stream = P.CtrlStream()
        self.seq = 0
        self.last_rx_seq = None
        self.next_lcp = None
        self.st = {"listening": False, "connected": False, "public_call_id": None,
                   "received": [], "sent": [], "command": None, "lcp_sent": 0,
                   "gre_in": 0, "gre_in_keys": [], "gre_echoed": 0, "closed": None,
                   "errors": []}

    def save(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.st, f)
        os.replace(tmp, self.state_path)

    def send_ctrl(self, msg):
        self.conn.sendall(msg)
        d = P.parse_ctrl(msg)
        self.st["sent"].append({k: d[k] for k in ("name", "call_id", "peer_call_id", "result") if k in d})

    def send_gre(self, payload):
        pkt = P.gre_build(self.st["public_call_id"], payload, seq=self.seq, ack=self.last_rx_seq)
        self.seq += 1
        self.raw.sendto(pkt, (PUBLIC, 0))

    def on_message(self, m):
        rec = {k: m[k] for k in ("name", "call_id", "peer_call_id", "result", "error", "ident", "reason")
               if k in m}
        rec["after_command"] = self.st["command"] is not None
        self.st["received"].append(rec)
        name = m["name"]
        if name == "SCCRQ":
            self.send_ctrl(P.sccrp())
        elif name == "OCRQ":
            self.st["public_call_id"] = m["call_id"]
            self.send_ctrl(P.ocrp(PAC_CALL_ID, m["call_id"]))
            self.next_lcp = time.monotonic()
        elif name == "EchoRQ":
            self.send_ctrl(P.echorp(m["ident"]))
        elif name == "StopCCRQ":
            self.send_ctrl(P.stopccrp())

    def on_command(self, word):
        self.st["command"] = word
        public = self.st["public_call_id"]
        if word == "ccrq":
            self.send_ctrl(P.ccrq(public))
        elif word == "cdn":
            self.send_ctrl(P.cdn(public, result=CDN_ADMIN_SHUTDOWN))
        else:
            self.st["errors"].append("unknown command %r" % word)

    def on_gre(self, pkt):
        src, _dst, proto, l4 = P.strip_ipv4(pkt)
        g = P.gre_parse(l4) if proto == 47 and src == PUBLIC else None
        if g is None or g["version"] != 1 or self.st["public_call_id"] is None:
            return
        self.st["gre_in"] += 1
        if g["call_id"] not in self.st["gre_in_keys"]:
            self.st["gre_in_keys"].append(g["call_id"])
        self.next_lcp = None  # the client's GRE socket is up
        if g["seq"] is not None:
            self.last_rx_seq = g["seq"]
        if g["payload"]:
            self.send_gre(g["payload"])  # back with the public Call ID
            self.st["gre_echoed"] += 1

    def run(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((SERVER, P.PPTP_PORT))
        ls.listen(1)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
        self.st["listening"] = True
        self.save()
        lines = b""
        watched = [ls, self.raw, sys.stdin.fileno()]
        while True:
            timeout = None if self.next_lcp is None else max(0.0, self.next_lcp - time.monotonic())
            readable = select.select(watched, [], [], timeout)[0]
            if self.next_lcp is not None and time.monotonic() >= self.next_lcp:
                self.send_gre(LCP_CONFREQ)
                self.st["lcp_sent"] += 1
                self.next_lcp = time.monotonic() + self.LCP_RESEND
            for r in readable:
                if r is ls:
                    self.conn, _ = ls.accept()
                    self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.st["connected"] = True
                    watched[0] = self.conn
                    ls.close()
                elif r is self.raw:
                    self.on_gre(self.raw.recv(65536))
                elif r is self.conn:
                    try:
                        data = self.conn.recv(65536)
                    except ConnectionResetError:
                        data, self.st["closed"] = b"", "reset"
                    for m in self.stream.feed(data):
                        self.on_message(m)
                    if not data:
                        self.st["closed"] = self.st["closed"] or "eof"
                        self.next_lcp = None
                        watched.remove(self.conn)
                        self.conn.close()
                else:
                    chunk = os.read(r, 4096)
                    if not chunk:
                        return 0
                    lines += chunk
                    while b"\n" in lines:
                        word, lines = lines.split(b"\n", 1)
                        self.on_command(word.decode().strip())
            self.save()


class PacProcess:
    """The fake PAC in the server namespace, seen from the test."""

    def __init__(self, lab):
        self.lab = lab
        self.path = os.path.join(lab.tmpdir, "pac.json")
        self.log_path = os.path.join(lab.tmpdir, "pac.log")
        with open(self.log_path, "wb") as out:
            self.proc = lab.spawn("server", [netns.PYTHON, os.path.abspath(__file__), "pac", self.path],
                                  stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)

    def state(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def wait(self, pred, timeout):
        return wait_until(lambda: pred(self.state()), timeout, step=0.02)

    def command(self, word):
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def received_after_command(self, name=None):
        return [m for m in self.state().get("received", [])
                if m["after_command"] and (name is None or m["name"] == name)]


# ------------------------------------------------------------------ tests

def counters_of(stats):
    return {key: stats[part][key] for part, key in UNCHANGED}


def call_ids_at_client(pcap, name, src):
    """Call IDs of the control messages ``name`` from ``src`` in a capture."""
    return [m["call_id"] for s, _d, m in control_messages(pcap) if m["name"] == name and s == src]


class PeerQuirks(unittest.TestCase):

    def call_up(self, lab):
        """Fake PAC, capture at client 1, real client with an echoing call.
        Returns (pac, client, session, counters, capture, pcap path)."""
        pac = PacProcess(lab)
        self.assertTrue(pac.wait(lambda st: st.get("listening"), 5), pac.output())
        cap, pcap = lab.capture("client1", bpf=["tcp", "port", "1723"])
        client = RealClient(lab, 1)
        client.start()
        self.assertTrue(client.wait_server_frame(8), "no LCP frame from the PAC: %s\n%s"
                        % (pac.state(), client.stderr_tail()))
        self.assertEqual(client.exchange(3), 3, pac.state())
        sessions = lab.agent.sessions()
        self.assertEqual(len(sessions), 1, sessions)
        s = sessions[0]
        log("session: inside Call ID %d, public %d, outside %d; the PAC sent %d LCP frame(s)" % (
            s["inside_call_id"], s["public_call_id"], s["outside_call_id"], pac.state()["lcp_sent"]))
        self.assertEqual(s["state"], "established", s)
        self.assertEqual(s["inside_address"], CLIENT)
        self.assertNotEqual(s["inside_call_id"], s["public_call_id"], "random allocation rewrites the Call ID")
        st = pac.state()
        self.assertEqual(st["public_call_id"], s["public_call_id"], "the PAC sees the public Call ID")
        self.assertEqual(st["gre_in_keys"], [PAC_CALL_ID], "the client's GRE names the PAC's own Call ID")
        self.assertEqual(s["outside_call_id"], PAC_CALL_ID)
        return pac, client, s, counters_of(lab.agent.stats()), cap, pcap

    def assert_cleared_by_notify(self, lab, s, before):
        """The agent removed the call on the Call-Disconnect-Notify (not on
        the connection's end), and counted nothing as a violation."""
        self.assertTrue(wait_until(lambda: not lab.agent.sessions(), 5), lab.agent.sessions())
        teardown = [line for line in lab.agent.output().splitlines() if "Teardown PPTP call" in line]
        log("agent:", teardown[0].split(": ", 1)[-1] if teardown else None)
        self.assertEqual(len(teardown), 1, teardown)
        self.assertIn("inside %s call-id %d public %s call-id %d" % (
            CLIENT, s["inside_call_id"], PUBLIC, s["public_call_id"]), teardown[0])
        self.assertTrue(teardown[0].endswith("reason call-disconnect-notify"), teardown[0])
        self.assertEqual(counters_of(lab.agent.stats()), before)

    def test_pac_clear_request_and_pptp_linux_notify(self):
        """(a) PAC -> CCRQ(public); pptp-linux answers CDN(its own Call ID)."""
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            pac, client, s, before, cap, pcap = self.call_up(lab)
            pac.command("ccrq")
            self.assertTrue(pac.wait(lambda st: any(m["name"] == "CDN" and m["after_command"]
                                                    for m in st["received"]), 5),
                            "no Call-Disconnect-Notify reached the PAC: %s" % (pac.state(),))
            self.assertEqual([m["call_id"] for m in pac.received_after_command("CDN")],
                             [s["public_call_id"]], "the CDN reaches the PAC with the public Call ID")
            self.assert_cleared_by_notify(lab, s, before)
            # pptp-linux ends its call: pptp exits, the connection closes.
            self.assertTrue(wait_until(lambda: client.eof, 5), "pptp still runs: %s" % client.stderr_tail())
            self.assertTrue(pac.wait(lambda st: st["closed"], 5), pac.state())
            result = client.stop()
            lab.stop_process(cap)
            self.assertEqual(call_ids_at_client(pcap, "CCRQ", SERVER), [s["inside_call_id"]],
                             "the CCRQ reaches the client with its inside Call ID")
            self.assertEqual(call_ids_at_client(pcap, "CDN", CLIENT), [s["inside_call_id"]],
                             "pptp-linux repeats the Call ID it got: its own, the inside one")
            self.assertEqual(counters_of(lab.agent.stats()), before, "nothing later counted either")
            log("after the CCRQ: the PAC got %s, then the connection closed (%s); pptp %r, "
                "exited before stop(): %s" % ([m["name"] for m in pac.received_after_command()],
                                               pac.state()["closed"], result, result.exited_early))

    def test_accel_ppp_style_disconnect_notify(self):
        """(b) PAC -> CDN(public), the PNS's Call ID as accel-ppp sends it."""
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            pac, client, s, before, cap, pcap = self.call_up(lab)
            pac.command("cdn")
            self.assert_cleared_by_notify(lab, s, before)
            # pptp-linux 1.10 looks a CDN's Call ID up among its peers' Call
            # IDs (RFC 2637), so it takes this one for no call of its own,
            # as it would without NAT: its call stays up. Its GRE now
            # belongs to no call at the agent and goes no further.
            dropped = lab.agent.stats()["dropped"]["gre_no_matching_call"]
            gre_in = pac.state()["gre_in"]
            client.exchange(2, timeout=0)
            self.assertTrue(wait_until(lambda: lab.agent.stats()["dropped"]["gre_no_matching_call"]
                                       >= dropped + 2, 5), lab.agent.stats()["dropped"])
            self.assertEqual(pac.state()["gre_in"], gre_in, "GRE of the ended call reached the PAC")
            self.assertFalse(client.eof, "pptp exited on the CDN")
            # Stopped, pptp clears the call it still has: a CCRQ naming its
            # inside Call ID, which must not reach the PAC as it is.
            result = client.stop()
            self.assertFalse(result.exited_early, result)
            self.assertTrue(pac.wait(lambda st: st["closed"], 5), pac.state())
            lab.stop_process(cap)
            self.assertEqual(call_ids_at_client(pcap, "CDN", SERVER), [s["inside_call_id"]],
                             "the CDN reaches the client with its inside Call ID")
            self.assertEqual(call_ids_at_client(pcap, "CCRQ", CLIENT), [s["inside_call_id"]])
            late = pac.received_after_command("CCRQ")
            self.assertEqual(len(late), 1, pac.state())
            self.assertEqual(late[0]["call_id"], s["public_call_id"], "the late CCRQ is translated")
            after = counters_of(lab.agent.stats())
            for key in ("control_connections_reset", "control_wrong_sender", "control_out_of_state",
                        "control_unknown_call_id"):
                self.assertEqual(after[key], before[key], key)
            log("after the CDN: pptp kept its call; stopped, it sent %s (at the PAC: Call ID %d; "
                "control_unknown_call_id +%d), then closed (%s); pptp %r" % (
                    [m["name"] for m in pac.received_after_command()], late[0]["call_id"],
                    after["control_unknown_call_id"] - before["control_unknown_call_id"],
                    pac.state()["closed"], result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["pac"]:
        sys.exit(FakePac(sys.argv[2]).run())
    run_tests()
