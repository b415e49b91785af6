#!/usr/bin/python3
"""The Debian package as a service of a real systemd (run as root).

The package (tools/package; shared with test_package.py through
lab.package's cache when the tree is the same) is installed with apt in a
throwaway container that boots systemd 252 (lab.container: systemd-nspawn
over an overlay of /) whose network is the lab's router namespace; the
config gets "outside = out0" and the shipped unit, untouched, is started
with "systemctl enable --now". Then, in this order:

- READY=1 comes only once the queue is bound: the moment "systemctl enable
  --now" returns (a Type=notify start waits for READY=1) the unit is active
  and queue 0 is bound in the namespace by the daemon (nfnetlink_queue), the
  rules are in; before the start there was no queue;
- the unit's StatusText (the STATUS= line of "systemctl status");
- a real pptp client behind the gateway reaches a real pptpd through it
  (GRE echoed, the session listed by pptp-fixupctl, the call offloaded);
- "systemctl reload" keeps the live call (same PID, the call still echoes,
  still listed);
- "systemctl restart" keeps it too: the offloaded call echoes through the
  restart, the new daemon (new PID) adopts it, and the unit's ExecStopPost=
  (which tells a restart from a stop with systemctl list-jobs) has not
  removed the rules; test_05b asks that not one frame is lost meanwhile
  (see there why some are);
- the journal holds the daemon's lines by their structured fields
  (PPTP_EVENT=, MESSAGE_ID=, sent with sd_journal_send, not the stdout
  stream) for a call built, a call left in the kernel at the restart and a
  call torn down;
- with a drop-in WatchdogSec=3s, a SIGSTOPped daemon is killed by systemd
  (Result=watchdog) and restarted, and comes back with the call;
- the shipped hardening is what runs (user, capabilities, no new
  privileges, seccomp, the unit file byte for byte);
- "systemctl stop" removes the rules and the offload table (ExecStopPost=).

Every daemon exit other than the watchdog's kill, every "Failed with
result" but that one, and every line of priority error or worse fails the
test. The container, its overlay and the lab namespaces always go.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from lab.agent import SANITIZER_REPORT  # noqa: E402
from lab.container import Container  # noqa: E402
from lab.netns import Lab, LabError  # noqa: E402
from lab.package import built_package  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

UNIT = "pptp-fixupd.service"
UNIT_FILE = "/lib/systemd/system/pptp-fixupd.service"
CONFIG = "/etc/pptp-fixup/pptp-fixupd.conf"
MESSAGE_ID_PREFIX = "7c1e4a0b9d2f4c38a5e6"   # logging::kMessageIdPrefix
QUEUE = 0                                    # the packaged config's


def log(*a):
    print("    [systemd-test]", *a, flush=True)


def message_id(event):
    return MESSAGE_ID_PREFIX + event.rjust(12, "0")


class SystemdService(unittest.TestCase):
    """One container and one lab for the whole class; the tests run in
    name order and each goes on from where the one before left the
    service."""

    lab = None
    container = None

    @classmethod
    def setUpClass(cls):
        cls.build = built_package(log)
        if not os.path.exists(cls.build.deb):
            raise AssertionError("no package built:\n" + cls.build.output[-3000:])
        cls.clients = {}
        cls.state = {}
        started = time.monotonic()
        try:
            cls.lab = Lab(clients=2, mode="agent", agent_setup=cls._boot, agent_teardown=cls._halt,
                          name_hint="sd")
            cls.lab.__enter__()
        except BaseException:
            cls._close_lab()
            raise
        log("lab, container, package and service up in %.1f s" % (time.monotonic() - started))

    @classmethod
    def tearDownClass(cls):
        cls._close_lab()

    @classmethod
    def _close_lab(cls):
        for client in cls.clients.values():
            client.stop()
        cls.clients = {}
        if cls.lab is not None:
            lab, cls.lab = cls.lab, None
            lab.close()   # _halt, then the namespaces

    # ---- the container as the lab's agent
    @classmethod
    def _boot(cls, lab):
        t = time.monotonic()
        c = cls.container = Container(lab.router_ns, "sd")
        c.__enter__()
        log("systemd up in the container in %.1f s (%s)" %
            (time.monotonic() - t, c.exec(["systemctl", "is-system-running"], check=False).stdout.strip()))
        deb = c.copy_in(cls.build.deb)
        r = c.exec(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends",
                    deb], check=False, timeout=180)
        cls.state["apt"] = r.stdout + r.stderr
        if r.returncode != 0:
            raise LabError("apt-get install %s: exit status %d\n%s" % (deb, r.returncode, cls.state["apt"]))
        log("apt-get install: %s" % [l for l in r.stdout.splitlines() if l.startswith("Setting up")])
        c.sh("sed -i 's/^#outside = .*/outside = %s/' %s" % (lab.outside_if, CONFIG))
        cls.state["queue_before"] = cls.queues()
        cls.state["enabled_before"] = c.exec(["systemctl", "is-enabled", UNIT], check=False).stdout.strip()
        t = time.monotonic()
        r = c.exec(["systemctl", "enable", "--now", UNIT], check=False, timeout=60)
        cls.state["start_seconds"] = time.monotonic() - t
        # Right when the start job is done: what READY=1 promised.
        cls.state["queue_at_ready"] = cls.queues()
        cls.state["show_at_ready"] = cls.show("ActiveState", "SubState", "StatusText", "MainPID")
        cls.state["rules_at_ready"] = lab.router_exec(["iptables-save"]).stdout
        if r.returncode != 0:
            raise LabError("systemctl enable --now: exit status %d: %s%s\n%s" % (
                r.returncode, r.stdout, r.stderr, cls.journal()))
        log("systemctl enable --now: %.2f s; %s" % (cls.state["start_seconds"], cls.state["show_at_ready"]))

    @classmethod
    def _halt(cls, lab):
        c, cls.container = cls.container, None
        if c is None:
            return
        problems = []
        try:
            if c.init_pid is not None and c.proc.poll() is None:
                problems = cls.journal_problems(c)
        finally:
            c.close()
        if problems:
            raise LabError("pptp-fixupd in the container: " + " | ".join(problems))

    # ---- helpers
    @classmethod
    def queues(cls):
        """{queue number: portid} bound in the router namespace."""
        text = cls.lab.router_exec(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
        return {int(f[0]): int(f[1]) for f in (l.split() for l in text.splitlines()) if f}

    @classmethod
    def show(cls, *props):
        out = cls.container.exec(["systemctl", "show", UNIT] + ["-p" + p for p in props]).stdout
        return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)

    @classmethod
    def journal(cls, *args, container=None, output="short-precise"):
        c = container or cls.container
        return c.exec(["journalctl", "--no-pager", "-o", output] + list(args), check=False, timeout=30).stdout

    @classmethod
    def journal_json(cls, *args):
        return [json.loads(l) for l in cls.journal(*args, output="json").splitlines() if l.strip()]

    @classmethod
    def journal_problems(cls, c):
        """What in the container's journal counts as a failure: an exit of
        the daemon not caused by the watchdog test, a failed result other
        than that one, a line of priority err or worse, a sanitizer report."""
        problems = []
        expected = cls.state.get("watchdog_kills", 0)
        unit_log = cls.journal("-u", UNIT, container=c, output="cat")
        exits = [e for e in re.findall(r"Main process exited, code=\w+, status=\S+", unit_log)
                 if e != "Main process exited, code=exited, status=0/SUCCESS"]   # logged at debug level
        unexpected = [e for e in exits if "status=6/ABRT" not in e] + \
            [e for e in exits if "status=6/ABRT" in e][expected:]
        if unexpected:
            problems.append("daemon exits: %s" % unexpected)
        failed = re.findall(r"Failed with result '([\w-]+)'", unit_log)
        if failed != ["watchdog"] * expected:
            problems.append("results: %s (expected %s)" % (failed, ["watchdog"] * expected))
        errors = cls.journal("-u", UNIT, "-p", "err", container=c, output="cat").splitlines()
        timeouts = [l for l in errors if re.search(r"Watchdog timeout \(limit 3s\)!$", l)]
        errors = [l for l in errors if l not in timeouts] + timeouts[expected:]
        if errors:
            problems.append("errors: " + "\n".join(errors)[-2000:])
        m = SANITIZER_REPORT.search(unit_log)
        if m:
            problems.append("sanitizer: " + unit_log[m.start():m.start() + 1000])
        return problems

    def ctl(self, *args):
        return self.container.exec(["pptp-fixupctl"] + list(args)).stdout

    def ctl_json(self, *args):
        return json.loads(self.ctl("--json", *args))

    def sessions(self):
        return self.ctl_json("sessions")["sessions"]

    def main_pid(self):
        return int(self.show("MainPID")["MainPID"])

    def assert_active(self, what):
        s = self.show("ActiveState", "SubState", "Result")
        self.assertEqual((s["ActiveState"], s["SubState"]), ("active", "running"), "%s: %s\n%s" % (
            what, s, self.journal("-u", UNIT, "-n", "40")))
        return s

    def wait_journal(self, pattern, count=1, timeout=10):
        box = {}

        def seen():
            box["log"] = self.journal("-u", UNIT, output="cat")
            return len(re.findall(pattern, box["log"])) >= count
        self.assertTrue(wait_until(seen, timeout, 0.2), "no %d x %r in the journal:\n%s" % (
            count, pattern, box.get("log", "")[-3000:]))

    def assert_call_echoes(self, index, n, what):
        got = self.clients[index].exchange(n)
        self.assertEqual(got, n, "%s: %d of %d frames echoed\n%s" % (
            what, got, n, self.journal("-u", UNIT, "-n", "30")))

    def wait_offloaded(self, count, timeout=8):
        box = {}

        def done():
            box["s"] = self.sessions()
            return len(box["s"]) == count and all(
                s["state"] == "established" and s["offloaded"] for s in box["s"])
        self.assertTrue(wait_until(done, timeout, 0.2), box.get("s"))
        return box["s"]

    def start_client(self, index):
        client = RealClient(self.lab, index)
        self.clients[index] = client
        client.start()
        self.assertTrue(client.wait_server_frame(8), "no frame from the server: %s\n%s" % (
            client.stderr_tail(), self.journal("-u", UNIT, "-n", "30")))
        return client

    # ---- the checks
    def test_01_ready_only_once_the_queue_is_bound(self):
        self.assertEqual(self.state["enabled_before"], "disabled", "the package leaves the service disabled")
        self.assertNotIn(QUEUE, self.state["queue_before"], "a queue bound before the start")
        show = self.state["show_at_ready"]
        self.assertEqual((show["ActiveState"], show["SubState"]), ("active", "running"), show)
        pid = int(show["MainPID"])
        self.assertGreater(pid, 0)
        # The queue's netlink port is the daemon's (its first netlink socket
        # gets the PID as port id, or another unique one while the PID's is taken).
        self.assertIn(QUEUE, self.state["queue_at_ready"], "READY=1 before the queue was bound")
        log("queues at READY: %s, MainPID %d" % (self.state["queue_at_ready"], pid))
        self.assertIn("-A PPTP_FIXUP_IN -i out0 -p gre", self.state["rules_at_ready"])
        self.assertIn("--queue-num %d" % QUEUE, self.state["rules_at_ready"])
        self.assertEqual(self.container.exec(["systemctl", "is-enabled", UNIT]).stdout.strip(), "enabled")
        stats = self.ctl_json("stats")
        log("stats at start:", json.dumps(stats)[:400])

    def test_02_status_text(self):
        status = self.state["show_at_ready"]["StatusText"]
        self.assertRegex(status, r"^queue %d bound, 0 calls$" % QUEUE)
        text = self.container.exec(["systemctl", "status", "--no-pager", UNIT], check=False).stdout
        log("systemctl status:\n      " + "\n      ".join(text.splitlines()[:8]))
        self.assertRegex(text, r"(?m)^\s+Status: \"(queue %d bound, 0 calls|\d+ calls, \d+ control connections, "
                               r"\d+ packets)\"$" % QUEUE)

    def test_03_real_client_through_the_service(self):
        self.lab.start_pptpd()
        self.start_client(1)
        self.assert_call_echoes(1, 5, "through the service")
        s, = self.wait_offloaded(1)
        log("session:", {k: s[k] for k in ("inside_address", "state", "offloaded", "public_call_id")
                         if k in s})
        self.assertEqual(s["inside_address"], self.lab.client_addr(1))
        self.state["session"] = s
        # The STATUS= line follows the calls (every 5 s).
        self.assertTrue(wait_until(lambda: self.show("StatusText")["StatusText"].startswith("1 calls"), 7, 0.3),
                        self.show("StatusText"))
        log("StatusText:", self.show("StatusText")["StatusText"])

    def test_04_reload_keeps_live_calls(self):
        pid = self.main_pid()
        self.container.exec(["systemctl", "reload", UNIT])
        self.wait_journal(r"reloaded %s: fixup ports 1723, 1 live calls kept" % re.escape(CONFIG))
        self.assert_active("after reload")
        self.assertEqual(self.main_pid(), pid, "reload restarted the daemon")
        self.assert_call_echoes(1, 5, "after the reload")
        s, = self.sessions()
        self.assertEqual((s["inside_address"], s["state"]), (self.lab.client_addr(1), "established"))

    def test_05_restart_keeps_the_offloaded_call(self):
        pid = self.main_pid()
        box = {}

        t0 = time.monotonic()

        def restart():
            box["r"] = self.container.exec(["systemctl", "restart", UNIT], check=False)
            box["seconds"] = time.monotonic() - t0

        self.container.exec(["systemd-analyze", "log-level", "debug"])
        self.addCleanup(self.container.exec, ["systemd-analyze", "log-level", "info"])

        thread = threading.Thread(target=restart)
        thread.start()
        frames = []   # (seconds since the restart began, echoed)
        while thread.is_alive() or len(frames) < 10:   # GRE all through the restart
            t = time.monotonic() - t0
            frames.append((round(t, 3), self.clients[1].exchange(1, timeout=2.0, interval=0)))
            time.sleep(0.05)
        thread.join()
        sent, echoed = len(frames), sum(f[1] for f in frames)
        log("restart: %.2f s, %d of %d frames echoed meanwhile" % (box["seconds"], echoed, sent))
        self.assertEqual(box["r"].returncode, 0, box["r"].stderr)
        self.state["restart_frames"] = frames
        self.state["restart_seconds"] = box["seconds"]
        self.state["restart_stats"] = self.ctl_json("stats")
        # Most of them at least: the call was not cut (the next test wants all).
        self.assertGreaterEqual(echoed, sent - 2, frames)
        self.assert_active("after restart")
        new_pid = self.main_pid()
        self.assertNotEqual(new_pid, pid, "restart kept the old process")
        self.wait_journal(r"\b1 call\(s\) adopted")
        stats = self.ctl_json("stats")
        self.assertEqual(stats["counters"]["calls_adopted"], 1, stats["counters"])
        s, = self.wait_offloaded(1)
        old = self.state["session"]
        for key in ("inside_address", "public_call_id", "inside_call_id", "outside_address"):
            if key in old:
                self.assertEqual(s[key], old[key], key)
        self.assert_call_echoes(1, 5, "after the restart")
        # ExecStopPost= ran for the restart (its last run is recorded) and saw
        # the restart job: no "pptp-fixup-rules remove".
        # (systemd at debug level during the restart says so).
        unit_log = self.journal("-u", UNIT, output="cat")
        restart_log = unit_log[unit_log.rindex("Stopping pptp-fixupd.service"):]
        restart_log = restart_log[:restart_log.index("Starting pptp-fixupd.service")]
        stop_post = [l for l in restart_log.splitlines() if "/bin/sh" in l or "Control process exited" in l]
        log("ExecStopPost at the restart:", stop_post)
        self.assertRegex(restart_log, r"Executing: /bin/sh -c \"case .*systemctl list-jobs")
        self.assertRegex(restart_log, r"Control process exited, code=exited, status=0/SUCCESS")
        unit_log = self.journal("-u", UNIT, output="cat")
        self.assertNotIn("removed rules", unit_log)
        self.assertIn("table ip pptp_fixup", self.lab.router_exec(["nft", "list", "tables"]).stdout)

    def test_05b_no_frame_lost_during_the_restart(self):
        frames = self.state.get("restart_frames")
        if frames is None:
            self.skipTest("no restart measured")
        lost = [t for t, ok in frames if not ok]
        stats = self.state["restart_stats"]
        # Measured in a plain lab (this build's daemon, one offloaded call,
        # "pptp-fixup-rules install" run over the installed rules in a loop):
        # 8 of 100 frames lost while 65 installs ran, none before or after,
        # and the FORWARD policy's DROP counter went from 0 to exactly 8; with
        # the policy ACCEPT none was lost. install flushes each PPTP_FIXUP_
        # chain (-F) and appends its rules one iptables call at a time, so for
        # a moment the filter accept of offloaded PPTP GRE is missing (and the
        # raw NOTRACK: GRE conntrack entries appear). The daemon runs that
        # install at every start (--manage-rules), before READY=1.
        self.assertEqual(lost, [], "offloaded call's frames lost during 'systemctl restart' (at %s s; the restart "
                         "returned at %.3f s; the new daemon's queue received %d packets, dropped %d): "
                         "pptp-fixup-rules install is not atomic, see the comment here" % (
                             lost, self.state["restart_seconds"], stats["queue"]["agent"]["received"],
                             stats["counters"]["packets_dropped"]))

    def test_06_journal_fields(self):
        # A second call, built and torn down, for 302017 and 302018.
        client = self.start_client(2)
        self.assert_call_echoes(2, 3, "second client")
        client.stop()
        del self.clients[2]
        addr2 = self.lab.client_addr(2)
        self.wait_journal(r"%%PPTP-6-302018: Teardown .*%s" % re.escape(addr2))

        built = self.journal_json("-u", UNIT, "PPTP_EVENT=302017")
        log("PPTP_EVENT=302017: %d entries, first %s" % (len(built), {k: v for k, v in built[0].items()
                                                                      if not k.startswith("__")} if built else None))
        # Client 1's call, and client 2's.
        self.assertEqual(len(built), 2, built)
        for e in built:
            self.assertRegex(e["MESSAGE"], r"^%PPTP-6-302017: Built ")
            self.assertEqual(e["PRIORITY"], "6")
            self.assertEqual(e["SYSLOG_IDENTIFIER"], "pptp-fixupd")
            self.assertEqual(e["MESSAGE_ID"], message_id("302017"))
            self.assertEqual(e["_TRANSPORT"], "journal", "not sent with sd_journal_send")
            self.assertEqual(e["_SYSTEMD_UNIT"], UNIT)
            self.assertNotIn("CODE_FILE", e, "the same source location on every line says nothing")
        self.assertIn(self.lab.client_addr(1), built[0]["MESSAGE"])
        self.assertIn(addr2, built[1]["MESSAGE"])

        by_id = self.journal_json("MESSAGE_ID=" + message_id("302018"))
        self.assertEqual(len(by_id), 1, by_id)
        self.assertIn(addr2, by_id[0]["MESSAGE"])
        self.assertEqual(by_id[0]["PPTP_EVENT"], "302018")
        # The restart left client 1's call in the kernel.
        left = self.journal_json("-u", UNIT, "MESSAGE_ID=" + message_id("302019"))
        self.assertEqual(len(left), 1, left)
        self.assertRegex(left[0]["MESSAGE"], r"^%PPTP-6-302019: Left in the kernel .*" +
                         re.escape(self.lab.client_addr(1)))
        # Plain lines have no event fields, and none comes as a stream line.
        plain = [e for e in self.journal_json("-u", UNIT, "_PID=%d" % self.main_pid())
                 if "started: queue" in e.get("MESSAGE", "")]
        self.assertEqual(len(plain), 1, plain)
        self.assertNotIn("PPTP_EVENT", plain[0])
        self.assertNotIn("MESSAGE_ID", plain[0])
        self.assertEqual(plain[0]["PRIORITY"], "5")
        streamed = [e["MESSAGE"] for e in self.journal_json("-u", UNIT, "_TRANSPORT=stdout")
                    if e.get("SYSLOG_IDENTIFIER") == "pptp-fixupd"]
        self.assertEqual(streamed, [])

    def test_07_watchdog_kills_and_restarts_a_hung_daemon(self):
        c = self.container
        dropin = "/etc/systemd/system/%s.d" % UNIT
        c.exec(["mkdir", "-p", dropin])
        with open(c.path(dropin + "/watchdog.conf"), "w") as f:
            f.write("[Service]\nWatchdogSec=3s\n")
        c.exec(["systemctl", "daemon-reload"])
        c.exec(["systemctl", "restart", UNIT])
        self.assertEqual(self.show("WatchdogUSec")["WatchdogUSec"], "3s")
        self.assert_active("restart with WatchdogSec=3s")
        pid = self.main_pid()
        restarts = int(self.show("NRestarts")["NRestarts"])
        self.wait_offloaded(1)
        time.sleep(4)   # alive past one watchdog period
        self.assertEqual(self.main_pid(), pid, "killed while it was fine")
        self.state["watchdog_kills"] = 1
        stopped = time.monotonic()
        os.kill(self.pid_on_host(pid), 19)   # SIGSTOP
        self.assertTrue(wait_until(lambda: "Failed with result 'watchdog'" in
                                   self.journal("-u", UNIT, output="cat"), 10, 0.2),
                        self.journal("-u", UNIT, "-n", "20"))
        killed = time.monotonic() - stopped

        def back_up():
            s = self.show("ActiveState", "MainPID")
            return s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, pid)
        self.assertTrue(wait_until(back_up, 15, 0.2), self.journal("-u", UNIT, "-n", "30"))
        back = time.monotonic() - stopped
        log("watchdog: killed %.1f s after SIGSTOP, active again after %.1f s" % (killed, back))
        s = self.show("NRestarts", "Result", "ActiveState")
        self.assertEqual(int(s["NRestarts"]), restarts + 1, s)
        unit_log = self.journal("-u", UNIT, output="cat")
        self.assertIn("Watchdog timeout", unit_log)
        self.assertRegex(unit_log, r"Main process exited, code=(dumped|killed), status=6/ABRT")
        self.assertNotIn("removed rules", unit_log, "a crash removed the rules")
        self.wait_journal(r"\b1 call\(s\) adopted", count=3)
        self.wait_offloaded(1)
        self.assert_call_echoes(1, 5, "after the watchdog restart")
        c.exec(["rm", "-r", dropin])
        c.exec(["systemctl", "daemon-reload"])

    def pid_on_host(self, pid):
        """The host's PID of a process the container calls ``pid``."""
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/status" % d) as f:
                    status = f.read()
            except OSError:
                continue
            m = re.search(r"(?m)^NSpid:\s+(.*)$", status)
            if m and m.group(1).split()[-1] == str(pid) and len(m.group(1).split()) > 1 and \
                    os.readlink("/proc/%s/ns/pid" % d) == os.readlink("/proc/%d/ns/pid" % self.container.init_pid):
                return int(d)
        raise AssertionError("no host PID for container PID %d" % pid)

    def test_08_shipped_hardening_is_what_runs(self):
        with open(os.path.join(REPO, "packaging", "systemd", UNIT), "rb") as f:
            shipped = f.read()
        with open(self.container.path(UNIT_FILE), "rb") as f:
            self.assertEqual(f.read(), shipped, "the installed unit is not the shipped one")
        s = self.show("FragmentPath", "DropInPaths", "User", "NoNewPrivileges", "ProtectSystem")
        self.assertEqual(s["FragmentPath"], UNIT_FILE)
        self.assertEqual(s["DropInPaths"], "")
        pid = self.pid_on_host(self.main_pid())
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
        uid = int(self.container.exec(["id", "-u", "pptp-fixup"]).stdout)
        self.assertRegex(status, r"(?m)^Uid:\s+%d\s+%d\s+%d\s+%d$" % (uid, uid, uid, uid))
        self.assertRegex(status, r"(?m)^CapEff:\s+0000000000001000$")   # CAP_NET_ADMIN alone
        self.assertRegex(status, r"(?m)^CapBnd:\s+0000000000001000$")
        self.assertRegex(status, r"(?m)^NoNewPrivs:\s+1$")
        self.assertRegex(status, r"(?m)^Seccomp:\s+2$")
        # ProtectSystem=strict: / is read-only for it.
        with open("/proc/%d/mountinfo" % pid) as f:
            root = next(l for l in f if l.split()[4] == "/")
        self.assertIn("ro", root.split()[5].split(","), root)
        log("daemon: uid %d, %s" % (uid, " ".join(re.findall(r"(?m)^(?:CapEff|NoNewPrivs|Seccomp):\s+\S+", status))))

    def test_09_stop_removes_the_rules(self):
        c = self.container
        self.assertIn("PPTP_FIXUP_", self.lab.router_exec(["iptables-save"]).stdout)
        c.exec(["systemctl", "stop", UNIT])
        s = self.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
        log("after stop:", s)
        self.assertEqual((s["ActiveState"], s["Result"]), ("inactive", "success"), s)
        self.assertEqual((s["ExecMainCode"], s["ExecMainStatus"]), ("1", "0"), "not a clean exit: %s" % s)
        self.assertNotIn("PPTP_FIXUP_", self.lab.router_exec(["iptables-save"]).stdout)
        self.assertNotIn("pptp_fixup", self.lab.router_exec(["nft", "list", "tables"]).stdout)
        self.assertNotIn(QUEUE, self.queues())
        self.assertIn("removed rules and the GRE offload", self.journal("-u", UNIT, output="cat"))
        self.assertEqual(self.journal_problems(c), [])


if __name__ == "__main__":
    run_tests()
