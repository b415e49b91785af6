#!/usr/bin/python3
"""pptp-fixupd and pptp-fixup-rules on bad input (run as root): one clear line
on stderr and a non-zero exit for a bad option, a bad config line, a missing
interface, a queue already bound, a control socket in use; the rule installer
is idempotent and removes only its own rules."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab.agent import RULES_FILE, RULES_TOOL, agent_hooks, bin_dir, exit_problem  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

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

            first_log = open(os.path.join(lab.tmpdir, "first.log"), "w+b")
            first = lab.spawn("router", [DAEMON, "--queue", "3", "--outside", "out0", "--control-socket", sock],
                              stdout=first_log, stderr=subprocess.STDOUT)
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
            rc = lab.stop_process(first, timeout=10)
            first_log.seek(0)
            output = first_log.read().decode(errors="replace")
            first_log.close()
            self.assertIsNone(exit_problem(rc, output), output)
            self.assertFalse(os.path.exists(sock), "socket removed on clean shutdown")

    def test_help_is_complete(self):
        out = subprocess.run([DAEMON, "--help"], capture_output=True, text=True, check=True).stdout
        for word in ("--queue", "--outside", "--public-address", "--fixup-port", "--control-socket",
                     "--config", "--call-timeout", "FAILURE MODE", "EXIT STATUS", "SIGNALS"):
            self.assertIn(word, out)


JUMP_TARGETS = {("raw", "PREROUTING"): "PPTP_FIXUP_NOTRACK", ("mangle", "PREROUTING"): "PPTP_FIXUP_IN",
                ("mangle", "FORWARD"): "PPTP_FIXUP_CONTROL", ("mangle", "POSTROUTING"): "PPTP_FIXUP_OUT",
                ("filter", "FORWARD"): "PPTP_FIXUP_FILTER"}


def ruleset(lab):
    """The whole iptables-save output without comments and counters: chains,
    policies and every rule of every table, in order."""
    out = []
    for line in lab.router_exec(["iptables-save"]).stdout.splitlines():
        if line.startswith("#"):
            continue
        out.append(re.sub(r"\s*\[\d+:\d+\]$", "", line))
    return out


def chain_rules(lines):
    """{(table, chain): [rule, ...]} of an iptables-save listing."""
    chains, table = {}, None
    for line in lines:
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            chain = line.split()[1]
            chains.setdefault((table, chain), []).append(line)
    return chains


class InstalledAnywhere(unittest.TestCase):

    def test_the_installer_next_to_the_daemon_is_found_off_path(self):
        """Daemon, installer and rule file in one directory that is not on
        PATH, no --rules-command: the daemon installs its rules with
        --manage-rules and follows fixup disable/enable with the installer
        next to its own executable."""
        prefix = tempfile.mkdtemp(prefix="pptp-fixup-prefix-")
        try:
            os.chmod(prefix, 0o755)
            for src in (os.path.join(bin_dir(), "pptp-fixupd"), RULES_TOOL, RULES_FILE):
                dst = os.path.join(prefix, os.path.basename(src))
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o755)
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            hooks = agent_hooks(daemon=os.path.join(prefix, "pptp-fixupd"), ports=(1723, 1724),
                                extra_args=["--manage-rules"], env=env)
            with Lab(clients=1, mode="agent", **hooks) as lab:
                saved = lab.router_exec(["iptables-save"]).stdout
                self.assertIn("--ctorigdstport 1723", saved)
                self.assertIn("--ctorigdstport 1724", saved)
                out = lab.agent.ctl("fixup", "disable", "1723")
                self.assertNotIn("cannot run", out)
                saved = lab.router_exec(["iptables-save"]).stdout
                self.assertNotIn("--ctorigdstport 1723", saved)
                self.assertIn("--ctorigdstport 1724", saved)
        finally:
            shutil.rmtree(prefix, ignore_errors=True)


class ManagedRulesWithHa(unittest.TestCase):

    def test_ha_sync_installs_the_rules_with_label_space(self):
        """--manage-rules with --ha-sync connlabel runs the installer with
        --conntrack-labels (the connlabel match that gives entries label
        space); without --ha-sync the rules have none."""
        for ha, expected in ((["--ha-sync", "connlabel"], True), ([], False)):
            with Lab(clients=1, mode="agent", **agent_hooks(extra_args=["--manage-rules"] + ha)) as lab:
                # The control socket is there before the rules: the start
                # line comes once they are installed.
                self.assertTrue(wait_until(lambda: " started: " in lab.agent.output(), 10), lab.agent.output())
                saved = lab.router_exec(["iptables-save", "-t", "raw"]).stdout
                self.assertEqual("-m connlabel --label" in saved, expected, saved)
                if expected:
                    self.assertEqual(lab.agent.stats()["ha"]["mode"], "connlabel")


class RuleInstaller(unittest.TestCase):

    def test_idempotent_and_leaves_user_rules_alone(self):
        with Lab(clients=1, mode="plain") as lab:
            # The user's own rules in every table the fixup uses.
            for rule in (["-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "CT", "--notrack"],
                         ["-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
                          "-j", "TCPMSS", "--clamp-mss-to-pmtu"],
                         ["-t", "mangle", "-A", "PREROUTING", "-i", "out0", "-j", "MARK", "--set-mark", "7"]):
                lab.router_exec(["iptables", "-w"] + rule)
            pristine = ruleset(lab)
            user_rules = [line for line in pristine if line.startswith("-A")]
            self.assertTrue(user_rules, "the lab has rules of its own")
            argv = [RULES_TOOL, "install", "--outside", "out0", "--queue", "5", "--rules", RULES_FILE]
            lab.router_exec(argv)
            once = ruleset(lab)
            lab.router_exec(argv)
            self.assertEqual(ruleset(lab), once, "a second install changes nothing")
            for rule in user_rules:
                self.assertIn(rule, once)
            chains = chain_rules(once)
            for (table, builtin), target in JUMP_TARGETS.items():
                rules = chains.get((table, builtin), [])
                jumps = [r for r in rules if "-j PPTP_FIXUP" in r]
                self.assertEqual(jumps, ["-A %s -j %s" % (builtin, target)], (table, builtin, rules))
                self.assertEqual(rules[0], jumps[0], "the jump stands first in %s %s" % (table, builtin))
            self.assertEqual(sum("-j PPTP_FIXUP" in r for r in once), len(JUMP_TARGETS))
            lab.router_exec(argv[:-2] + ["--ports", "1723,1724", "--rules", RULES_FILE])
            self.assertEqual([r for r in ruleset(lab) if r.startswith("-A PPTP_FIXUP_CONTROL")],
                             ["-A PPTP_FIXUP_CONTROL %s out0 -p tcp -m multiport --ports 1723,1724 "
                              "-m conntrack --ctstate INVALID -j DROP" % way for way in ("-o", "-i")] +
                             ["-A PPTP_FIXUP_CONTROL %s out0 -p tcp -m conntrack --ctorigdstport %d "
                              "-j NFQUEUE --queue-num 5" % (way, port)
                              for way in ("-o", "-i") for port in (1723, 1724)],
                             "INVALID segments of the ports dropped (no NAT, no original port), then one "
                             "rule a port and a direction, for connections opened to the port")
            lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE])
            self.assertEqual(ruleset(lab), pristine, "remove restores the rule set exactly")
            lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE])
            self.assertEqual(ruleset(lab), pristine, "a second remove changes nothing")
            bad = lab.router_exec([RULES_TOOL, "install", "--outside", "out0", "--queue", "x",
                                   "--rules", RULES_FILE], check=False)
            self.assertEqual(bad.returncode, 1)
            self.assertIn("--queue", bad.stderr)
            self.assertEqual(ruleset(lab), pristine)

    def test_jumps_go_first_above_rules_the_user_added_later(self):
        with Lab(clients=1, mode="plain") as lab:
            argv = [RULES_TOOL, "install", "--outside", "out0", "--queue", "5", "--rules", RULES_FILE]
            lab.router_exec(argv)
            # Rules the user inserts at the top after the install...
            lab.router_exec(["iptables", "-w", "-I", "FORWARD", "-p", "udp", "-j", "ACCEPT"])
            lab.router_exec(["iptables", "-w", "-t", "mangle", "-I", "FORWARD", "-p", "udp", "-j", "ACCEPT"])
            # ...then a reinstall (a reload, a port change) puts the jumps first again.
            lab.router_exec(argv)
            chains = chain_rules(ruleset(lab))
            for (table, builtin), target in JUMP_TARGETS.items():
                self.assertEqual(chains[(table, builtin)][0], "-A %s -j %s" % (builtin, target))
                self.assertEqual(sum("-j PPTP_FIXUP" in r for r in chains[(table, builtin)]), 1)
            lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE])


if __name__ == "__main__":
    run_tests()
