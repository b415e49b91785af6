#!/usr/bin/python3
"""pptp-fixupd with real peers (run as root).

Router namespace: the user's own FORWARD policy DROP + MASQUERADE, the
project's rules (pptp-fixup-rules) and pptp-fixupd; no kernel PPTP helper.

- three real `pptp` clients to one real `pptpd` at once, with random public
  Call IDs (so every client's Call ID is rewritten): every frame echoed,
  calls held open and used again; the agent lists exactly those calls, the
  server sees only their public Call IDs, in the control messages and in
  GRE, and the clients see only their own;
- two synthetic clients choosing the same Call ID both work, with distinct
  public Call IDs;
- GRE for no call, or from the wrong outside peer, never reaches a client;
- with the agent stopped (fail-closed queue) a new client fails and nothing
  of it reaches the server;
- LeakSanitizer reports a leak of the daemon, as root and under --user.
"""

import os
import re
import subprocess
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab.agent import agent_hooks, bin_dir  # noqa: E402
from lab.netns import Lab, LabError  # noqa: E402
from lab.pcap import control_messages, ipv4_packets  # noqa: E402
from lab.pptp_client import RealClient, run_real_client  # noqa: E402
from lab.synthetic_pns import collect_synthetic, spawn_synthetic  # noqa: E402
from lab.runner import run_tests  # noqa: E402


def log(*a):
    print("    [agent-test]", *a, flush=True)


def gre_keys_in_pcap(lab, path, src):
    """Call IDs (GRE keys) of GRE packets from `src` in a capture; tcpdump
    decodes enhanced GRE as "GREv1, call N"."""
    text = lab.read_pcap(path, ["ip", "proto", "47", "and", "src", src])
    return {int(m) for m in re.findall(r"GREv1, call (\d+)", text)}


class AgentWithRealPeers(unittest.TestCase):

    def test_three_real_clients_through_one_address(self):
        with Lab(clients=3, mode="agent", **agent_hooks()) as lab:
            rules = lab.router_exec(["iptables-save"]).stdout
            self.assertNotIn("--helper", rules, "no kernel helper may be attached")
            self.assertIn("PPTP_FIXUP", rules)
            lab.start_pptpd()
            cap, pcap = lab.capture("server", bpf=["ip", "proto", "47", "or", "tcp", "port", "1723"])
            ccap, cpcap = lab.capture("client1", bpf=["ip", "proto", "47", "or", "tcp", "port", "1723"])
            clients = [RealClient(lab, i) for i in (1, 2, 3)]
            try:
                for c in clients:
                    c.start()
                for c in clients:
                    self.assertTrue(c.wait_server_frame(8), "client %d got no frame from the server" % c.index)
                for c in clients:
                    self.assertEqual(c.exchange(5), 5, "client %d" % c.index)

                sessions = lab.agent.sessions()
                log("sessions:", [(s["inside_address"], s["inside_call_id"], s["public_call_id"],
                                   s["outside_call_id"]) for s in sessions])
                self.assertEqual(sorted(s["inside_address"] for s in sessions),
                                 ["198.18.0.11", "198.18.0.12", "198.18.0.13"])
                for s in sessions:
                    self.assertEqual(s["public_address"], "203.0.113.1")
                    self.assertEqual(s["outside_address"], "203.0.113.10")
                    self.assertEqual(s["state"], "established")
                    self.assertGreaterEqual(s["packets_in"], 6)   # LCP + 5 echoes
                    self.assertGreaterEqual(s["packets_out"], 5)
                public_ids = {s["public_call_id"] for s in sessions}
                self.assertEqual(len(public_ids), 3)
                for s in sessions:
                    self.assertNotEqual(s["public_call_id"], s["inside_call_id"],
                                        "random allocation rewrites the Call ID: %s" % s)

                time.sleep(1.0)   # calls stay up
                for c in clients:
                    self.assertEqual(c.exchange(5), 5, "client %d, second round" % c.index)
            finally:
                results = [c.stop() for c in clients]
            lab.stop_process(cap)
            lab.stop_process(ccap)
            inside_ids = {s["inside_call_id"] for s in sessions}
            # The control messages at the server name only public Call IDs:
            # each client's request, and the server's replies to it.
            at_server = control_messages(pcap)
            requests = {m["call_id"] for src, _dst, m in at_server if m["name"] == "OCRQ"}
            replies = {m["peer_call_id"] for _src, dst, m in at_server if m["name"] == "OCRP"}
            log("at the server: OCRQ call ids", sorted(requests), "OCRP peer ids", sorted(replies),
                "inside ids", sorted(inside_ids))
            self.assertEqual(requests, public_ids)
            self.assertEqual(replies, public_ids)
            self.assertFalse(inside_ids & {m.get("call_id") for _s, _d, m in at_server} - public_ids,
                             "an inside Call ID leaked to the server")
            # Client 1 sees its own Call ID both in the reply and in the server's GRE.
            mine = next(s for s in sessions if s["inside_address"] == "198.18.0.11")
            at_client = control_messages(cpcap)
            self.assertEqual({m["peer_call_id"] for _s, _d, m in at_client if m["name"] == "OCRP"},
                             {mine["inside_call_id"]})
            self.assertEqual(gre_keys_in_pcap(lab, cpcap, "203.0.113.10"), {mine["inside_call_id"]})
            # The server addressed its GRE to the public Call IDs the agent reported.
            seen = gre_keys_in_pcap(lab, pcap, "203.0.113.10")
            log("GRE keys sent by the server:", sorted(seen))
            self.assertEqual(seen, public_ids)
            # And every GRE packet it received came from the public address.
            inbound = lab.read_pcap(pcap, ["ip", "proto", "47", "and", "dst", "203.0.113.10"])
            self.assertTrue(inbound.strip())
            for line in inbound.strip().splitlines():
                self.assertIn("203.0.113.1 > 203.0.113.10", line)
            for r in results:
                self.assertEqual(r.frames_echoed, 10, r)
            stats = lab.agent.stats()
            self.assertEqual(stats["counters"]["calls_built"], 3)
            self.assertEqual(stats["dropped"]["gre_no_matching_call"], 0)
            self.assertEqual(lab.agent.stop(), 0, lab.agent.output())
            log(lab.agent.output())
            self.assertIn("302018", lab.agent.output())

    def test_two_clients_with_the_same_call_id(self):
        with Lab(clients=2, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            procs = [spawn_synthetic(lab, i, call_id=7, frames=5, extra=["--hold", "1.5"]) for i in (1, 2)]
            time.sleep(1.0)
            sessions = lab.agent.sessions()
            results = [collect_synthetic(lab, p) for p in procs]
            log("synthetic:", results)
            for r in results:
                self.assertEqual(r["returncode"], 0, r)
                self.assertEqual(r["frames_echoed"], 5, r)
            self.assertEqual([s["inside_call_id"] for s in sessions], [7, 7], sessions)
            self.assertEqual(len({s["public_call_id"] for s in sessions}), 2, sessions)

    def test_unknown_gre_is_dropped_and_counted(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            client = RealClient(lab, 1)
            client.start()
            try:
                self.assertTrue(client.wait_server_frame(8))
                self.assertEqual(client.exchange(3), 3)
                live = lab.agent.sessions()[0]
                cap, pcap = lab.capture("client1", bpf=["ip", "proto", "47"])
                # From the server: GRE with Call IDs of no call.
                junk_ids = [i for i in range(1, 40) if i != live["public_call_id"]]
                send_gre(lab, "server", "203.0.113.1", junk_ids)
                time.sleep(0.3)
                self.assertEqual(client.exchange(3), 3, "the real call survives")
                lab.stop_process(cap)
                got = gre_keys_in_pcap(lab, pcap, "203.0.113.10")
                self.assertEqual(got, {live["inside_call_id"]}, "only the real call's GRE reached the client")
                stats = lab.agent.stats()
                self.assertGreaterEqual(stats["dropped"]["gre_no_matching_call"], len(junk_ids))
            finally:
                client.stop()

    def test_runs_as_a_user_with_only_cap_net_admin(self):
        with Lab(clients=1, mode="agent", **agent_hooks(extra_args=["--user", "nobody"])) as lab:
            lab.start_pptpd()
            status = dict(line.split(":", 1) for line in
                          open("/proc/%d/status" % lab.agent.proc.pid).read().splitlines() if ":" in line)
            self.assertEqual(status["Uid"].split()[0], "65534")
            cap_net_admin = "%016x" % (1 << 12)
            for field in ("CapEff", "CapPrm", "CapBnd"):
                self.assertEqual(status[field].strip(), cap_net_admin, field)
            r = run_real_client(lab, 1, frames=3)
            self.assertEqual(r.frames_echoed, 3, r)
            # The rule installer it runs still works with the one capability.
            lab.agent.ctl("fixup", "enable", "1724")
            saved = lab.router_exec(["iptables-save"]).stdout
            for port in (1723, 1724):
                for way in ("-o", "-i"):
                    self.assertIn("-A PPTP_FIXUP_CONTROL %s out0 -p tcp -m conntrack --ctorigdstport %d -j NFQUEUE"
                                  % (way, port), saved)

    def test_root_keeps_only_cap_net_admin(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            status = open("/proc/%d/status" % lab.agent.proc.pid).read()
            self.assertRegex(status, r"CapEff:\s+0000000000001000")
            self.assertRegex(status, r"CapBnd:\s+0000000000001000")

    def test_follows_a_new_public_address(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            self.assertEqual(run_real_client(lab, 1, frames=2).frames_echoed, 2)
            # The outside address changes, as with DHCP; MASQUERADE follows it,
            # and the agent takes each new connection's address from conntrack.
            lab.router_exec(["ip", "addr", "flush", "dev", "out0"])
            lab.router_exec(["ip", "addr", "add", "203.0.113.2/24", "dev", "out0"])
            client = RealClient(lab, 1)
            client.start()
            try:
                self.assertTrue(client.wait_server_frame(8), lab.agent.output())
                self.assertEqual(client.exchange(3), 3)
                self.assertEqual([s["public_address"] for s in lab.agent.sessions()], ["203.0.113.2"])
            finally:
                client.stop()
            self.assertEqual(lab.agent.stats()["counters"]["calls_built"], 2)

    def test_new_client_fails_while_agent_is_stopped(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            self.assertEqual(lab.agent.stop(), 0)
            cap, pcap = lab.capture("server")
            r = run_real_client(lab, 1, frames=3, timeout=4)
            lab.stop_process(cap)
            log("without agent:", r)
            self.assertEqual(r.frames_echoed, 0)
            # Fail-closed, not open: nothing of the client's got out, neither
            # with its inside address nor translated.
            arrived = [(p["src"], p["dst"], p["proto"]) for p in ipv4_packets(pcap)
                       if p["src"] in ("198.18.0.11", "203.0.113.1")]
            self.assertEqual(arrived, [], "packets of the client reached the server")

    def test_leaks_are_reported_as_root_and_under_a_user(self):
        """The lab's teardown fails on a LeakSanitizer report, also from a
        daemon that left root (--user): the sanitizer build leaks on purpose
        when PPTP_FIXUP_SELFTEST_LEAK is set."""
        if "libasan" not in lab_ldd(os.path.join(bin_dir(), "pptp-fixupd")):
            self.skipTest("not a sanitizer build")
        for extra in ([], ["--user", "nobody"]):
            with self.subTest(args=extra):
                hooks = agent_hooks(extra_args=extra, env={"PPTP_FIXUP_SELFTEST_LEAK": "1"})
                with self.assertRaisesRegex(LabError, "LeakSanitizer: detected memory leaks"):
                    with Lab(clients=1, mode="agent", **hooks):
                        pass


def lab_ldd(path):
    return subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout


def send_gre(lab, role, dst, call_ids):
    """Sends one enhanced GRE packet per Call ID from a namespace."""
    script = (
        "import socket,struct,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,47)\n"
        "for cid in map(int,sys.argv[2:]):\n"
        "    p=b'\\xff\\x03\\xc0\\x21junk'\n"
        "    s.sendto(struct.pack('!HHHHI',0x3001,0x880B,len(p),cid,1)+p,(sys.argv[1],0))\n")
    lab.exec(role, ["/usr/bin/python3", "-c", script, dst] + [str(c) for c in call_ids])


if __name__ == "__main__":
    run_tests()
