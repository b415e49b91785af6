"""Drive the real ``pptp`` client (pptp-linux) in a client namespace.

``pptp SERVER --nolaunchpppd`` uses fd 0 as the pppd pty, reading and writing
it, so it gets one end of a ``socketpair()`` as stdin and stdout.  We play
pppd on the other end: write async-HDLC PPP frames with unique payloads and
count how many come back (pptpd's pppd stand-in echoes every frame).

Each client runs under a private tmpfs on /var/run/pptp (its call manager's
Unix socket is named ``/var/run/pptp/<localbind>:<server>``, a path shared by
all network namespaces), always with ``--localbind <client addr>
--nohostroute --nolaunchpppd``.

By default client I runs in namespace "clientI" with ``netns.client_addr(I)``
(or the lab's ``host_addr(role)``, as in ``lab.topology``); ``role`` and
``localbind`` put it anywhere else (an outside host, the router itself).
"""

import os
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time

from . import netns
from .ppp import HdlcDecoder, hdlc_encode, ppp_frame, split_ppp

PROTO_IP = 0x0021
PROTO_LCP = 0xC021


class ClientResult:
    """Outcome of one real client run (also usable while it runs)."""

    def __init__(self, index):
        self.index = index
        self.frames_sent = 0
        self.frames_echoed = 0
        self.first_frame_from_server = False
        self.first_frame_delay = None   # seconds from start() to LCP frame
        self.other_frames = 0           # frames from the server not ours
        self.foreign_frames = 0         # echoed test payloads we never sent
        self.bad_fcs = 0
        self.returncode = None
        self.exited_early = False        # pptp gone before stop()
        self.stderr = ""                 # tail of pptp's stderr

    @property
    def ok(self):
        return self.frames_sent > 0 and self.frames_echoed == self.frames_sent

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}

    def __repr__(self):
        return ("ClientResult(client=%d sent=%d echoed=%d lcp_from_server=%s "
                "rc=%s)" % (self.index, self.frames_sent, self.frames_echoed,
                            self.first_frame_from_server, self.returncode))


class RealClient:
    """One real pptp client whose call can be kept open.

    ``start()`` launches pptp; ``wait_server_frame()`` waits for the stand-in's
    LCP Configure-Request (proof the GRE path back works); ``exchange(n)``
    sends n unique frames and returns how many came back; ``stop()`` sends
    SIGTERM so pptp clears the call and stops the control connection.
    """

    def __init__(self, lab, index, server=netns.SERVER_ADDR, extra_args=(),
                 loglevel=1, role=None, localbind=None):
        self.lab = lab
        self.index = index
        self.server = server
        self.role = role or "client%d" % index
        if localbind is None:
            host_addr = getattr(lab, "host_addr", None)
            localbind = host_addr(self.role) if host_addr else \
                netns.client_addr(index)
        self.localbind = localbind
        self.extra_args = list(extra_args)
        self.loglevel = loglevel
        self.result = ClientResult(index)
        self.tag = secrets.token_hex(3)
        self.proc = None
        self._err = None
        self._sock = None
        self._cond = threading.Condition()
        self._echoed = set()       # payload keys seen back
        self._sent = set()         # payload keys sent
        self._reader = None
        self.eof = False           # pptp closed its end (it exited)
        self._seq = 0
        self._t0 = None
        self._errpath = os.path.join(lab.tmpdir, "pptp-%s-%d-%s.err" %
                                     (self.role, index, self.tag))

    # ---- lifecycle
    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        pptp = ["pptp", self.server, "--localbind", self.localbind, "--nohostroute",
                "--nolaunchpppd", "--loglevel", str(self.loglevel)] + \
            self.extra_args
        script = ("mount -t tmpfs -o size=1m,mode=0755 pflab %s && exec %s"
                  % (netns.PPTP_RUN_DIR, " ".join(map(shlex.quote, pptp))))
        os.makedirs(netns.PPTP_RUN_DIR, exist_ok=True)
        self._err = open(self._errpath, "w+b")
        self._t0 = time.monotonic()
        self.proc = self.lab.spawn(
            self.role,
            ["unshare", "--mount", "sh", "-c", script],
            stdin=theirs, stdout=theirs, stderr=self._err)
        theirs.close()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        return self

    def _read_loop(self):
        dec = HdlcDecoder()
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.eof = True
                    self._cond.notify_all()
                break
            frames = dec.feed(data)
            with self._cond:
                self.result.bad_fcs = dec.bad_fcs
                for fr in frames:
                    proto, payload = split_ppp(fr)
                    if proto == PROTO_IP and payload.startswith(b"PFLAB:"):
                        self._echoed.add(payload)
                    elif proto == PROTO_LCP and not \
                            self.result.first_frame_from_server:
                        self.result.first_frame_from_server = True
                        self.result.first_frame_delay = round(
                            time.monotonic() - self._t0, 3)
                    else:
                        self.result.other_frames += 1
                self._cond.notify_all()

    def wait_server_frame(self, timeout=5.0):
        """Wait for the stand-in's LCP frame; returns True if it arrived."""
        with self._cond:
            self._cond.wait_for(lambda: self.result.first_frame_from_server or
                                self.eof, timeout)
            return self.result.first_frame_from_server

    def exchange(self, n=5, timeout=3.0, interval=0.02):
        """Send n unique frames, wait up to ``timeout`` for echoes.

        Returns the number of these n frames echoed back.
        """
        keys = []
        for _ in range(n):
            self._seq += 1
            key = ("PFLAB:%s:c%d:%d:" % (self.tag, self.index, self._seq)
                   ).encode() + bytes(range(0x18, 0x28))  # needs escaping too
            keys.append(key)
            self._sent.add(key)
            try:
                self._sock.sendall(hdlc_encode(ppp_frame(PROTO_IP, key)))
            except OSError:
                break
            self.result.frames_sent += 1
            if interval:
                time.sleep(interval)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(lambda: self.eof or all(
                k in self._echoed for k in keys),
                max(0.0, deadline - time.monotonic()))
            got = sum(1 for k in keys if k in self._echoed)
            self.result.frames_echoed = len(self._echoed)
            self.result.foreign_frames = len(self._echoed - self._sent)
        return got

    def stop(self, timeout=5.0):
        """SIGTERM pptp (it clears the call, stops the control connection)
        and wait for it and its call manager; returns the ClientResult."""
        if self.proc is not None:
            self.result.exited_early = self.eof or self.proc.poll() is not None
            if self.proc.poll() is None:
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self._wait_callmgr(timeout)
            self.lab.stop_process(self.proc, timeout=1.0)
            self.result.returncode = self.proc.returncode
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(2.0)
        if self._err is not None:
            self._err.close()
            self._err = None
        self.result.stderr = self.stderr_tail()
        return self.result

    def _wait_callmgr(self, timeout):
        """The call manager is a forked child in the same process group."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not netns.group_members(self.proc.pid):
                return True
            time.sleep(0.02)
        return False

    def stderr_tail(self, n=2000):
        try:
            with open(self._errpath, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def run_real_client(lab, client_index, server=netns.SERVER_ADDR, frames=5,
                    timeout=8.0, connect_timeout=None, extra_args=(),
                    role=None, localbind=None):
    """Start one real client, wait for the server's frame, exchange
    ``frames`` frames, stop it.  Returns a ClientResult.

    ``connect_timeout`` (default timeout/2) bounds the wait for the server's
    first frame; the frames are sent even if it never arrives.
    """
    if connect_timeout is None:
        connect_timeout = timeout / 2
    c = RealClient(lab, client_index, server=server, extra_args=extra_args,
                   role=role, localbind=localbind)
    c.start()
    try:
        c.wait_server_frame(connect_timeout)
        c.exchange(frames, timeout=max(1.0, timeout - connect_timeout))
    finally:
        c.stop()
    return c.result


def run_real_clients(lab, indices, **kw):
    """``run_real_client`` for several clients at once (threads).
    Returns the ClientResults in the order of ``indices``."""
    results = [None] * len(indices)
    errors = []

    def one(pos, idx):
        try:
            results[pos] = run_real_client(lab, idx, **kw)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(pos, idx), daemon=True)
               for pos, idx in enumerate(indices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
