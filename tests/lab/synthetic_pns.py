"""A small synthetic PPTP client (PNS) that speaks RFC 2637 to a real PAC.

Run inside a client namespace with tests/ on PYTHONPATH::

    python3 -m lab.synthetic_pns --server 203.0.113.10 --call-id 7 --frames 5

Control: SCCRQ -> SCCRP, OCRQ (our chosen Call ID) -> OCRP (PAC's Call ID),
then GRE (raw socket, protocol 47): enhanced GRE v1, K and S set, increasing
sequence numbers from 1 (``--seq-start``), ack of the last received sequence number piggy-
backed, key = payload length + the PAC's Call ID, payload = an unframed PPP
frame (FF 03 0021 "PFSYN:..."), unique per frame.  Received GRE is accepted
only from the server with the GRE call ID equal to our own Call ID; the
PAC's first packet is the pppd stand-in's LCP Configure-Request.  Then
CCRQ -> CDN, StopCCRQ -> StopCCRP, close.

Prints one JSON line; exit 0 if every frame came back, else 1 (2 on a
protocol/connection error before any GRE).

Segmenting options (for testing a fixup's stream reassembly):
``--split-at`` cuts the outbound control byte stream at the given offsets,
each either absolute (``200``: byte 200 of everything we send on the TCP
connection) or relative to a message (``OCRQ:13``: byte 13 of our first OCRQ;
``SCCRQ``, ``OCRQ``, ``CCRQ``, ``StopCCRQ``); every piece goes in its own
``send()`` with TCP_NODELAY and ``--split-delay`` seconds in between.
``--coalesce`` sends SCCRQ and OCRQ in one ``send()`` without waiting for
SCCRP.  Both combine: ``--coalesce --split-at OCRQ:13`` sends SCCRQ plus the
first 13 bytes of OCRQ (cut inside its Call ID field) in one segment and the
rest in a second; absolute offsets cut the concatenated stream anywhere.

``--frame-size N`` pads each data frame's PPP payload to N bytes (default:
just the unique key, about 40 bytes); with N above about 1460 the GRE packet
exceeds a 1500-byte MTU and leaves the host as IP fragments.

``--interactive`` holds the call after the first frames (and ``--hold``)
until told otherwise on stdin, one command a line, reading GRE and answering
Echo-Requests meanwhile; each command's outcome is one JSON line on stdout
(``"event"`` names it; the first, ``ready``, comes once the first frames are
done): ``send N [TIMEOUT]`` sends N more frames and waits (default
``--timeout``) until they are all echoed; ``status`` reports; ``clear`` goes
on with CCRQ/StopCCRQ as without the option; ``close`` closes the TCP
connection without a Call-Clear-Request; end of input is ``clear`` (or
``close`` with ``--no-clear``).  ``HeldCall`` drives it from a test.  Every
result counts ``gre_rx_foreign``: PPP data frames on our Call ID that are
not ours (another client's echoes).
"""

import argparse
import fcntl
import json
import os
import select
import socket
import struct
import sys
import termios
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from lab import pptp_proto as P  # noqa: E402
from lab.ppp import ppp_frame, split_ppp  # noqa: E402

PROTO_IP = 0x0021
OUR_MSGS = ("SCCRQ", "OCRQ", "CCRQ", "StopCCRQ")


class ProtocolError(Exception):
    pass


class Pns:
    def __init__(self, args):
        self.a = args
        self.res = {
            "call_id": args.call_id, "peer_call_id": None,
            "frames_sent": 0, "frames_echoed": 0,
            "sccrp_result": None, "ocrp_result": None, "ocrp_error": None,
            "cdn_call_id": None, "cdn_result": None, "stopccrp_result": None,
            "lcp_from_server": False, "gre_rx": 0, "gre_rx_ack_only": 0,
            "gre_rx_other_call": 0, "gre_rx_bad": 0, "rx_seq_first": None,
            "ctrl_rx": [], "segments_sent": 0, "error": None,
            "local": None, "closed_after_ccrq": False,
            "gre_rx_foreign": 0,
        }
        self.stream_pos = 0
        self.msg_start = {}          # message name -> stream offset
        self.abs_cuts = set()
        self.rel_cuts = []           # (name, offset)
        for item in filter(None, (args.split_at or "").split(",")):
            if ":" in item:
                name, off = item.split(":", 1)
                if name not in OUR_MSGS:
                    raise SystemExit("--split-at: unknown message %r" % name)
                self.rel_cuts.append((name, int(off)))
            else:
                self.abs_cuts.add(int(item))
        self.ctrl = P.CtrlStream()
        self.pending = []            # parsed control messages not yet used
        self.gre_seq = (args.seq_start - 1) & 0xFFFFFFFF
        self.last_rx_seq = None
        self.acked_rx_seq = None
        self.echoed = set()
        self.keys = []

    # ---- control channel
    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.a.bind:
            s.bind((self.a.bind, 0))
        s.settimeout(self.a.timeout)
        s.connect((self.a.server, self.a.port))
        self.res["local"] = "%s:%d" % s.getsockname()
        self.sock = s

    def send_msgs(self, msgs):
        """Send [(name, bytes)] as one stream chunk, cut at split points."""
        data = b""
        for name, m in msgs:
            self.msg_start.setdefault(name, self.stream_pos + len(data))
            data += m
        start, end = self.stream_pos, self.stream_pos + len(data)
        cuts = {c for c in self.abs_cuts if start < c < end}
        for name, off in self.rel_cuts:
            if name in self.msg_start:
                c = self.msg_start[name] + off
                if start < c < end:
                    cuts.add(c)
        pos = start
        for c in sorted(cuts) + [end]:
            self.sock.sendall(data[pos - start:c - start])
            self.res["segments_sent"] += 1
            pos = c
            if c != end and self.a.nagle:
                self.wait_acknowledged()
            elif c != end and self.a.split_delay:
                time.sleep(self.a.split_delay)
        self.stream_pos = end

    def wait_acknowledged(self):
        """Classic Nagle (as Windows sends): nothing more until every byte
        sent is acknowledged. A stall shows as an error."""
        deadline = time.monotonic() + self.a.timeout
        while True:
            unacked = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            if unacked == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("Nagle sender stalled: %d bytes never acknowledged" % unacked)
            time.sleep(0.01)

    def recv_msg(self, want, timeout=None):
        """Wait for a control message named ``want``; answer Echo-Requests.
        Returns the parsed message or raises ProtocolError."""
        deadline = time.monotonic() + (timeout or self.a.timeout)
        while True:
            for i, m in enumerate(self.pending):
                if m["name"] == want:
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("timeout waiting for %s" % want)
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(65536)
            if not data:
                raise ProtocolError("connection closed waiting for %s" % want)
            self._got_ctrl(data)

    def _got_ctrl(self, data):
        for m in self.ctrl.feed(data):
            self.res["ctrl_rx"].append(m["name"])
            if m["name"] == "EchoRQ":
                self.send_msgs([("EchoRP", P.echorp(m["ident"]))])
            else:
                self.pending.append(m)

    # ---- GRE
    def open_gre(self):
        g = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
        if self.a.bind:
            g.bind((self.a.bind, 0))
        self.gre = g

    def send_frame(self, n):
        key = ("PFSYN:%d:%d:%d:" % (os.getpid(), self.a.call_id, n)).encode() \
            + bytes(range(0x18, 0x28))
        if self.a.frame_size > len(key):
            # Every byte value, HDLC flag and escape included.
            key += bytes((i * 7 + n) & 0xFF
                         for i in range(self.a.frame_size - len(key)))
        self.keys.append(key)
        self.gre_seq = (self.gre_seq + 1) & 0xFFFFFFFF
        ack = None
        if self.last_rx_seq is not None and not self.a.no_ack:
            ack = self.last_rx_seq
            self.acked_rx_seq = ack
        pkt = P.gre_build(self.peer_call_id, ppp_frame(PROTO_IP, key),
                          seq=self.gre_seq, ack=ack)
        self.gre.sendto(pkt, (self.a.server, 0))
        self.res["frames_sent"] += 1

    def poll_gre(self, timeout, until=None):
        """Read GRE (and control) for up to ``timeout`` seconds, or until
        ``until()`` is true (checked before each wait)."""
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.gre, self.sock], [], [], left)
            if self.sock in r:
                data = self.sock.recv(65536)
                if not data:
                    raise ProtocolError("control connection closed")
                self._got_ctrl(data)
            if self.gre in r:
                pkt = self.gre.recv(65536)
                self._got_gre(pkt)

    def all_echoed(self):
        return all(k in self.echoed for k in self.keys)

    def _got_gre(self, pkt):
        src, _dst, proto, l4 = P.strip_ipv4(pkt)
        if proto != 47 or src != self.a.server:
            return
        g = P.gre_parse(l4)
        if g is None or g["version"] != 1 or g["proto"] != P.GRE_PROTO_PPP:
            self.res["gre_rx_bad"] += 1
            return
        if g["call_id"] != self.a.call_id:
            self.res["gre_rx_other_call"] += 1
            return
        self.res["gre_rx"] += 1
        if g["seq"] is not None:
            if self.res["rx_seq_first"] is None:
                self.res["rx_seq_first"] = g["seq"]
            self.last_rx_seq = g["seq"]
        if not g["payload"]:
            self.res["gre_rx_ack_only"] += 1
            return
        proto, payload = split_ppp(g["payload"])
        if proto == 0xC021:
            self.res["lcp_from_server"] = True
        elif proto == PROTO_IP and payload in self.keys:
            self.echoed.add(payload)
        elif proto == PROTO_IP:
            self.res["gre_rx_foreign"] += 1

    # ---- --interactive
    def report(self, event, **extra):
        self.res["frames_echoed"] = len(self.echoed)
        out = dict(self.res, event=event, **extra)
        out.pop("ctrl_rx", None)
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        sys.stdout.flush()

    def interact(self):
        """Commands from stdin until ``clear`` or ``close``; returns which."""
        self.report("ready")
        fd = sys.stdin.fileno()
        buf = b""
        while True:
            while b"\n" not in buf:
                r, _, _ = select.select([fd, self.gre, self.sock], [], [])
                if self.sock in r:
                    data = self.sock.recv(65536)
                    if not data:
                        raise ProtocolError("control connection closed")
                    self._got_ctrl(data)
                if self.gre in r:
                    self._got_gre(self.gre.recv(65536))
                if fd in r:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        return "close" if self.a.no_clear else "clear"
                    buf += chunk
            line, buf = buf.split(b"\n", 1)
            words = line.decode().split()
            if not words:
                continue
            if words[0] in ("clear", "close"):
                return words[0]
            if words[0] == "send":
                n = int(words[1])
                timeout = float(words[2]) if len(words) > 2 else self.a.timeout
                first = len(self.keys)
                for i in range(n):
                    self.send_frame(first + i)
                    self.poll_gre(self.a.interval)
                self.poll_gre(timeout, self.all_echoed)
                new = sum(1 for k in self.keys[first:] if k in self.echoed)
                self.report("sent", sent=n, echoed_new=new)
            elif words[0] == "status":
                self.report("status")
            else:
                self.report("error", command=line.decode())

    # ---- the whole run
    def run(self):
        a = self.a
        self.connect()
        self.open_gre()
        ocrq = P.ocrq(a.call_id, serial=a.serial)
        if a.coalesce:
            self.send_msgs([("SCCRQ", P.sccrq()), ("OCRQ", ocrq)])
            sccrp = self.recv_msg("SCCRP")
        else:
            self.send_msgs([("SCCRQ", P.sccrq())])
            sccrp = self.recv_msg("SCCRP")
        self.res["sccrp_result"] = sccrp["result"]
        if sccrp["result"] != 1:
            raise ProtocolError("SCCRP result %d" % sccrp["result"])
        if not a.coalesce:
            self.send_msgs([("OCRQ", ocrq)])
        ocrp = self.recv_msg("OCRP")
        self.res.update(peer_call_id=ocrp["call_id"],
                        ocrp_result=ocrp["result"], ocrp_error=ocrp["error"],
                        ocrp_peer_call_id=ocrp["peer_call_id"])
        if ocrp["result"] != 1:
            raise ProtocolError("OCRP result %d" % ocrp["result"])
        self.peer_call_id = ocrp["call_id"]
        # The PAC speaks first (the stand-in's LCP frame); wait briefly.
        self.poll_gre(min(a.timeout, a.first_wait),
                      lambda: self.res["lcp_from_server"])
        for n in range(a.frames):
            self.send_frame(n)
            self.poll_gre(a.interval)
        self.poll_gre(a.timeout, self.all_echoed)
        if a.hold:
            self.poll_gre(a.hold)
        self.res["frames_echoed"] = len(self.echoed)
        if a.interactive and self.interact() == "close":
            return
        if a.no_clear and not a.interactive:
            return
        self.send_msgs([("CCRQ", P.ccrq(a.call_id))])
        # RFC 2637 wants a CDN; PoPToP 1.4.0 instead closes the control
        # connection right away.  Both are recorded, neither is an error.
        try:
            cdn = self.recv_msg("CDN")
        except ProtocolError as e:
            if "closed" not in str(e):
                raise
            self.res["closed_after_ccrq"] = True
            return
        self.res.update(cdn_call_id=cdn["call_id"], cdn_result=cdn["result"])
        self.send_msgs([("StopCCRQ", P.stopccrq())])
        try:
            rp = self.recv_msg("StopCCRP")
        except ProtocolError as e:
            if "closed" not in str(e):
                raise
            self.res["closed_after_stopccrq"] = True
            return
        self.res["stopccrp_result"] = rp["result"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m lab.synthetic_pns",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="203.0.113.10")
    ap.add_argument("--port", type=int, default=P.PPTP_PORT)
    ap.add_argument("--bind", default=None, help="local address")
    ap.add_argument("--call-id", type=int, default=7)
    ap.add_argument("--serial", type=int, default=0)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.02,
                    help="seconds between data frames")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="per control reply and for the echoes")
    ap.add_argument("--first-wait", type=float, default=1.0,
                    help="max seconds to wait for the PAC's first GRE")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="keep the call this long before clearing it")
    ap.add_argument("--split-at", default="",
                    help="comma list of stream offsets or MSG:offset")
    ap.add_argument("--split-delay", type=float, default=0.05)
    ap.add_argument("--nagle", action="store_true",
                    help="after each cut, wait until all sent bytes are acknowledged")
    ap.add_argument("--coalesce", action="store_true",
                    help="SCCRQ and OCRQ in one send()")
    ap.add_argument("--frame-size", type=int, default=0,
                    help="pad each PPP payload to this many bytes")
    ap.add_argument("--seq-start", type=lambda v: int(v, 0), default=1,
                    help="first GRE sequence number (default 1)")
    ap.add_argument("--no-ack", action="store_true",
                    help="never set the GRE A bit")
    ap.add_argument("--no-clear", action="store_true",
                    help="skip CCRQ/StopCCRQ, just close the TCP connection")
    ap.add_argument("--interactive", action="store_true",
                    help="hold the call, take commands on stdin (send N, status, clear, close)")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    pns = Pns(a)
    rc = 1
    try:
        pns.run()
    except (ProtocolError, OSError) as e:
        pns.res["error"] = "%s: %s" % (type(e).__name__, e)
        if pns.res["frames_sent"] == 0:
            rc = 2
    finally:
        for s in (getattr(pns, "sock", None), getattr(pns, "gre", None)):
            if s is not None:
                s.close()
    pns.res["frames_echoed"] = len(pns.echoed)
    if rc != 2 and a.frames > 0 and pns.res["frames_echoed"] == max(a.frames, len(pns.keys)) \
            and pns.res["error"] is None:
        rc = 0
    print(json.dumps(pns.res, sort_keys=True), flush=True)
    return rc


# ---- helpers for tests (run in a Lab) ----

def synthetic_argv(server="203.0.113.10", call_id=7, frames=5, extra=()):
    return ["/usr/bin/python3", "-m", "lab.synthetic_pns", "--server", server,
            "--call-id", str(call_id), "--frames", str(frames)] + list(extra)


def spawn_synthetic(lab, client_index, call_id=7, frames=5, extra=(),
                    server=None):
    """Start the synthetic PNS in client ``client_index``'s namespace;
    returns the Popen (stdout is a pipe with the JSON line)."""
    import subprocess
    from lab import netns
    env = dict(os.environ, PYTHONPATH=netns.TESTS_DIR)
    argv = synthetic_argv(server or netns.SERVER_ADDR, call_id, frames,
                          ["--bind", netns.client_addr(client_index)] +
                          list(extra))
    return lab.spawn("client%d" % client_index, argv, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     stdin=subprocess.DEVNULL, text=True)


def collect_synthetic(lab, proc, timeout=30.0):
    """Wait for a spawned synthetic PNS; returns its result dict with
    ``returncode`` and ``stderr`` added."""
    import subprocess
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        lab.stop_process(proc)
        out, err = proc.communicate()
    lab.stop_process(proc)
    line = (out or "").strip().splitlines()
    try:
        res = json.loads(line[-1]) if line else {}
    except ValueError:
        res = {"unparsed_stdout": out}
    res["returncode"] = proc.returncode
    res["stderr"] = (err or "")[-2000:]
    return res


def run_synthetic(lab, client_index, call_id=7, frames=5, extra=(),
                  timeout=30.0):
    """Run one synthetic PNS to completion; returns its result dict."""
    return collect_synthetic(
        lab, spawn_synthetic(lab, client_index, call_id, frames, extra),
        timeout)


class HeldCall:
    """A synthetic PNS in ``--interactive`` mode in a client namespace: the
    call stays up until ``clear()`` or ``close()``, with ``send(n)`` rounds
    of frames in between.  Each method returns the PNS's JSON report (dict);
    ``finish`` the final result as ``collect_synthetic`` does."""

    def __init__(self, lab, client_index, call_id=7, frames=3, extra=(),
                 timeout=20.0, server=None, role=None, bind=None):
        import subprocess
        from lab import netns
        self.lab = lab
        self.index = client_index
        self.timeout = timeout
        # role/bind/server: elsewhere than client I of a netns.Lab (e.g. in
        # a lab.topology); bind defaults to the lab's host_addr(role).
        role = role or "client%d" % client_index
        if bind is None:
            bind = lab.host_addr(role) if hasattr(lab, "host_addr") else \
                netns.client_addr(client_index)
        env = dict(os.environ, PYTHONPATH=netns.TESTS_DIR)
        argv = synthetic_argv(server or netns.SERVER_ADDR, call_id, frames,
                              ["--bind", bind, "--interactive"] + list(extra))
        self.proc = lab.spawn(role, argv, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)
        self.result = None

    def _reply(self, timeout=None):
        from lab import netns
        line = netns.read_line(self.proc.stdout, timeout or self.timeout)
        try:
            return json.loads(line)
        except ValueError:
            return {"event": "none", "unparsed_stdout": line.decode(errors="replace"),
                    "returncode": self.proc.poll()}

    def ready(self, timeout=None):
        """The first report, once the first frames are echoed (or not)."""
        return self._reply(timeout)

    def command(self, text, timeout=None):
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            return {"event": "none", "error": repr(e), "returncode": self.proc.poll()}
        return self._reply(timeout)

    def send(self, n, wait=5.0):
        """Sends n more frames, waits up to ``wait`` s for their echoes."""
        return self.command("send %d %s" % (n, wait), timeout=wait + self.timeout)

    def status(self):
        return self.command("status")

    def finish(self, how="clear", timeout=30.0):
        """``clear`` or ``close``; the final result (``returncode`` added)."""
        if self.result is None:
            try:
                self.proc.stdin.write(how + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass
            self.result = collect_synthetic(self.lab, self.proc, timeout)
        return self.result

    clear = finish

    def close(self, timeout=30.0):
        return self.finish("close", timeout)


if __name__ == "__main__":
    sys.exit(main())
