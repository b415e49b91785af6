"""Run the project's own agent in a Lab: rules from rules/, pptp-fixupd and
pptp-fixupctl from the build tree (PPTP_FIXUP_BIN, default build/debug/src).

    with Lab(mode="agent", **agent_hooks()) as lab:
        ...
        agent_of(lab).sessions()
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from . import netns

REPO = os.path.dirname(os.path.dirname(netns.LAB_DIR))
RULES_TOOL = os.path.join(REPO, "rules", "pptp-fixup-rules")
RULES_FILE = os.path.join(REPO, "rules", "pptp-fixup.rules")
QUEUE = 7


def bin_dir():
    return os.environ.get("PPTP_FIXUP_BIN", os.path.join(REPO, "build", "debug", "src"))


# What ASan, LSan and UBSan print when they find something (LSan also when it
# cannot run at all, e.g. when it may not ptrace the process).
SANITIZER_REPORT = re.compile(
    r"(ERROR|WARNING|SUMMARY): (Address|Leak|UndefinedBehavior)Sanitizer|"
    r"runtime error:|LeakSanitizer has encountered a fatal error")


def exit_problem(returncode, output):
    """Why a finished pptp-fixupd run counts as a failure, or None: a
    non-zero exit (a signal included) or a sanitizer report in its output."""
    problems = []
    if returncode != 0:
        problems.append("exit status %s" % returncode)
    m = SANITIZER_REPORT.search(output)
    if m:
        start = output.rfind("\n", 0, m.start()) + 1
        problems.append("sanitizer report: " + output[start:start + 2000])
    return "; ".join(problems) or None


def tools_copy():
    """A directory of its own (0755, under the system temp dir) holding copies
    of the rule installer and its rule file, so a daemon that leaves root
    (--user) can run them wherever the checkout lies and whatever its
    permissions. The caller removes it."""
    d = tempfile.mkdtemp(prefix="pptp-fixup-tools-")
    os.chmod(d, 0o755)
    for src, mode in ((RULES_TOOL, 0o755), (RULES_FILE, 0o644)):
        dst = os.path.join(d, os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chmod(dst, mode)
    return d


class Agent:
    """pptp-fixupd running in the router namespace of a lab."""

    # Random public Call IDs by default in the lab, so that every test with
    # real clients (whose own random Call IDs would be free, public = inside)
    # exercises the rewrite both ways; the daemon's own default is preserve.
    # outside: the uplinks (default: the lab's ``outside_ifs`` if it has
    # them, as a lab.topology does, else its one ``outside_if``); each is an
    # --outside of the daemon, and pptp-fixup-rules gets them as a comma list.
    def __init__(self, lab, queue=QUEUE, ports=(1723,), extra_args=(), config=None,
                 call_id_allocation="random", env=None, gre_offload=None, outside=None, daemon=None,
                 rules_args=()):
        self.lab = lab
        # More pptp-fixup-rules install arguments (e.g. --conntrack-labels).
        self.rules_args = list(rules_args)
        # Another pptp-fixupd executable (a copy installed elsewhere): then
        # no --rules-command is given, the daemon finds its installer itself.
        self.daemon = daemon
        self.outside = list(outside or getattr(lab, "outside_ifs", None) or [lab.outside_if])
        # nft (the kernel offload, which must work here) unless the run asks
        # for the queue-only path: ctest runs the suite both ways.
        self.gre_offload = gre_offload or os.environ.get("PPTP_FIXUP_TEST_GRE_OFFLOAD", "nft")
        self.call_id_allocation = call_id_allocation
        self.extra_env = dict(env or {})
        self.queue = queue
        self.ports = list(ports)
        self.extra_args = list(extra_args)
        self.config_path = os.path.join(lab.tmpdir, "pptp-fixupd.conf")
        self.config = config
        self.socket = os.path.join(lab.tmpdir, "pptp-fixupd.sock")
        self.log_path = os.path.join(lab.tmpdir, "pptp-fixupd.log")
        self.proc = None
        self.log = None
        self.log_start = 0  # where the latest run's output begins in the log
        self.tools_dir = None
        self.failures = []  # exit_problem() of every run that went wrong

    @property
    def rules_command(self):
        if self.tools_dir is None:
            self.tools_dir = tools_copy()
        return os.path.join(self.tools_dir, "pptp-fixup-rules")

    def install_rules(self):
        self.lab.router_exec([RULES_TOOL, "install", "--outside", ",".join(self.outside),
                              "--queue", str(self.queue),
                              "--ports", ",".join(str(p) for p in self.ports),
                              "--rules", RULES_FILE] + self.rules_args)

    def remove_rules(self):
        # Also deletes the offload table, with this build's pptp-fixupd.
        self.lab.router_exec(["env", "PPTP_FIXUPD=" + os.path.join(bin_dir(), "pptp-fixupd"),
                              RULES_TOOL, "remove", "--rules", RULES_FILE], check=False)

    def start(self, wait=10.0):
        self.log = open(self.log_path, "ab")
        argv = [self.daemon or os.path.join(bin_dir(), "pptp-fixupd"), "--queue", str(self.queue)]
        for outside in self.outside:
            argv += ["--outside", outside]
        argv += ["--control-socket", self.socket]
        if self.config is not None:
            # Ports come from the config file then, so a reload can change them.
            self.write_config(self.config)
            argv += ["--config", self.config_path]
        else:
            for p in self.ports:
                argv += ["--fixup-port", str(p)]
        if self.call_id_allocation and not (self.config and "call-id-allocation" in self.config):
            argv += ["--call-id-allocation", self.call_id_allocation]
        if not (self.config and "gre-offload" in self.config) and \
                not any(a.startswith("--gre-offload") for a in self.extra_args):
            argv += ["--gre-offload", self.gre_offload]
        if self.daemon is None:
            argv += ["--rules-command", self.rules_command]
        argv += self.extra_args
        # ASan in the debug build: leaks fail the run at exit.
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", **self.extra_env)
        self.log_start = self.log.tell()
        self.proc = self.lab.spawn("router", argv, stdin=subprocess.DEVNULL,
                                   stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.failures.append(exit_problem(self.proc.returncode, self.run_output()))
                raise netns.LabError("pptp-fixupd exited with %s: %s" % (
                    self.proc.returncode, self.output()))
            if os.path.exists(self.socket):
                return
            time.sleep(0.05)
        raise netns.LabError("pptp-fixupd did not start: %s" % self.output())

    def write_config(self, config):
        """config: dict of option -> value or list of values."""
        with open(self.config_path, "w") as f:
            for key, value in config.items():
                for v in (value if isinstance(value, (list, tuple)) else [value]):
                    f.write("%s = %s\n" % (key, v))

    def reload(self, config):
        """Rewrites the config file and sends SIGHUP; waits for the log line."""
        self.write_config(config)
        before = self.output().count("reloaded ")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.output().count("reloaded ") > before:
                return
            time.sleep(0.05)
        raise netns.LabError("pptp-fixupd did not reload: %s" % self.output())

    def stop(self):
        """SIGTERM; returns the exit code (0 on a clean shutdown). A non-zero
        exit or a sanitizer report is also kept in ``failures``, which fails
        the lab's teardown (agent_hooks) even where the test ignores it."""
        if self.proc is None:
            return None
        rc = self.lab.stop_process(self.proc, timeout=10)
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        problem = exit_problem(rc, self.run_output())
        if problem:
            self.failures.append(problem)
        return rc

    def run_output(self):
        """Output of the latest run only (the log holds every run's)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def cleanup(self):
        """Stops the daemon, removes the rules and the tools copy; raises
        LabError when any run of the daemon failed."""
        try:
            self.stop()
            self.remove_rules()
        finally:
            if self.tools_dir is not None:
                shutil.rmtree(self.tools_dir, ignore_errors=True)
                self.tools_dir = None
        if self.failures:
            raise netns.LabError("pptp-fixupd failed: " + " | ".join(self.failures))

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def ctl(self, *args, check=True):
        argv = [os.path.join(bin_dir(), "pptp-fixupctl"), "--socket", self.socket] + list(args)
        r = self.lab.router_exec(argv, check=check)
        return r.stdout

    def ctl_json(self, *args):
        return json.loads(self.ctl("--json", *args))

    def sessions(self, *args):
        return self.ctl_json("sessions", *args)["sessions"]

    def stats(self):
        return self.ctl_json("stats")


def agent_hooks(**agent_kwargs):
    """agent_setup/agent_teardown for Lab(mode="agent")."""

    def setup(lab):
        lab.agent = Agent(lab, **agent_kwargs)
        lab.agent.install_rules()
        lab.agent.start()

    def teardown(lab):
        agent = getattr(lab, "agent", None)
        if agent is not None:
            agent.cleanup()

    return {"agent_setup": setup, "agent_teardown": teardown}


def agent_of(lab):
    return lab.agent
