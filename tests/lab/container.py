"""A real systemd, booted in a throwaway container, in a lab's namespace.

    with Container(netns_name, hint) as c:      # boots to "running"
        c.exec(["systemctl", "start", "x"])      # nsenter into the container
        c.copy_in(path, "/var/tmp")              # files go through its root

systemd-nspawn boots systemd (this machine's own /, as an overlay whose
changes are thrown away) with ``--network-namespace-path=/run/netns/NAME``:
the container's network is that namespace, so its services see the lab's
interfaces, and the lab's other namespaces reach it as they reach the
router. ``--capability=CAP_NET_ADMIN``: without it the container's services
cannot bind a queue. Nothing is registered with machined (``--register=no``)
and the container is never a unit of the host (``--keep-unit``; this
machine's PID 1 is not systemd anyway).

``close()`` (also on exceptions, and from the atexit hook) halts the
container (SIGRTMIN+3 to its systemd), kills what is left, unmounts the
overlay and removes its directory. Names embed the creating pid and a random
suffix, so containers of parallel tests never meet.
"""

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from . import netns

_active = []
_lock = threading.Lock()


MASKED_UNITS = ("conntrackd.service", "keepalived.service", "pptpd.service")


@atexit.register
def _close_all():
    for c in list(_active):
        c.close()


class ContainerError(RuntimeError):
    pass


class Container:

    def __init__(self, netns_name, hint=""):
        self.netns = netns_name
        self.name = "pf%d-%s%s" % (os.getpid(), secrets.token_hex(3), hint)
        self.dir = None
        self.root = None
        self.proc = None
        self.init_pid = None
        self.console_path = None
        self._console = None
        self._mounted = False
        self._closed = False

    # ---- lifecycle
    def __enter__(self):
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def boot(self, timeout=60.0):
        with _lock:
            _active.append(self)
        self.dir = tempfile.mkdtemp(prefix="pptp-fixup-nspawn-%s-" % self.name)
        upper, work, self.root = (os.path.join(self.dir, d) for d in ("upper", "work", "root"))
        for d in (upper, work, self.root):
            os.mkdir(d)
        netns.run(["mount", "-t", "overlay", "overlay", "-o",
                   "lowerdir=/,upperdir=%s,workdir=%s" % (upper, work), self.root])
        self._mounted = True
        # Daemons the test run installed on this machine (whose packages
        # enable them) would start in the gateway's namespace with their
        # default configs: masked in this container only.
        system = os.path.join(self.root, "etc/systemd/system")
        os.makedirs(system, exist_ok=True)
        for unit in MASKED_UNITS:
            link = os.path.join(system, unit)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink("/dev/null", link)
        self.console_path = os.path.join(self.dir, "console.log")
        self._console = open(self.console_path, "w+b")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", self.root, "--machine=" + self.name, "--register=no", "--keep-unit",
             "--capability=CAP_NET_ADMIN", "--network-namespace-path=/run/netns/" + self.netns,
             "-b", "--console=pipe"],
            stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        # The container's PID 1 is systemd-nspawn's child.
        while self.init_pid is None:
            if self.proc.poll() is not None:
                raise ContainerError("systemd-nspawn exited with %s: %s" % (self.proc.returncode, self.console()))
            if time.monotonic() > deadline:
                raise ContainerError("no container init after %ss: %s" % (timeout, self.console()))
            children = netns.run(["pgrep", "-P", str(self.proc.pid)], check=False).stdout.split()
            if children:
                self.init_pid = int(children[0])
            else:
                time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            state = self.exec(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise ContainerError("container systemd not up (%r): %s" % (state, self.console()))

    def close(self):
        """Halt, kill what is left, unmount, remove; safe more than once."""
        if self._closed:
            return
        self._closed = True
        errors = []
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.init_pid is not None:
                    try:
                        os.kill(self.init_pid, signal.SIGRTMIN + 3)  # systemd: halt
                    except ProcessLookupError:
                        pass
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    errors.append("the container did not halt in 20 s; killed")
                    for pid in (self.init_pid, self.proc.pid):
                        try:
                            os.kill(pid, signal.SIGKILL)  # init: the whole pid namespace goes
                        except (ProcessLookupError, TypeError):
                            pass
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        errors.append("systemd-nspawn still running")
            if self._console is not None:
                self._console.close()
            if self._mounted:
                r = netns.run(["umount", self.root], check=False)
                if r.returncode != 0:
                    # Something still holds it: detach now, it goes when released.
                    errors.append("umount %s: %s" % (self.root, r.stderr.strip()))
                    netns.run(["umount", "-l", self.root], check=False)
                self._mounted = False
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            with _lock:
                if self in _active:
                    _active.remove(self)
        if errors:
            raise ContainerError("container cleanup: " + "; ".join(errors))

    # ---- use
    def console(self, n=3000):
        try:
            with open(self.console_path, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except (OSError, TypeError):
            return ""

    def command(self, argv):
        """argv run inside the container (its mount, UTS, IPC, network and
        pid namespaces)."""
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p"] + list(argv)

    def exec(self, argv, timeout=60, check=True, input=None, env=None):
        return netns.run(self.command(argv), timeout=timeout, check=check, input=input, env=env)

    def sh(self, script, **kw):
        return self.exec(["sh", "-c", script], **kw)

    def path(self, inside):
        """Host path of a file inside the container's root (the overlay).
        Not for /tmp, /run, /dev: the container mounts its own there."""
        return os.path.join(self.root, inside.lstrip("/"))

    def copy_in(self, src, directory="/var/tmp"):
        dst = os.path.join(self.path(directory), os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        return os.path.join(directory, os.path.basename(src))
