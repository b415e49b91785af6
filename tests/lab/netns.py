"""Network-namespace lab: N PPTP clients behind one masquerading router.

Topology (fixed addresses and names)::

    clientI (eth0 198.18.0.(10+I)/24, default via 198.18.0.1)
        |  veth (router end "vcI", enslaved to br-in)
    router  (br-in 198.18.0.1/24, out0 203.0.113.1/24, ip_forward=1,
             rp_filter 0, FORWARD policy DROP + ESTABLISHED,RELATED,
             br-in -> out0 accept, nat POSTROUTING -o out0 MASQUERADE)
        |  veth (out0 <-> server eth0)
    server  (eth0 203.0.113.10/24, no route back to 198.18.0.0/15)

Every interface is created directly inside its namespace; nothing appears in
the root namespace.  ``Lab`` is a context manager that always removes what it
made (namespaces, every process inside them, its temp dir) on exit, on
exceptions and on SIGTERM/SIGINT.  Namespace names embed the creating pid, a
counter and a random suffix, so several labs can run in parallel.

Modes: ``"plain"`` (only the user's rules), ``"kernel-helper"`` (also the
kernel's PPTP helper via ``raw PREROUTING -p tcp --dport 1723 -j CT --helper
pptp``), ``"agent"`` (calls ``agent_setup(lab)`` after building and
``agent_teardown(lab)`` before removing; the callback installs the project's
rules and starts the daemon with ``lab.router_exec`` / ``lab.spawn``).
"""

import atexit
import itertools
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(LAB_DIR)
STANDIN = os.path.join(LAB_DIR, "pppd-standin")
PYTHON = "/usr/bin/python3"

ROUTER_IN = "198.18.0.1"
ROUTER_OUT = "203.0.113.1"
SERVER_ADDR = "203.0.113.10"
INSIDE_NET = "198.18.0.0/24"
OUTSIDE_NET = "203.0.113.0/24"
PPTP_RUN_DIR = "/var/run/pptp"
MODES = ("plain", "kernel-helper", "agent")
# IPv6 off in every namespace: no router solicitations or MLD in captures.
_NO_IPV6 = ["net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1"]


def client_addr(i):
    """Address of client ``i`` (1-based)."""
    return "198.18.0.%d" % (10 + i)


class LabError(RuntimeError):
    pass


class LabTerminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGINT while a Lab is active.

    A KeyboardInterrupt subclass so unittest does not swallow it; ``with Lab``
    blocks unwind and clean up on the way out.
    """

    def __init__(self, signum):
        super().__init__("signal %d" % signum)
        self.signum = signum


# ---------------------------------------------------------------- registry

_lock = threading.RLock()
_active = []            # labs entered and not yet closed
_saved_handlers = {}    # signum -> previous handler, while any lab is active
_counter = itertools.count(1)
_cleaning = threading.local()


_pending_signal = []


def _on_signal(signum, frame):
    if getattr(_cleaning, "busy", False):
        # Never interrupt a cleanup; raise once it is done.
        _pending_signal.append(signum)
        return
    raise LabTerminated(signum)


def _install_handlers():
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if sig not in _saved_handlers:
            _saved_handlers[sig] = signal.signal(sig, _on_signal)


def _restore_handlers():
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, old in list(_saved_handlers.items()):
        signal.signal(sig, old)
        del _saved_handlers[sig]


@atexit.register
def _cleanup_all():
    for lab in list(_active):
        lab.close()


def run(argv, timeout=30, check=True, input=None, env=None):
    """Run argv, capture output (text).  Errors include the command's stderr."""
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, text=True,
                            timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise LabError("timeout after %ss: %s\nstdout: %s\nstderr: %s" % (
            timeout, " ".join(argv), _txt(e.stdout), _txt(e.stderr))) from None
    if check and cp.returncode != 0:
        raise LabError("exit %d: %s\nstdout: %s\nstderr: %s" % (
            cp.returncode, " ".join(argv), cp.stdout.strip(),
            cp.stderr.strip()))
    return cp


def _txt(b):
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def read_line(pipe, timeout):
    """The first line a child writes to ``pipe`` (bytes, newline included),
    or what came before EOF or ``timeout`` seconds: a stuck child never hangs
    the test. Reads the file descriptor itself, byte by byte, so nothing
    stays behind in a Python buffer."""
    fd = pipe.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


def list_netns():
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns):
    cp = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def _kill_ns_processes(ns, grace=1.0):
    pids = ns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.05)
        pids = ns_pids(ns)
        if not pids:
            return


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid):
    """Live (non-zombie) pids whose process group is ``pgid``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d))
    return out


def reap_stale(prefix="pf"):
    """Remove lab namespaces left by dead processes (e.g. after SIGKILL).

    Only names of the form ``pf<pid>-...`` whose pid is gone are touched.
    Returns the names removed.
    """
    removed = []
    for ns in list_netns():
        if not ns.startswith(prefix) or "-" not in ns:
            continue
        pid = ns[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        _kill_ns_processes(ns)
        run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


# --------------------------------------------------------------------- Lab

class Lab:
    """Namespace topology; use as ``with Lab(...) as lab:``.

    Parameters: ``clients`` (N, default 3), ``mode`` (see MODES),
    ``agent_setup`` / ``agent_teardown`` (callables taking the lab; only
    called in mode "agent"), ``keep_bridge_nf`` (default False: the router
    sets net.bridge.bridge-nf-call-{ip,ip6,arp}tables=0 so packets from the
    clients meet iptables once, in the IP stack, as on a router without
    br_netfilter; this kernel has br_netfilter built in).
    """

    def __init__(self, clients=3, mode="plain", agent_setup=None,
                 agent_teardown=None, keep_bridge_nf=False, name_hint=""):
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % (MODES,))
        if mode == "agent" and agent_setup is None:
            raise ValueError('mode "agent" needs agent_setup')
        self.n_clients = int(clients)
        self.mode = mode
        self.agent_setup = agent_setup
        self.agent_teardown = agent_teardown
        self.keep_bridge_nf = keep_bridge_nf
        self.id = "pf%d-%d%s%s" % (os.getpid(), next(_counter),
                                   secrets.token_hex(2), name_hint)
        self.namespaces = {}        # role -> ns name, in creation order
        self.procs = []             # Popen objects, for cleanup
        self.tmpdir = None
        self.pptpd = None
        self._agent_up = False
        self._closed = False
        self._entered = False

    # ---- names and addresses
    def ns_name(self, role):
        """Namespace name for "router", "server", "clientI" or int I."""
        if isinstance(role, int):
            role = "client%d" % role
        if role in self.namespaces:
            return self.namespaces[role]
        if role in self.namespaces.values():
            return role
        raise KeyError("no namespace for role %r" % (role,))

    def _role_ns(self, role):
        return {"router": "r", "server": "s"}.get(role) or \
            "c" + role[len("client"):]

    @property
    def router_ns(self):
        return self.ns_name("router")

    @property
    def server_ns(self):
        return self.ns_name("server")

    def client_ns(self, i):
        return self.ns_name("client%d" % i)

    client_addr = staticmethod(client_addr)
    server_addr = SERVER_ADDR
    router_outside_addr = ROUTER_OUT
    router_inside_addr = ROUTER_IN
    outside_if = "out0"
    inside_if = "br-in"

    # ---- context manager
    def __enter__(self):
        with _lock:
            _active.append(self)
            _install_handlers()
        self._entered = True
        try:
            self.tmpdir = tempfile.mkdtemp(prefix="pflab-%s-" % self.id)
            self._build()
            if self.mode == "agent":
                self._agent_up = True
                self.agent_setup(self)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- exec helpers
    def exec(self, role, argv, timeout=30, check=True, input=None, env=None):
        """Run argv in a namespace (``ip netns exec``), captured text output."""
        return run(["ip", "netns", "exec", self.ns_name(role)] + list(argv),
                   timeout=timeout, check=check, input=input, env=env)

    def router_exec(self, argv, **kw):
        return self.exec("router", argv, **kw)

    def server_exec(self, argv, **kw):
        return self.exec("server", argv, **kw)

    def client_exec(self, i, argv, **kw):
        return self.exec("client%d" % i, argv, **kw)

    def spawn(self, role, argv, **popen_kwargs):
        """Start argv in a namespace; registered for cleanup.

        Runs in its own session (process group) unless the caller says
        otherwise, so cleanup can signal the whole group.
        """
        popen_kwargs.setdefault("start_new_session", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns_name(role)] +
                             list(argv), **popen_kwargs)
        p.lab_role = role
        with _lock:
            self.procs.append(p)
        return p

    def stop_process(self, p, timeout=3.0, sig=signal.SIGTERM):
        """``sig`` to p's process group, SIGKILL after ``timeout``; returns rc."""
        if p.poll() is None:
            _signal_group(p, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        else:
            _signal_group(p, signal.SIGKILL)  # stray group members
        with _lock:
            if p in self.procs:
                self.procs.remove(p)
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        return p.returncode

    def ns_pids(self, role):
        return ns_pids(self.ns_name(role))

    # ---- build
    def _build(self):
        roles = ["router", "server"] + ["client%d" % i
                                        for i in range(1, self.n_clients + 1)]
        for role in roles:
            name = "%s-%s" % (self.id, self._role_ns(role))
            run(["ip", "netns", "add", name])
            self.namespaces[role] = name
        r, s = self.router_ns, self.server_ns
        batch = ["link add out0 netns %s type veth peer name eth0 netns %s"
                 % (r, s)]
        for i in range(1, self.n_clients + 1):
            batch.append("link add eth0 netns %s type veth peer name vc%d "
                         "netns %s" % (self.client_ns(i), i, r))
        run(["ip", "-batch", "-"], input="\n".join(batch) + "\n")

        rb = ["link set lo up",
              "link add br-in type bridge",
              "addr add %s/24 dev br-in" % ROUTER_IN,
              "addr add %s/24 dev out0" % ROUTER_OUT]
        for i in range(1, self.n_clients + 1):
            rb += ["link set vc%d master br-in" % i, "link set vc%d up" % i]
        rb += ["link set br-in up", "link set out0 up"]
        run(["ip", "-n", r, "-batch", "-"], input="\n".join(rb) + "\n")
        run(["ip", "-n", s, "-batch", "-"], input="\n".join([
            "link set lo up", "addr add %s/24 dev eth0" % SERVER_ADDR,
            "link set eth0 up"]) + "\n")
        for i in range(1, self.n_clients + 1):
            run(["ip", "-n", self.client_ns(i), "-batch", "-"],
                input="\n".join([
                    "link set lo up",
                    "addr add %s/24 dev eth0" % client_addr(i),
                    "link set eth0 up",
                    "route add default via %s" % ROUTER_IN]) + "\n")

        for role in roles[1:]:
            self.exec(role, ["sysctl", "-q", "-w"] + _NO_IPV6)
        sysctls = ["net.ipv4.ip_forward=1"] + _NO_IPV6
        for dev in ["all", "default", "br-in", "out0"] + [
                "vc%d" % i for i in range(1, self.n_clients + 1)]:
            sysctls.append("net.ipv4.conf.%s.rp_filter=0" % dev)
        if not self.keep_bridge_nf and os.path.exists(
                "/proc/sys/net/bridge/bridge-nf-call-iptables"):
            sysctls += ["net.bridge.bridge-nf-call-iptables=0",
                        "net.bridge.bridge-nf-call-ip6tables=0",
                        "net.bridge.bridge-nf-call-arptables=0"]
        self.router_exec(["sysctl", "-q", "-w"] + sysctls)

        # The user's own firewall.
        for rule in (
                ["-P", "FORWARD", "DROP"],
                ["-A", "FORWARD", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                ["-A", "FORWARD", "-i", "br-in", "-o", "out0", "-j", "ACCEPT"],
                ["-t", "nat", "-A", "POSTROUTING", "-o", "out0",
                 "-j", "MASQUERADE"]):
            self.router_exec(["iptables", "-w"] + rule)
        if self.mode == "kernel-helper":
            self.router_exec(["iptables", "-w", "-t", "raw", "-A",
                              "PREROUTING", "-p", "tcp", "--dport", "1723",
                              "-j", "CT", "--helper", "pptp"])

    # ---- pptpd
    def start_pptpd(self, connections=100, extra_conf=(), extra_args=(),
                    wait=10.0):
        """Start pptpd (foreground, private config and pid file) in the
        server namespace with the pppd stand-in; wait until 1723 listens."""
        if self.pptpd is not None:
            raise LabError("pptpd already started")
        d = os.path.join(self.tmpdir, "pptpd")
        os.makedirs(d)
        opt = os.path.join(d, "options")
        open(opt, "w").close()
        conf = os.path.join(d, "pptpd.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "ppp %s" % STANDIN,
                "option %s" % opt,
                "localip 10.255.0.1",
                "remoteip 10.255.1.1-250",
                "listen %s" % SERVER_ADDR,
                "connections %d" % connections,
                "noipparam",
            ] + list(extra_conf)) + "\n")
        self.pptpd_log = open(os.path.join(d, "pptpd.log"), "w+b")
        self.pptpd = self.spawn("server", [
            "pptpd", "-c", conf, "-f", "-p", os.path.join(d, "pptpd.pid")]
            + list(extra_args), stdin=subprocess.DEVNULL,
            stdout=self.pptpd_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.pptpd.poll() is not None:
                raise LabError("pptpd exited with %s: %s" % (
                    self.pptpd.returncode, self._pptpd_output()))
            if self.listening("server", 1723):
                return self.pptpd
            time.sleep(0.05)
        raise LabError("pptpd not listening on 1723 after %ss: %s" % (
            wait, self._pptpd_output()))

    def _pptpd_output(self):
        try:
            self.pptpd_log.seek(0)
            return self.pptpd_log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def listening(self, role, port):
        out = self.exec(role, ["ss", "-ltnH", "sport = :%d" % port],
                        check=False).stdout
        return bool(out.strip())

    def capture(self, role, path=None, iface="eth0", bpf=(), wait=5.0):
        """Start tcpdump in a namespace; returns (Popen, pcap path) once it
        is capturing.  --immediate-mode and -U: without them libpcap holds
        packets up to 1 s and loses the last ones on SIGTERM.  -Z root: the
        lab's temp dir is 0700 root.  Read it with ``read_pcap``.  Stopped
        with the lab or ``stop_process``.  ``iface="any"`` captures every
        interface (as Linux cooked v1, which ``lab.pcap`` reads)."""
        if path is None:
            path = os.path.join(self.tmpdir, "%s-%s.pcap" % (role, iface))
        options = ["-y", "LINUX_SLL"] if iface == "any" else []
        p = self.spawn(role, ["tcpdump", "-i", iface, "-n", "-Z", "root",
                              "-U", "--immediate-mode"] + options + ["-w", path]
                       + list(bpf), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + wait
        line = read_line(p.stderr, wait)  # "listening on ..." once capturing
        while options and line.startswith(b"tcpdump: data link type"):
            line = read_line(p.stderr, max(0.0, deadline - time.monotonic()))
        if b"listening" not in line:
            self.stop_process(p)
            raise LabError("tcpdump in %s did not start: %r" % (role, line))
        return p, path

    @staticmethod
    def read_pcap(path, bpf=(), extra=("-n",)):
        """Text of ``tcpdump -r path`` (as root, no privilege drop)."""
        return run(["tcpdump", "-Z", "root", "-r", path] + list(extra) +
                   list(bpf)).stdout

    def conntrack(self, *args):
        """``conntrack -L`` (or other args) in the router; text output."""
        return self.router_exec(["conntrack"] + (list(args) or ["-L"]),
                                check=False).stdout

    # ---- teardown
    def close(self):
        """Remove everything; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        _cleaning.busy = True
        errors = []
        try:
            if self._agent_up and self.agent_teardown is not None:
                try:
                    self.agent_teardown(self)
                except Exception as e:  # keep cleaning
                    errors.append("agent_teardown: %r" % (e,))
            for p in reversed(list(self.procs)):
                try:
                    self.stop_process(p, timeout=2.0)
                except Exception as e:
                    errors.append("stop %s: %r" % (p.args, e))
            for ns in reversed(list(self.namespaces.values())):
                try:
                    _kill_ns_processes(ns)
                except Exception as e:
                    errors.append("kill in %s: %r" % (ns, e))
            for ns in reversed(list(self.namespaces.values())):
                cp = run(["ip", "netns", "del", ns], check=False)
                if cp.returncode != 0 and ns in list_netns():
                    errors.append("netns del %s: %s" % (ns, cp.stderr))
            if getattr(self, "pptpd_log", None):
                self.pptpd_log.close()
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
        finally:
            _cleaning.busy = False
            with _lock:
                if self in _active:
                    _active.remove(self)
                if not _active:
                    _restore_handlers()
        if _pending_signal and \
                threading.current_thread() is threading.main_thread():
            signum = _pending_signal.pop()
            _pending_signal.clear()
            raise LabTerminated(signum)
        if errors:
            raise LabError("cleanup problems: " + "; ".join(errors))


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
