#!/usr/bin/python3
"""The Debian package (run as root).

- tools/package builds it (dpkg-buildpackage, in a temp dir) and lintian
  reports no error (the build is shared with test_systemd_service.py when
  the tree is the same, see lab.package);
- the .deb holds the programs, the rule files, the config file (a conffile),
  the systemd unit and the man pages, depends on iptables, adduser and the
  shared libraries, and its postinst creates the pptp-fixup system user;
- installed with dpkg -i in a throwaway root (an overlay on / in a private
  mount namespace) it creates the pptp-fixup user, leaves the service
  disabled, systemd-analyze verify accepts the unit (this machine runs no
  systemd, so the unit cannot be started for real), and purge removes it;
- systemd-analyze security rates the unit's exposure 2.0 or better;
- the packaged pptp-fixupd, started in the namespace lab the way the unit
  starts it (its ExecStart= line, the packaged config file, a non-root user
  with CAP_NET_ADMIN alone, no new privileges) with only --outside and
  --control-socket added, installs its rules with the packaged
  pptp-fixup-rules, carries one real client's frames, updates the rules when
  a fixup port is enabled, and removes them when it stops.

The package is extracted with dpkg-deb -x or installed in the throwaway
root; nothing is installed on the host.
"""

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from lab.agent import exit_problem  # noqa: E402
from lab.netns import Lab, LabError  # noqa: E402
from lab.package import built_package  # noqa: E402
from lab.pptp_client import RealClient  # noqa: E402
from lab.runner import run_tests  # noqa: E402

UNIT = "lib/systemd/system/pptp-fixupd.service"
CONFIG = "etc/pptp-fixup/pptp-fixupd.conf"
# The unit's user does not exist here (no package is installed): the test
# runs the daemon as nobody instead, with the unit's capabilities.
STAND_IN_USER = "nobody"


def log(*a):
    print("    [package-test]", *a, flush=True)


def project_version():
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        return re.search(r"project\(pptp-fixup VERSION ([0-9.]+)", f.read()).group(1)


def unit_settings(path):
    """[Service] of a unit file as key -> list of values."""
    settings, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service":
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class Package(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        # tools/package's files, or those of an earlier test's build of the
        # same tree (lab.package); cls.out is this test's own work space.
        build = built_package(log)
        cls.out = tempfile.mkdtemp(prefix="pptp-fixup-package-")
        os.chmod(cls.out, 0o755)   # the daemon runs as nobody from in here
        cls.package_output = build.output
        cls.package_rc = build.returncode
        cls.lintian = build.lintian
        cls.version = project_version()
        cls.deb = build.deb
        cls.root = os.path.join(cls.out, "root")
        if os.path.exists(cls.deb):
            subprocess.run(["dpkg-deb", "-x", cls.deb, cls.root], check=True)
            os.chmod(cls.root, 0o755)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)

    def setUp(self):
        self.assertTrue(os.path.exists(self.deb), "no package built:\n" + self.package_output[-3000:])

    def test_package_builds_and_lintian_has_no_errors(self):
        self.assertEqual(self.package_rc, 0, self.package_output[-3000:])
        with open(self.lintian) as f:
            report = f.read()
        log("lintian:", report.strip().replace("\n", "\n    "))
        self.assertEqual([l for l in report.splitlines() if l.startswith("E:")], [], report)

    def test_file_list_and_control_data(self):
        listing = subprocess.run(["dpkg-deb", "-c", self.deb], check=True, stdout=subprocess.PIPE,
                                 text=True).stdout
        modes = {}
        for line in listing.splitlines():
            fields = line.split()
            modes[fields[5].lstrip(".")] = fields[0]
        for path in ("/usr/sbin/pptp-fixupd", "/usr/sbin/pptp-fixupctl", "/usr/sbin/pptp-fixup-rules",
                     "/usr/share/doc/pptp-fixup/examples/ha/pptp-fixup-ha-notify"):
            self.assertEqual(modes.get(path), "-rwxr-xr-x", path)
        for path in ("/usr/share/pptp-fixup/pptp-fixup.rules", "/usr/share/pptp-fixup/pptp-fixup.nft",
                     "/" + CONFIG, "/" + UNIT,
                     "/usr/share/man/man8/pptp-fixupd.8.gz", "/usr/share/man/man8/pptp-fixupctl.8.gz",
                     "/usr/share/man/man8/pptp-fixup-rules.8.gz",
                     "/usr/share/doc/pptp-fixup/copyright", "/usr/share/doc/pptp-fixup/changelog.gz",
                     # The failover examples (README, "Failover between two gateways").
                     "/usr/share/doc/pptp-fixup/examples/ha/keepalived.conf",
                     "/usr/share/doc/pptp-fixup/examples/ha/conntrackd.conf",
                     "/usr/share/doc/pptp-fixup/examples/ha/README"):
            self.assertEqual(modes.get(path), "-rw-r--r--", path)

        def field(name):
            return subprocess.run(["dpkg-deb", "-f", self.deb, name], check=True, stdout=subprocess.PIPE,
                                  text=True).stdout.strip()

        self.assertEqual(field("Package"), "pptp-fixup")
        self.assertEqual(field("Version"), self.version)
        depends = [d.strip().split()[0] for d in field("Depends").split(",")]
        for dep in ("iptables", "adduser", "libsystemd0", "libnetfilter-queue1", "libmnl0", "libcap2"):
            self.assertIn(dep, depends)
        control = os.path.join(self.out, "control")
        subprocess.run(["dpkg-deb", "-e", self.deb, control], check=True)
        with open(os.path.join(control, "conffiles")) as f:
            self.assertIn("/" + CONFIG, f.read().split())
        with open(os.path.join(control, "postinst")) as f:
            postinst = f.read()
        self.assertRegex(postinst, r"adduser --system --group .*\n?.* pptp-fixup")
        self.assertIn("deb-systemd-invoke", postinst)

    def in_installed_root(self, script):
        """Runs a shell script as root in a throwaway copy of this machine
        (an overlay on / in a private mount namespace, chrooted into) where
        the package file is at /; nothing reaches the host."""
        top = tempfile.mkdtemp(prefix="root-", dir=self.out)
        upper, work, merged = (os.path.join(top, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, merged):
            os.mkdir(d)
        shutil.copy(self.deb, upper)
        outer = ("set -e; mount --make-rprivate /; "
                 "mount -t overlay overlay -o lowerdir=/,upperdir={u},workdir={w} {m}; "
                 "mount -t proc proc {m}/proc; mount --bind /dev {m}/dev; mount -t tmpfs tmpfs {m}/run; "
                 "exec chroot {m} sh -c {s}").format(u=upper, w=work, m=merged, s=shlex.quote(script))
        try:
            return subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", outer], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=120)
        finally:
            shutil.rmtree(top, ignore_errors=True)

    def test_installs_verifies_and_purges(self):
        deb = os.path.basename(self.deb)
        r = self.in_installed_root(
            "set -e; dpkg -i /{deb}; "
            "echo USER $(getent passwd pptp-fixup | cut -d: -f6,7); "
            "test ! -e /etc/systemd/system/multi-user.target.wants/pptp-fixupd.service && echo NOT-ENABLED; "
            # As installed: ExecStart=, ExecStopPost= and Documentation= all resolve.
            "systemd-analyze verify /{unit} && echo VERIFIED; "
            "dpkg --purge pptp-fixup; test ! -e /{conf} && echo PURGED".format(deb=deb, unit=UNIT, conf=CONFIG))
        log("install, verify, purge in a throwaway root: exit status %d\n%s" % (r.returncode, r.stdout))
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("USER /nonexistent:/usr/sbin/nologin", r.stdout)
        self.assertIn("NOT-ENABLED", r.stdout)
        self.assertIn("PURGED", r.stdout)
        # verify prints nothing when it finds nothing wrong.
        self.assertRegex(r.stdout, r"(?m)^Setting up pptp-fixup \(%s\) \.\.\.\n(Processing triggers.*\n)*"
                                   r"USER .*\nNOT-ENABLED\nVERIFIED\n" % re.escape(self.version))

    def test_unit_is_hardened(self):
        unit = os.path.join(self.root, UNIT)
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", unit],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        score = re.search(r"Overall exposure level for pptp-fixupd.service: ([0-9.]+)", r.stdout)
        log("systemd-analyze security:", score.group(0) if score else r.stdout[-500:])
        self.assertEqual(r.returncode, 0, r.stdout)

        s = unit_settings(unit)
        self.assertEqual(s["Type"], ["notify"])
        self.assertEqual(s["User"], ["pptp-fixup"])
        self.assertEqual(s["AmbientCapabilities"], ["CAP_NET_ADMIN"])
        self.assertEqual(s["CapabilityBoundingSet"], ["CAP_NET_ADMIN"])
        self.assertEqual(s["RestrictAddressFamilies"], ["AF_NETLINK AF_UNIX"])
        self.assertEqual(s["RuntimeDirectory"], ["pptp-fixup"])
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
            self.assertEqual(s[key], ["yes"], key)
        self.assertEqual(s["ProtectSystem"], ["strict"])
        self.assertEqual(s["Restart"], ["on-failure"])
        self.assertIn("@system-service", s["SystemCallFilter"])

    def test_packaged_daemon_in_the_lab_with_a_real_client(self):
        unit = unit_settings(os.path.join(self.root, UNIT))

        def packaged(path):
            # /usr/sbin/x, /etc/x -> the extracted package's
            return os.path.join(self.root, path.lstrip("/")) if path.startswith(("/usr/", "/etc/")) else path

        exec_start = [packaged(a) for a in shlex.split(unit["ExecStart"][0])]
        self.assertIn("--config", exec_start)
        self.assertEqual(exec_start[exec_start.index("--config") + 1], os.path.join(self.root, CONFIG))
        caps = ",".join("+" + c.lower()[len("cap_"):] for c in unit["AmbientCapabilities"][0].split())
        user = pwd.getpwnam(STAND_IN_USER)
        runtime_dir = tempfile.mkdtemp(prefix="pptp-fixup-run-")   # RuntimeDirectory=
        os.chown(runtime_dir, user.pw_uid, user.pw_gid)
        os.chmod(runtime_dir, 0o750)
        socket_path = os.path.join(runtime_dir, "pptp-fixupd.sock")
        # A stand-in for systemd's notification socket.
        notify_path = os.path.join(runtime_dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        os.chmod(notify_path, 0o666)
        notices = []
        ctl = os.path.join(self.root, "usr/sbin/pptp-fixupctl")
        rules = os.path.join(self.root, "usr/sbin/pptp-fixup-rules")
        state = {}

        def setup(lab):
            argv = ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid, "--clear-groups",
                    "--inh-caps=-all," + caps, "--ambient-caps=" + caps, "--bounding-set=-all," + caps,
                    "--no-new-privs"] + exec_start + ["--outside", lab.outside_if,
                                                      "--control-socket", socket_path]
            # Type=notify and WatchdogSec=30s, as systemd would run it.
            env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="30000000")
            log("starting:", " ".join(argv))
            state["log"] = open(os.path.join(lab.tmpdir, "pptp-fixupd.log"), "w+b")
            state["proc"] = lab.spawn("router", argv, stdin=subprocess.DEVNULL, stdout=state["log"],
                                      stderr=subprocess.STDOUT, cwd="/", env=env)
            if not wait_notification("READY=1", 10):
                raise LabError("packaged pptp-fixupd did not report READY=1: %s %s" % (notices, output()))

        def wait_notification(what, timeout):
            deadline = time.monotonic() + timeout
            while not any(what in n.split("\n") for n in notices):
                left = deadline - time.monotonic()
                if left <= 0 or (state.get("proc") is not None and state["proc"].poll() is not None):
                    return False
                notify.settimeout(min(left, 0.2))
                try:
                    notices.append(notify.recv(4096).decode())
                except socket.timeout:
                    pass
            return True

        def output():
            state["log"].seek(0)
            return state["log"].read().decode(errors="replace")

        def teardown(lab):
            problem = None
            if state.get("proc") is not None:
                problem = exit_problem(lab.stop_process(state["proc"], timeout=10), output())
            lab.router_exec([rules, "remove"], check=False)
            if problem:
                raise LabError("packaged pptp-fixupd failed: " + problem)

        try:
            with Lab(clients=1, mode="agent", agent_setup=setup, agent_teardown=teardown) as lab:
                # READY=1 comes once the queue is bound and the rules are in.
                log("notifications:", notices)
                ready = next(n for n in notices if "READY=1" in n.split("\n"))
                self.assertIn("STATUS=queue 0 bound", ready)
                self.assertIn("MAINPID=%d" % state["proc"].pid, ready)
                ruleset = lab.router_exec(["iptables-save"]).stdout
                self.assertIn("-A PPTP_FIXUP_IN -i out0 -p gre", ruleset)
                self.assertIn("--queue-num 0", ruleset)   # queue = 0, from the packaged config
                owner = os.stat(socket_path).st_uid
                self.assertEqual(owner, user.pw_uid, "the socket belongs to the service's user")
                with open("/proc/%d/status" % state["proc"].pid) as f:
                    status = f.read()
                self.assertRegex(status, r"Uid:\s+%d\s" % user.pw_uid)
                self.assertRegex(status, r"CapEff:\s+0000000000001000")   # CAP_NET_ADMIN (12) alone

                lab.start_pptpd()
                client = RealClient(lab, 1)
                client.start()
                try:
                    self.assertTrue(client.wait_server_frame(8), "no frame from the server: " + output())
                    self.assertEqual(client.exchange(5), 5, output())
                    sessions = lab.router_exec([ctl, "--socket", socket_path, "sessions"]).stdout
                    log("pptp-fixupctl sessions:\n" + sessions)
                    self.assertIn("198.18.0.11", sessions)
                    self.assertIn("established", sessions)
                finally:
                    result = client.stop()
                log("client:", result)
                self.assertEqual(result.frames_echoed, 5, result)

                # At run time the daemon (not root) updates its rules itself.
                lab.router_exec([ctl, "--socket", socket_path, "fixup", "enable", "1724"])
                saved = lab.router_exec(["iptables-save"]).stdout
                for port in (1723, 1724):   # one rule a port and a direction
                    for way in ("-o", "-i"):
                        self.assertIn("-A PPTP_FIXUP_CONTROL %s out0 -p tcp -m conntrack --ctorigdstport %d "
                                      "-j NFQUEUE --queue-num 0" % (way, port), saved)

                self.assertTrue(wait_notification("WATCHDOG=1", 3), notices)
                self.assertIsNone(exit_problem(lab.stop_process(state["proc"], timeout=10), output()), output())
                state["proc"] = None
                self.assertTrue(wait_notification("STOPPING=1", 1), notices)
                # A stop leaves the rules and the offload table (a restart keeps
                # offloaded calls); the unit's ExecStopPost= after a requested
                # stop that is not a restart removes both.
                self.assertIn("PPTP_FIXUP", lab.router_exec(["iptables-save"]).stdout,
                              "a stop leaves the rules")
                self.assertIn("table ip pptp_fixup", lab.router_exec(["nft", "list", "tables"]).stdout,
                              "a stop leaves the offload table")
                stop_post = unit["ExecStopPost"][0].lstrip("+-").replace("$$", "$")
                r = lab.router_exec(["env", "SERVICE_RESULT=success", "PATH=%s:/usr/sbin:/usr/bin:/sbin:/bin" %
                                     os.path.dirname(rules)] + shlex.split(stop_post.replace(
                                         "/usr/sbin/pptp-fixup-rules", rules)))
                self.assertIn("removed rules and the GRE offload", r.stdout)
                self.assertNotIn("PPTP_FIXUP", lab.router_exec(["iptables-save"]).stdout,
                                 "a stop for good removes the rules")
                self.assertNotIn("pptp_fixup", lab.router_exec(["nft", "list", "tables"]).stdout,
                                 "a stop for good removes the offload table")
                log("daemon log:\n" + output())
                self.assertIn("302017", output())
        finally:
            notify.close()
            shutil.rmtree(runtime_dir, ignore_errors=True)
            if "log" in state:
                state["log"].close()


if __name__ == "__main__":
    run_tests()
