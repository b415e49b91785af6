#!/usr/bin/python3
"""pptp-fixupd and pptp-fixup-rules on bad input (run as root): one clear line
on stderr and a non-zero exit for a bad option, a bad config line, a missing
interface, a queue already bound, a control socket in use; the rule installer
is idempotent and removes only its own rules."""

import os
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab.agent import RULES_FILE, RULES_TOOL, bin_dir  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.runner import run_tests  # noqa: E402

DAEMON = os.path.join(bin_dir(), "pptp-fixupd")


class DaemonStartupErrors(unittest.TestCase):

    def run_daemon(self, lab, *args):
        r = lab.router_exec([DAEMON] + list(args), check=False, timeout=20)
        return r.returncode, r.stderr.strip().splitlines()

    def assert_one_line_error(self, result, fragment):
        rc, lines = result
        self.assertNotEqual(rc, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("pptp-fixupd: "), lines)
        self.assertIn(fragment, lines[0])

    def test_startup_errors(self):
        with Lab(clients=1, mode="plain") as lab:
            sock = os.path.join(lab.tmpdir, "a.sock")
            self.assert_one_line_error(self.run_daemon(lab, "--bogus"), "unrecognised option")
            self.assert_one_line_error(self.run_daemon(lab, "--outside", "out0"), "missing --queue")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3"), "missing --outside")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3", "--outside", "nosuch0"),
                                       "no such interface: nosuch0")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3", "--outside", "out0",
                                                       "--fixup-port", "70000"), "invalid fixup-port")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3", "--outside", "out0",
                                                       "--public-address", "1.2.3"), "invalid --public-address")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3", "--outside", "out0",
                                                       "--call-id-range", "9-2"), "minimum above maximum")
            conf = os.path.join(lab.tmpdir, "bad.conf")
            with open(conf, "w") as f:
                f.write("queue = 3\noutside = out0\nno-such-key = 1\n")
            self.assert_one_line_error(self.run_daemon(lab, "--config", conf), "config file " + conf)

            first = lab.spawn("router", [DAEMON, "--queue", "3", "--outside", "out0", "--control-socket", sock],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(os.path.exists(sock))
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "3", "--outside", "out0",
                                                       "--control-socket", os.path.join(lab.tmpdir, "b.sock")),
                                       "already bound by another process")
            self.assert_one_line_error(self.run_daemon(lab, "--queue", "4", "--outside", "out0",
                                                       "--control-socket", sock), "in use by another process")
            self.assertIsNone(first.poll(), "the first daemon keeps running")
            self.assertEqual(lab.stop_process(first, timeout=10), 0)
            self.assertFalse(os.path.exists(sock), "socket removed on clean shutdown")

    def test_help_is_complete(self):
        out = subprocess.run([DAEMON, "--help"], capture_output=True, text=True, check=True).stdout
        for word in ("--queue", "--outside", "--public-address", "--fixup-port", "--control-socket",
                     "--config", "--call-timeout", "FAILURE MODE", "EXIT STATUS", "SIGNALS"):
            self.assertIn(word, out)


class RuleInstaller(unittest.TestCase):

    def rules(self, lab):
        return [l for l in lab.router_exec(["iptables-save"]).stdout.splitlines()
                if l.startswith("-A")]

    def test_idempotent_and_leaves_user_rules_alone(self):
        with Lab(clients=1, mode="plain") as lab:
            user_rules = self.rules(lab)
            argv = [RULES_TOOL, "install", "--outside", "out0", "--queue", "5", "--rules", RULES_FILE]
            lab.router_exec(argv)
            once = self.rules(lab)
            lab.router_exec(argv)
            self.assertEqual(self.rules(lab), once, "a second install changes nothing")
            for rule in user_rules:
                self.assertIn(rule, once)
            jumps = [r for r in once if "-j PPTP_FIXUP" in r]
            self.assertEqual(len(jumps), 5, jumps)
            lab.router_exec(argv[:-2] + ["--ports", "1723,1724", "--rules", RULES_FILE])
            self.assertTrue(any("1723,1724" in r for r in self.rules(lab)))
            lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE])
            self.assertEqual(self.rules(lab), user_rules)
            lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE])
            bad = lab.router_exec([RULES_TOOL, "install", "--outside", "out0", "--queue", "x",
                                   "--rules", RULES_FILE], check=False)
            self.assertEqual(bad.returncode, 1)
            self.assertIn("--queue", bad.stderr)
            self.assertEqual(self.rules(lab), user_rules)


if __name__ == "__main__":
    run_tests()
