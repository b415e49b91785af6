#!/usr/bin/python3
"""pptp-fixupctl and the control API against a running pptp-fixupd with real
peers (run as root): sessions and their public Call IDs as the server sees
them, connections, stats and metrics moving with traffic, fixup disable and
enable on the same daemon process, a SIGHUP reload that keeps live calls,
clear session, and bad requests that get a clear error and change nothing."""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab.agent import agent_hooks, bin_dir  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.pptp_client import RealClient, run_real_client  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402
from test_agent_real_peers import send_gre  # noqa: E402


def log(*a):
    print("    [control-test]", *a, flush=True)


def control_rule_ports(lab):
    """The ports whose connections PPTP_FIXUP_CONTROL queues, each in both
    directions (out to and in from out0): the original destination port of
    the connection, one rule per port and direction."""
    rules = lab.router_exec(["iptables-save", "-t", "mangle"]).stdout
    ways = {}
    for way, port in re.findall(r"-A PPTP_FIXUP_CONTROL (-[io] out0) -p tcp -m conntrack "
                                r"--ctorigdstport (\d+) -j NFQUEUE", rules):
        ways.setdefault(int(port), set()).add(way)
    return {port for port, w in ways.items() if w == {"-o out0", "-i out0"}}


def server_gre_keys(lab, pcap):
    text = lab.read_pcap(pcap, ["ip", "proto", "47", "and", "src", "203.0.113.10"])
    return {int(k) for k in re.findall(r"GREv1, call (\d+)", text)}


class ControlApi(unittest.TestCase):

    def test_sessions_connections_stats_and_metrics(self):
        with Lab(clients=3, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            cap, pcap = lab.capture("server", bpf=["ip", "proto", "47"])
            clients = [RealClient(lab, i) for i in (1, 2, 3)]
            try:
                before = lab.agent.stats()["counters"]
                for c in clients:
                    c.start()
                for c in clients:
                    self.assertTrue(c.wait_server_frame(8))
                    self.assertEqual(c.exchange(4), 4)
                sessions = lab.agent.sessions()
                self.assertEqual(sorted(s["inside_address"] for s in sessions),
                                 ["198.18.0.11", "198.18.0.12", "198.18.0.13"])
                for key in ("inside_address", "outside_address", "public_address", "inside_call_id",
                            "public_call_id", "outside_call_id", "state", "packets_in", "packets_out",
                            "bytes_in", "bytes_out", "age_seconds", "idle_seconds"):
                    for s in sessions:
                        self.assertIn(key, s)
                only = lab.agent.sessions("--inside", "198.18.0.12")
                self.assertEqual([s["inside_address"] for s in only], ["198.18.0.12"])
                self.assertEqual(lab.agent.sessions("--outside", "203.0.113.99"), [])
                table = lab.agent.ctl("sessions")
                self.assertIn("3 session(s)", table)
                conns = lab.agent.ctl_json("connections")["connections"]
                self.assertEqual(len(conns), 3)
                self.assertTrue(all(c["calls"] == 1 and c["state"] == "established" for c in conns))

                stats = lab.agent.stats()
                after = stats["counters"]
                self.assertEqual(after["calls_built"] - before["calls_built"], 3)
                if lab.agent.gre_offload == "off":
                    self.assertGreater(after["gre_inbound"], before["gre_inbound"])
                    self.assertGreater(after["gre_outbound"], before["gre_outbound"])
                else:
                    # The kernel translated the GRE; its counters are the sessions'.
                    self.assertEqual(stats["offload"]["calls"], 3)
                    self.assertTrue(all(s["offloaded"] for s in sessions))
                self.assertTrue(all(s["packets_in"] > 0 and s["packets_out"] > 0 for s in sessions), sessions)
                self.assertIn("kernel", stats["queue"])
                self.assertEqual(stats["queue"]["kernel"]["dropped"], 0)
                metrics = lab.agent.ctl("metrics")
                self.assertRegex(metrics, r'pptp_fixup_events_total\{event="calls_built"\} 3\n')
                self.assertIn("# TYPE pptp_fixup_live_calls gauge\npptp_fixup_live_calls 3\n", metrics)
                self.assertIn('pptp_fixup_dropped_total{reason="gre_no_matching_call"}', metrics)
                self.assertIn("pptp_fixup_kernel_queue_dropped", metrics)
                for line in metrics.splitlines():
                    self.assertRegex(line, r'^(# (HELP|TYPE) .*|[a-z_]+(\{[a-z]+="[a-z0-9_]+"\})? \d+)$')
            finally:
                for c in clients:
                    c.stop()
            lab.stop_process(cap)
            self.assertEqual(server_gre_keys(lab, pcap), {s["public_call_id"] for s in sessions})

    def test_events_follow_calls_drops_and_fixup_changes(self):
        """pptp-fixupctl --json events: a call's build and teardown (with its
        Call IDs), a drop by reason and a fixup change arrive as they happen,
        one JSON object per line; a second follower sees the same."""
        with Lab(clients=1, mode="agent", **agent_hooks(ports=(1723, 1724))) as lab:
            lab.start_pptpd()
            ctl = [os.path.join(bin_dir(), "pptp-fixupctl"), "--socket", lab.agent.socket]
            followers = [lab.spawn("router", ctl + ["--json", "events"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL) for _ in range(2)]
            lines = [[], []]
            partial = [b"", b""]

            def read_available(i):
                fd = followers[i].stdout.fileno()
                while select.select([fd], [], [], 0.05)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    partial[i] += chunk
                *complete, partial[i] = partial[i].split(b"\n")
                lines[i] += [json.loads(line) for line in complete if line]

            def seen(i, kind):
                read_available(i)
                return [e for e in lines[i] if e.get("event") == kind]

            time.sleep(0.3)   # both subscribed before anything happens
            r = run_real_client(lab, 1, frames=2)
            self.assertEqual(r.frames_echoed, 2, r)
            for i in (0, 1):
                self.assertTrue(wait_until(lambda: seen(i, "call-torn-down"), 5), lines[i])
                built = seen(i, "call-built")
                torn = seen(i, "call-torn-down")
                self.assertEqual(len(built), 1, lines[i])
                self.assertEqual(built[0]["session"]["inside_address"], "198.18.0.11")
                self.assertEqual(torn[0]["session"]["public_call_id"], built[0]["session"]["public_call_id"])
                self.assertTrue(torn[0]["reason"])
                self.assertRegex(built[0]["time"], r"^\d{4}-\d\d-\d\dT")
            send_gre(lab, "server", "203.0.113.1", [4242])
            lab.agent.ctl("fixup", "disable", "1724")
            for i in (0, 1):
                self.assertTrue(wait_until(lambda: seen(i, "drop") and seen(i, "fixup"), 5), lines[i])
                self.assertEqual(seen(i, "drop")[0]["reason"], "gre_no_matching_call")
                self.assertEqual(seen(i, "fixup")[0], dict(seen(i, "fixup")[0], port=1724, enabled=False))
            for p in followers:
                lab.stop_process(p)

    def test_metrics_file_is_rewritten_whole(self):
        """--metrics-file: the metrics text appears at start and is rewritten
        every --metrics-interval, by rename (no temporary file left, never
        half a file), with the live call in it."""
        d = tempfile.mkdtemp(prefix="pptp-fixup-metrics-")
        path = os.path.join(d, "pptp_fixup.prom")
        try:
            hooks = agent_hooks(extra_args=["--metrics-file", path, "--metrics-interval", "1"])
            with Lab(clients=1, mode="agent", **hooks) as lab:
                self.assertTrue(wait_until(lambda: os.path.exists(path), 3), lab.agent.output())
                lab.start_pptpd()
                client = RealClient(lab, 1)
                client.start()
                try:
                    self.assertTrue(client.wait_server_frame(8))
                    self.assertTrue(wait_until(
                        lambda: "pptp_fixup_live_calls 1\n" in open(path).read(), 4), open(path).read())
                finally:
                    client.stop()
                text = open(path).read()
                self.assertIn("# TYPE pptp_fixup_events_total counter", text)
                self.assertTrue(text.endswith("\n"))
                self.assertEqual(os.listdir(d), ["pptp_fixup.prom"])
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_fixup_disable_and_enable_on_the_same_daemon(self):
        with Lab(clients=2, mode="agent", **agent_hooks(ports=(1723, 1724))) as lab:
            lab.start_pptpd()
            pid = lab.agent.proc.pid
            self.assertEqual(lab.agent.ctl_json("fixup", "list")["fixup_ports"], [1723, 1724])
            self.assertEqual(control_rule_ports(lab), {1723, 1724})
            held = RealClient(lab, 1)
            held.start()
            try:
                self.assertTrue(held.wait_server_frame(8))
                self.assertEqual(held.exchange(2), 2)
                lab.agent.ctl("fixup", "disable", "1723")
                self.assertEqual(lab.agent.ctl_json("fixup", "list")["fixup_ports"], [1724])
                # Exactly that port's rules went; the other port's stayed.
                self.assertEqual(control_rule_ports(lab), {1724})
                self.assertEqual(lab.agent.sessions(), [], "calls on a disabled port are torn down")
                self.assertIn("reason fixup-disabled", lab.agent.output())
                r = run_real_client(lab, 2, frames=3, timeout=4)
                log("with the fixup disabled:", r)
                self.assertEqual(r.frames_echoed, 0)
            finally:
                held.stop()
            lab.agent.ctl("fixup", "enable", "1723")
            self.assertEqual(lab.agent.ctl_json("fixup", "list")["fixup_ports"], [1723, 1724])
            self.assertEqual(control_rule_ports(lab), {1723, 1724})
            r = run_real_client(lab, 2, frames=3)
            log("enabled again:", r)
            self.assertEqual(r.frames_echoed, 3)
            self.assertEqual(lab.agent.proc.pid, pid)
            self.assertIsNone(lab.agent.proc.poll())
            self.assertIn("500001", lab.agent.output())
            # With no port left, every rule goes.
            lab.agent.ctl("fixup", "disable", "1723")
            lab.agent.ctl("fixup", "disable", "1724")
            self.assertEqual(control_rule_ports(lab), set())
            self.assertNotIn("NFQUEUE", lab.router_exec(["iptables-save"]).stdout)

    def test_reload_keeps_live_calls(self):
        config = {"queue": 7, "outside": "out0", "fixup-port": 1723, "call-timeout": 600, "max-calls": 100}
        with Lab(clients=2, mode="agent", **agent_hooks(config=config)) as lab:
            lab.start_pptpd()
            limits = lambda: lab.agent.stats()["limits"]  # noqa: E731
            self.assertEqual((limits()["call_timeout_seconds"], limits()["max_calls"]), (600, 100))
            client = RealClient(lab, 1)
            client.start()
            try:
                self.assertTrue(client.wait_server_frame(8))
                self.assertEqual(client.exchange(3), 3)
                before = lab.agent.sessions()
                self.assertEqual(len(before), 1)
                lab.agent.reload(dict(config, **{"fixup-port": [1723, 1724], "call-timeout": 3,
                                                 "max-calls": 1}))
                self.assertEqual(lab.agent.ctl_json("fixup", "list")["fixup_ports"], [1723, 1724])
                self.assertEqual(control_rule_ports(lab), {1723, 1724})
                self.assertEqual((limits()["call_timeout_seconds"], limits()["max_calls"]), (3, 1))
                after = lab.agent.sessions()
                self.assertEqual([s["id"] for s in after], [s["id"] for s in before])
                self.assertEqual(client.exchange(3), 3, "the call survives the reload")
                # The new limit holds: a second call is refused while the first lives.
                refused_before = lab.agent.stats()["dropped"]["call_limit"]
                r = run_real_client(lab, 2, frames=2, timeout=4)
                self.assertEqual(r.frames_echoed, 0, r)
                self.assertEqual(lab.agent.stats()["dropped"]["call_limit"], refused_before + 1)
                # The new timeout holds: the idle call goes within seconds, not ten minutes.
                self.assertTrue(wait_until(lambda: not lab.agent.sessions(), 10), lab.agent.sessions())
                self.assertIn("reason idle-timeout", lab.agent.output())
            finally:
                client.stop()
            # A bad config line: nothing changes, the daemon keeps going.
            with open(lab.agent.config_path, "a") as f:
                f.write("call-timeout = 900\nno-such-option = 1\n")
            lab.agent.proc.send_signal(1)
            self.assertTrue(wait_until(lambda: "reload failed, nothing changed" in lab.agent.output(), 10),
                            lab.agent.output())
            self.assertIsNone(lab.agent.proc.poll())
            self.assertEqual(lab.agent.ctl_json("fixup", "list")["fixup_ports"], [1723, 1724])
            self.assertEqual(control_rule_ports(lab), {1723, 1724})
            self.assertEqual((limits()["call_timeout_seconds"], limits()["max_calls"]), (3, 1))
            # A new call works after the reloads.
            self.assertTrue(wait_until(lambda: lab.agent.stats()["live_calls"] == 0, 10))
            r = run_real_client(lab, 2, frames=3)
            self.assertEqual(r.frames_echoed, 3, r)

    def test_clear_session_and_bad_requests(self):
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            client = RealClient(lab, 1)
            client.start()
            try:
                self.assertTrue(client.wait_server_frame(8))
                self.assertEqual(client.exchange(2), 2)
                for request in (b"not json\n", b"[1,2]\n", b'{"command": 5}\n', b'{"command":"nope"}\n',
                                b'{"command":"clear","session":999999}\n', b"x" * 5000 + b"\n"):
                    reply = self.raw_request(lab, request)
                    self.assertFalse(reply["ok"], request[:40])
                    self.assertTrue(reply["error"])
                self.assertEqual(client.exchange(2), 2, "bad requests do not disturb the data path")
                sid = lab.agent.sessions()[0]["id"]
                self.assertIn("cleared 1", lab.agent.ctl("clear", "session", str(sid)))
                self.assertEqual(lab.agent.sessions(), [])
                self.assertIn("reason cleared", lab.agent.output())
                self.assertEqual(client.exchange(2, timeout=1.5), 0, "a cleared call's GRE is dropped")
            finally:
                client.stop()
            r = lab.router_exec([os.path.join(bin_dir(), "pptp-fixupctl"), "--socket", lab.agent.socket,
                                 "fixup", "enable", "70000"], check=False)
            self.assertEqual(r.returncode, 1)
            self.assertIn("invalid port", r.stderr)

    def raw_request(self, lab, payload):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(lab.agent.socket)
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return json.loads(data)


if __name__ == "__main__":
    run_tests()
