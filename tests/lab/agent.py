"""Run the project's own agent in a Lab: rules from rules/, pptp-fixupd and
pptp-fixupctl from the build tree (PPTP_FIXUP_BIN, default build/debug/src).

    with Lab(mode="agent", **agent_hooks()) as lab:
        ...
        agent_of(lab).sessions()
"""

import json
import os
import signal
import subprocess
import time

from . import netns

REPO = os.path.dirname(os.path.dirname(netns.LAB_DIR))
RULES_TOOL = os.path.join(REPO, "rules", "pptp-fixup-rules")
RULES_FILE = os.path.join(REPO, "rules", "pptp-fixup.rules")
QUEUE = 7


def bin_dir():
    return os.environ.get("PPTP_FIXUP_BIN", os.path.join(REPO, "build", "debug", "src"))


class Agent:
    """pptp-fixupd running in the router namespace of a lab."""

    def __init__(self, lab, queue=QUEUE, ports=(1723,), extra_args=(), config=None):
        self.lab = lab
        self.queue = queue
        self.ports = list(ports)
        self.extra_args = list(extra_args)
        self.config_path = os.path.join(lab.tmpdir, "pptp-fixupd.conf")
        self.config = config
        self.socket = os.path.join(lab.tmpdir, "pptp-fixupd.sock")
        self.log_path = os.path.join(lab.tmpdir, "pptp-fixupd.log")
        self.proc = None
        self.log = None

    def install_rules(self):
        self.lab.router_exec([RULES_TOOL, "install", "--outside", self.lab.outside_if,
                              "--queue", str(self.queue),
                              "--ports", ",".join(str(p) for p in self.ports),
                              "--rules", RULES_FILE])

    def remove_rules(self):
        self.lab.router_exec([RULES_TOOL, "remove", "--rules", RULES_FILE], check=False)

    def start(self, wait=10.0):
        self.log = open(self.log_path, "ab")
        argv = [os.path.join(bin_dir(), "pptp-fixupd"), "--queue", str(self.queue),
                "--outside", self.lab.outside_if, "--control-socket", self.socket]
        if self.config is not None:
            # Ports come from the config file then, so a reload can change them.
            self.write_config(self.config)
            argv += ["--config", self.config_path]
        else:
            for p in self.ports:
                argv += ["--fixup-port", str(p)]
        argv += ["--rules-command", RULES_TOOL] + self.extra_args
        # ASan in the debug build: leaks fail the run at exit.
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
        self.proc = self.lab.spawn("router", argv, stdin=subprocess.DEVNULL,
                                   stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
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
        """SIGTERM; returns the exit code (0 on a clean shutdown)."""
        if self.proc is None:
            return None
        rc = self.lab.stop_process(self.proc, timeout=10)
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        return rc

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
            agent.stop()
            agent.remove_rules()

    return {"agent_setup": setup, "agent_teardown": teardown}


def agent_of(lab):
    return lab.agent
