#!/usr/bin/python3
"""Baseline proof of the namespace lab (run as root).

(a) mode "plain": three real pptp clients through one MASQUERADE address to
    pptpd: not all of them get their frames back (in fact none does: the
    server's first GRE packet meets no conntrack mapping, the router answers
    ICMP protocol-unreachable and pptpctrl drops the call).
(b) mode "kernel-helper": three real clients at once each get 5 of 5 frames
    echoed, keep their calls open, and get 5 of 5 again later.
(c) mode "kernel-helper": two synthetic clients with the same Call ID (7) at
    once: both get 5 of 5 (the helper remaps the Call IDs).
Plus lab self-checks: nothing leaks into the root namespace, the pppd
stand-in's frame is valid, and SIGTERM to a process holding a Lab removes
its namespaces.

    sudo /usr/bin/python3 tests/integration/test_lab_baseline.py [-v]
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.ppp import LCP_CONFREQ, HdlcDecoder, hdlc_encode  # noqa: E402
from lab.pptp_client import RealClient, run_real_clients  # noqa: E402
from lab.synthetic_pns import collect_synthetic, spawn_synthetic  # noqa: E402
from lab.runner import run_tests  # noqa: E402


def log(*a):
    print("    [lab]", *a, flush=True)


def root_links():
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                          text=True).stdout.count("\n")


def pptp_run_dir_entries():
    try:
        return os.listdir(netns.PPTP_RUN_DIR)
    except FileNotFoundError:
        return []


class LabSelfTest(unittest.TestCase):

    def test_standin_frame(self):
        with open(netns.STANDIN) as f:
            script = f.read()
        m = re.search(r"printf '([^']*)'", script)
        raw = bytes(int(o, 8) for o in re.findall(r"\\(\d{3})", m.group(1)))
        self.assertEqual(raw, hdlc_encode(LCP_CONFREQ))
        self.assertEqual(HdlcDecoder().feed(raw), [LCP_CONFREQ])
        self.assertTrue(os.access(netns.STANDIN, os.X_OK))

    def test_sigterm_cleans_up(self):
        code = ("import sys, time; sys.path.insert(0, %r)\n"
                "from lab.netns import Lab\n"
                "with Lab(clients=1) as lab:\n"
                "    lab.start_pptpd()\n"
                "    print(' '.join(lab.namespaces.values()), flush=True)\n"
                "    time.sleep(60)\n" % TESTS)
        p = subprocess.Popen([netns.PYTHON, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            names = netns.read_line(p.stdout, 30).decode().split()
            if not names:
                p.terminate()  # the lab cleans up on SIGTERM
                self.fail("no namespaces named: %s" % p.communicate(timeout=10)[1])
            self.assertEqual(len(names), 3, names)
            self.assertTrue(set(names) <= set(netns.list_netns()))
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        self.assertNotEqual(p.returncode, 0)
        left = set(names) & set(netns.list_netns())
        self.assertEqual(left, set(), "namespaces left after SIGTERM")


class PlainMasquerade(unittest.TestCase):

    def test_three_real_clients_fail(self):
        links = root_links()
        with Lab(mode="plain") as lab:
            self.assertEqual(root_links(), links,
                             "interfaces leaked into the root namespace")
            lab.start_pptpd()
            t = time.monotonic()
            res = run_real_clients(lab, [1, 2, 3], frames=5, timeout=6.0,
                                   connect_timeout=3.0)
            log("plain: %.1fs" % (time.monotonic() - t))
            for r in res:
                log(r, "exited_early=%s" % r.exited_early)
            self.assertFalse(all(r.ok for r in res),
                             "all three worked through plain MASQUERADE?")
            self.assertEqual(sum(r.frames_echoed for r in res), 0)
        self.assertEqual(set(lab.namespaces.values()) &
                         set(netns.list_netns()), set())


class KernelHelper(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(mode="kernel-helper").__enter__()
        try:
            cls.lab.start_pptpd()
        except BaseException:
            cls.lab.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.lab.close()
        left = set(cls.lab.namespaces.values()) & set(netns.list_netns())
        assert not left, left

    def test_1_three_real_clients_hold_calls(self):
        lab = self.lab
        t = time.monotonic()
        clients = [RealClient(lab, i) for i in (1, 2, 3)]
        try:
            for c in clients:
                c.start()
            for c in clients:
                self.assertTrue(c.wait_server_frame(8.0),
                                "client %d: no frame from server" % c.index)
            # each client has its own private /var/run/pptp
            self.assertEqual(pptp_run_dir_entries(), [])
            first = [c.exchange(5, timeout=3.0) for c in clients]
            time.sleep(1.0)  # calls stay up
            second = [c.exchange(5, timeout=3.0) for c in clients]
            gre = [ln for ln in lab.conntrack().splitlines()
                   if ln.startswith("gre")]
        finally:
            results = [c.stop() for c in clients]
        log("kernel-helper real: %.1fs" % (time.monotonic() - t))
        for r in results:
            log(r)
        for ln in gre:
            log(ln)
        self.assertEqual(first, [5, 5, 5])
        self.assertEqual(second, [5, 5, 5])
        for r in results:
            self.assertTrue(r.ok and r.frames_echoed == 10, r)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(gre), 3)

    def test_2_two_synthetic_same_call_id(self):
        lab = self.lab
        t = time.monotonic()
        procs = [spawn_synthetic(lab, i, call_id=7, frames=5) for i in (1, 2)]
        res = [collect_synthetic(lab, p, timeout=30) for p in procs]
        gre = [ln for ln in lab.conntrack().splitlines()
               if ln.startswith("gre") and "srckey=0x7 " in ln]
        log("kernel-helper synthetic: %.1fs" % (time.monotonic() - t))
        for r in res:
            log(json.dumps({k: r.get(k) for k in (
                "call_id", "peer_call_id", "ocrp_peer_call_id", "local",
                "frames_sent", "frames_echoed", "lcp_from_server",
                "ctrl_rx", "closed_after_ccrq", "error", "returncode")}))
        for ln in gre:
            log(ln)
        for r in res:
            self.assertEqual(r["returncode"], 0, r)
            self.assertEqual(r["ocrp_result"], 1)
            self.assertEqual(r["ocrp_peer_call_id"], 7)  # translated back
            self.assertEqual(r["frames_echoed"], 5)
            self.assertTrue(r["lcp_from_server"])
        # Two conntrack GRE entries for inside call ID 7, with distinct
        # outside (translated) call IDs.
        self.assertEqual(len(gre), 2, gre)
        outside = {re.search(r"dstkey=(0x[0-9a-f]+)", ln).group(1)
                   for ln in gre}
        self.assertEqual(len(outside), 2, gre)


if __name__ == "__main__":
    run_tests()
