"""Bad input for a PPTP fixup: malformed control messages and junk GRE.

Run inside a lab namespace with tests/ on PYTHONPATH (stdlib only)::

    python3 -m lab.junk ctrl-client --server 203.0.113.10 --cases bad_magic,...
    python3 -m lab.junk ctrl-pac --listen 203.0.113.20
    python3 -m lab.junk gre --dst 203.0.113.1 --spec random_call_id:1000,...

``ctrl-client`` opens one TCP connection to port 1723 per case
(``--parallel`` at a time, default all at once), plays the case's prelude
(a valid Start-Control-Connection-Request, waiting for the reply, a valid
Outgoing-Call-Request), sends the case's bad bytes (with ``--side pns``;
with ``--side pac`` the fake PAC sends them) and waits ``--wait`` seconds,
counting the bytes that came back; then it closes with a RST.  It prints
one JSON line: per case, its local port, the bytes received and whether
the peer closed.

``ctrl-pac`` is a fake PAC for the other direction: per connection (a
thread each) it reads the SCCRQ, whose Host Name field names the case,
plays the PAC side of the prelude (a valid SCCRP, reading the OCRQ) and
sends the case's "pac" bad bytes toward the client.

``gre`` sends junk GRE with a raw socket (IP_HDRINCL, so fragments, IP
options and a spoofed source are possible) or, for the kind ``to_inside``,
an Ethernet frame straight to the router's MAC (AF_PACKET), to reach an
address there is no route to.  Every junk payload carries ``MARK``.
Prints one JSON line with the count sent per kind.
"""

import argparse
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from lab import pptp_proto as P  # noqa: E402

MARK = b"PFJUNK"
RANDOM_SEED = 1723

# ---------------------------------------------------------------- control


def _with_header(msg, length=None, pptp_type=None, cookie=None, ctype=None,
                 reserved=None):
    """``msg`` with header fields replaced."""
    length_, ptype_, cookie_, ctype_, res_ = struct.unpack_from("!HHIHH", msg)
    hdr = struct.pack("!HHIHH",
                      length_ if length is None else length,
                      ptype_ if pptp_type is None else pptp_type,
                      cookie_ if cookie is None else cookie,
                      ctype_ if ctype is None else ctype,
                      res_ if reserved is None else reserved)
    return hdr + msg[12:]


def _versioned(msg, version):
    return msg[:12] + struct.pack("!H", version) + msg[14:]


def _random_bytes(n=300):
    rnd = random.Random(RANDOM_SEED)
    data = bytes(rnd.randrange(256) for _ in range(n))
    # The fixup checks the magic cookie first; make sure it is wrong.
    assert data[4:8] != struct.pack("!I", P.MAGIC)
    return data


# name -> prelude ("none": bad bytes first; "started": after SCCRQ/SCCRP;
# "call": also after an OCRQ (Call ID 9) from the client), the sender of the
# bad bytes -> (bytes, drop reason the fixup should count).
CONTROL_CASES = {
    "bad_magic": ("none", {
        "pns": (_with_header(P.sccrq(), cookie=0xDEADBEEF),
                "control_bad_magic_cookie"),
        "pac": (_with_header(P.sccrp(), cookie=0xDEADBEEF),
                "control_bad_magic_cookie")}),
    "not_control": ("none", {
        "pns": (_with_header(P.sccrq(), pptp_type=2),
                "control_not_control_message"),
        "pac": (_with_header(P.sccrp(), pptp_type=2),
                "control_not_control_message")}),
    "length_below_header": ("none", {
        "pns": (_with_header(P.sccrq(), length=8), "control_bad_length"),
        "pac": (_with_header(P.sccrp(), length=8), "control_bad_length")}),
    "length_below_message": ("none", {
        "pns": (_with_header(P.sccrq(), length=100), "control_bad_length"),
        "pac": (_with_header(P.sccrp(), length=100), "control_bad_length")}),
    "length_above_limit": ("none", {
        "pns": (_with_header(P.sccrq(), length=2000) + bytes(200),
                "control_bad_length"),
        "pac": (_with_header(P.sccrp(), length=65535) + bytes(200),
                "control_bad_length")}),
    "unknown_type": ("none", {
        "pns": (_with_header(P.stopccrq(), ctype=99),
                "control_unknown_message_type"),
        "pac": (_with_header(P.stopccrp(), ctype=0),
                "control_unknown_message_type")}),
    "bad_reserved": ("none", {
        "pns": (_with_header(P.sccrq(), reserved=1),
                "control_bad_reserved_field"),
        "pac": (_with_header(P.sccrp(), reserved=1),
                "control_bad_reserved_field")}),
    "version_2": ("none", {
        "pns": (_versioned(P.sccrq(), 0x0200), "control_bad_protocol_version"),
        "pac": (_versioned(P.sccrp(), 0x0200),
                "control_bad_protocol_version")}),
    # PNS: a call request before the control connection is up.  PAC: a
    # Stop-Control-Connection-Reply nobody asked for.
    "out_of_state": ("none", {
        "pns": (P.ocrq(7), "control_out_of_state"),
        "pac": (P.stopccrp(), "control_out_of_state")}),
    # A reply naming a call that does not exist on this connection.
    "reply_unknown_call": ("started", {
        "pns": (P.ocrp(5, 4242), "control_unknown_call_id"),
        "pac": (P.ocrp(5, 4242), "control_unknown_call_id")}),
    "clear_unknown_call": ("started", {
        "pns": (P.ccrq(4242), "control_unknown_call_id"),
        "pac": (P.cdn(4242), "control_unknown_call_id")}),
    # The PAC sends a PNS-only message on a connection whose PNS is known.
    "wrong_sender": ("call", {
        "pac": (P.ocrq(11), "control_wrong_sender")}),
    "random_bytes": ("none", {
        "pns": (_random_bytes(), "control_bad_magic_cookie"),
        "pac": (_random_bytes(), "control_bad_magic_cookie")}),
}


def control_cases(side):
    """Names of the cases with bad bytes from ``side`` ("pns"/"pac")."""
    return [n for n, (_p, by) in CONTROL_CASES.items() if side in by]


def expected_reason(case, side):
    return CONTROL_CASES[case][1][side][1]


# What the fixup does with each reason's message (the README's bad-input
# table): the control connection is reset (an RST to each peer), or the
# message passes with the Call IDs that name no call of the connection set
# to 0.
NEUTRALISED = {"control_unknown_call_id"}


def expected_outcome(case, side):
    return "neutralised" if expected_reason(case, side) in NEUTRALISED else "reset"


def _recv_exact(sock, n, deadline):
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("got %d of %d bytes" % (len(buf), n))
        r, _, _ = select.select([sock], [], [], left)
        if r:
            data = sock.recv(n - len(buf))
            if not data:
                raise ConnectionError("closed after %d of %d bytes" %
                                      (len(buf), n))
            buf += data
    return buf


def _rst_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


def ctrl_client_case(server, port, case, wait, side="pns", bind=None,
                     timeout=5.0):
    """One case, the client's part; ``side`` says who sends the bad bytes
    (the client itself, "pns", or the fake PAC, "pac").  Returns a dict."""
    prelude, by = CONTROL_CASES[case]
    res = {"case": case, "side": side, "prelude": prelude, "rx_bytes": 0,
           "peer_closed": False, "error": None}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if bind:
            s.bind((bind, 0))
        s.settimeout(timeout)
        s.connect((server, port))
        res["local_port"] = s.getsockname()[1]
        deadline = time.monotonic() + timeout
        if prelude in ("started", "call") or side == "pac":
            # The Host Name names the case for the fake PAC.
            s.sendall(P.sccrq(host=case))
        if prelude in ("started", "call"):
            res["rx_bytes"] += len(_recv_exact(s, P.MSG_SIZE[P.SCCRP],
                                               deadline))
        if prelude == "call":
            s.sendall(P.ocrq(9))
        if side == "pns":
            s.sendall(by["pns"][0])
        end = time.monotonic() + wait
        while time.monotonic() < end:
            r, _, _ = select.select([s], [], [], end - time.monotonic())
            if r:
                data = s.recv(65536)
                if not data:
                    res["peer_closed"] = True
                    break
                res["rx_bytes"] += len(data)
    except OSError as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        try:
            _rst_close(s)
        except OSError:
            s.close()
    return res


def ctrl_clients(server, port, cases, wait, side="pns", bind=None,
                 parallel=0, timeout=5.0):
    """The cases, each on its own connection, ``parallel`` at a time (0:
    all at once); results in order."""
    results = [None] * len(cases)
    todo = list(enumerate(cases))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i, case = todo.pop(0)
            results[i] = ctrl_client_case(server, port, case, wait, side,
                                          bind, timeout)

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(parallel or len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def ctrl_pac_serve(listen, port, linger=5.0):
    """Fake PAC: serve connections (a thread each) until killed."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((listen, port))
    ls.listen(64)
    print("listening", flush=True)
    while True:
        conn, _addr = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pac_conn, args=(conn, linger),
                         daemon=True).start()


def _pac_conn(conn, linger):
    """One fake-PAC connection: the case is named by the SCCRQ's Host Name."""
    try:
        deadline = time.monotonic() + 5.0
        sccrq = P.parse_ctrl(_recv_exact(conn, P.MSG_SIZE[P.SCCRQ],
                                         deadline))
        case = sccrq.get("host", "")
        if case not in CONTROL_CASES or \
                "pac" not in CONTROL_CASES[case][1]:
            return
        prelude, by = CONTROL_CASES[case]
        if prelude in ("started", "call"):
            conn.sendall(P.sccrp())
        if prelude == "call":
            _recv_exact(conn, P.MSG_SIZE[P.OCRQ], deadline)
        conn.sendall(by["pac"][0])
        # Until the client resets the connection.
        end = time.monotonic() + linger
        while time.monotonic() < end:
            r, _, _ = select.select([conn], [], [],
                                    end - time.monotonic())
            if r and not conn.recv(65536):
                break
    except OSError:
        pass
    finally:
        conn.close()


# -------------------------------------------------------------------- GRE

def ip_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, payload, proto=47, ident=0, frag=0, options=b"",
         total_length=None):
    ihl = 5 + len(options) // 4
    tot = total_length if total_length is not None else \
        ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, frag, 64,
                      proto, 0, socket.inet_aton(src),
                      socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", ip_checksum(hdr)) + hdr[12:]
    return hdr + payload


def gre(call_id, payload=MARK, flags=0x3001, proto=P.GRE_PROTO_PPP,
        payload_length=None, seq=1, extra=b""):
    """A GRE header built field by field, good or bad."""
    out = struct.pack("!HH", flags, proto)
    if flags & 0x8000 or flags & 0x4000:      # checksum / routing words
        out += struct.pack("!HH", 0, 0)
    if flags & 0x2000:
        out += struct.pack("!HH", len(payload) if payload_length is None
                           else payload_length, call_id)
    if flags & 0x1000:
        out += struct.pack("!I", seq)
    if flags & 0x0080:
        out += struct.pack("!I", seq)
    return out + extra + payload


def _ppp(tag):
    return b"\xff\x03\x00\x21" + MARK + tag


# kind -> (description, drop reason or None when the fixup never sees it)
GRE_KINDS = {
    "random_call_id": ("valid enhanced GRE, Call ID of no call",
                       "gre_no_matching_call"),
    "call_id": ("valid enhanced GRE with --call-id (another host's call)",
                "gre_no_matching_call"),
    "ip_options": ("valid GRE behind an IP header with options",
                   "gre_no_matching_call"),
    "fragmented": ("valid GRE for no call in two IP fragments",
                   "gre_no_matching_call"),
    "version_0": ("GRE version 0, protocol 0x880B", "gre_not_version_1"),
    "truncated_4": ("4 bytes: flags and protocol only", "gre_truncated"),
    "truncated_seq": ("S and A set, 8 bytes", "gre_truncated"),
    "lying_ip_length": ("IP total length cuts the GRE to 4 bytes (raw "
                        "frame)", "gre_truncated"),
    "bad_payload_length": ("payload length above what follows",
                           "gre_bad_payload_length"),
    "checksum": ("C bit set", "gre_checksum_present"),
    "routing": ("R bit set", "gre_routing_present"),
    "no_key": ("K bit clear", "gre_key_missing"),
    "bad_flags": ("recursion control 3", "gre_bad_flags"),
    "to_inside": ("to an inside address, raw Ethernet frame to the router",
                  "gre_no_matching_call"),
    "non_ppp": ("enhanced GRE (version 1) carrying protocol 0x0800 (not "
                "queued: not PPTP GRE)", None),
    "gre_tunnel": ("plain GRE (version 0) carrying IPv4, as a GRE tunnel "
                   "sends (not queued)", None),
    "lone_fragment": ("first fragment whose rest never comes (held by "
                      "conntrack defragmentation)", None),
    "tiny": ("2-byte GRE (too short for the queue rule's u32 match)", None),
}


class GreSender:
    def __init__(self, a):
        self.a = a
        self.rnd = random.Random(RANDOM_SEED)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                 socket.IPPROTO_RAW)
        self.ident = 0x4000
        self.sent = {}
        self.pkt = None

    def _next_ident(self):
        self.ident = (self.ident + 1) & 0xFFFF or 1
        return self.ident

    def send_ip(self, packet, dst=None):
        self.raw.sendto(packet, (dst or self.a.dst, 0))

    def send_frame(self, packet):
        if self.pkt is None:
            self.pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self.pkt.bind((self.a.iface, 0))
            self.src_mac = self.pkt.getsockname()[4]
            self.dst_mac = bytes.fromhex(self.a.router_mac.replace(":", ""))
        self.pkt.send(self.dst_mac + self.src_mac + b"\x08\x00" + packet)

    def random_call_id(self):
        while True:
            cid = self.rnd.randrange(65536)
            if cid not in self.a.avoid:
                return cid

    def one(self, kind, n):
        a = self.a
        tag = struct.pack("!I", n)
        src, dst = a.src, a.dst
        if kind == "random_call_id":
            g = gre(self.random_call_id(), _ppp(tag), seq=n)
        elif kind == "call_id":
            g = gre(a.call_id, _ppp(tag), seq=n)
            if a.spoof_src:
                src = a.spoof_src
        elif kind == "ip_options":
            g = gre(self.random_call_id(), _ppp(tag), seq=n)
            self.send_ip(ipv4(src, dst, g, ident=self._next_ident(),
                              options=b"\x01\x01\x01\x00"))
            return
        elif kind == "fragmented":
            g = gre(self.random_call_id(), _ppp(tag) + bytes(64), seq=n)
            ident = self._next_ident()
            self.send_ip(ipv4(src, dst, g[:40], ident=ident, frag=0x2000))
            self.send_ip(ipv4(src, dst, g[40:], ident=ident, frag=40 // 8))
            return
        elif kind == "lone_fragment":
            g = gre(self.random_call_id(), _ppp(tag) + bytes(64), seq=n)
            self.send_ip(ipv4(src, dst, g[:40], ident=self._next_ident(),
                              frag=0x2000))
            return
        elif kind == "version_0":
            g = gre(self.random_call_id(), _ppp(tag), flags=0x3000)
        elif kind == "truncated_4":
            g = struct.pack("!HH", 0x3001, P.GRE_PROTO_PPP)
        elif kind == "truncated_seq":
            g = struct.pack("!HHHH", 0x3081, P.GRE_PROTO_PPP, 0,
                            self.random_call_id())
        elif kind == "lying_ip_length":
            g = gre(self.random_call_id(), _ppp(tag), seq=n)
            self.send_frame(ipv4(src, dst, g, ident=self._next_ident(),
                                 total_length=20 + 4))
            return
        elif kind == "bad_payload_length":
            g = gre(self.random_call_id(), _ppp(tag), payload_length=1400,
                    seq=n)
        elif kind == "checksum":
            g = gre(self.random_call_id(), _ppp(tag), flags=0xB001)
        elif kind == "routing":
            g = gre(self.random_call_id(), _ppp(tag), flags=0x7001)
        elif kind == "no_key":
            g = gre(0, _ppp(tag), flags=0x1001)
        elif kind == "bad_flags":
            g = gre(self.random_call_id(), _ppp(tag), flags=0x3301)
        elif kind == "to_inside":
            g = gre(a.call_id, _ppp(tag), seq=n)
            self.send_frame(ipv4(src, a.inside_dst, g,
                                 ident=self._next_ident()))
            return
        elif kind == "non_ppp":
            g = gre(self.random_call_id(), MARK + tag, proto=0x0800)
            src = a.unqueued_src or src
        elif kind == "gre_tunnel":
            g = struct.pack("!HH", 0, 0x0800) + ipv4("10.9.9.1", "10.9.9.2",
                                                     MARK + tag, proto=253)
            src = a.unqueued_src or src
        elif kind == "tiny":
            g = b"\x30\x01"
            src = a.unqueued_src or src
        else:
            raise SystemExit("unknown GRE kind %r" % kind)
        self.send_ip(ipv4(src, dst, g, ident=self._next_ident()))

    def run(self, spec, batch=50, pause=0.005):
        work = []
        for kind, count in spec:
            self.sent[kind] = 0
            work += [kind] * count
        self.rnd.shuffle(work)
        for i, kind in enumerate(work):
            self.one(kind, self.sent[kind])
            self.sent[kind] += 1
            if (i + 1) % batch == 0:
                time.sleep(pause)
        return self.sent


def parse_spec(text):
    out = []
    for item in filter(None, text.split(",")):
        kind, _, count = item.partition(":")
        if kind not in GRE_KINDS:
            raise SystemExit("unknown GRE kind %r" % kind)
        out.append((kind, int(count or 1)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m lab.junk")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("ctrl-client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=P.PPTP_PORT)
    c.add_argument("--bind")
    c.add_argument("--cases", required=True)
    c.add_argument("--side", choices=("pns", "pac"), default="pns",
                   help="who sends the bad bytes: this client or the fake PAC")
    c.add_argument("--wait", type=float, default=0.8)
    c.add_argument("--parallel", type=int, default=0,
                   help="connections at a time (default: all cases at once)")
    c.add_argument("--timeout", type=float, default=5.0,
                   help="for connecting and for each prelude reply")
    s = sub.add_parser("ctrl-pac")
    s.add_argument("--listen", required=True)
    s.add_argument("--port", type=int, default=P.PPTP_PORT)
    g = sub.add_parser("gre")
    g.add_argument("--src", required=True)
    g.add_argument("--dst", required=True)
    g.add_argument("--spec", required=True, help="kind:count,...")
    g.add_argument("--avoid", default="",
                   help="Call IDs random ones must not hit (live calls)")
    g.add_argument("--call-id", type=int, default=0)
    g.add_argument("--spoof-src", default=None,
                   help="source address of the kind call_id")
    g.add_argument("--inside-dst", default=None)
    g.add_argument("--unqueued-src", default=None,
                   help="source address for the kinds no queue rule takes "
                   "(non_ppp, gre_tunnel, tiny)")
    g.add_argument("--iface", default="eth0")
    g.add_argument("--router-mac", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "ctrl-client":
        res = ctrl_clients(a.server, a.port, a.cases.split(","), a.wait,
                           a.side, a.bind, a.parallel, a.timeout)
        print(json.dumps(res), flush=True)
        return 0
    if a.cmd == "ctrl-pac":
        ctrl_pac_serve(a.listen, a.port)
        return 0
    a.avoid = {int(x) for x in filter(None, a.avoid.split(","))}
    t = time.monotonic()
    sent = GreSender(a).run(parse_spec(a.spec))
    print(json.dumps({"sent": sent,
                      "seconds": round(time.monotonic() - t, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
