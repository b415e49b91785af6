"""RFC 2637 control messages and enhanced GRE, stdlib only.

Builders return bytes; ``parse_ctrl`` returns a dict of named fields.
Field layouts follow RFC 2637 section 2 exactly (sizes in ``MSG_SIZE``).
"""

import socket
import struct

MAGIC = 0x1A2B3C4D
PPTP_PORT = 1723
GRE_PROTO_PPP = 0x880B

SCCRQ, SCCRP, STOPCCRQ, STOPCCRP, ECHORQ, ECHORP = 1, 2, 3, 4, 5, 6
OCRQ, OCRP, ICRQ, ICRP, ICCN, CCRQ, CDN, WEN, SLI = 7, 8, 9, 10, 11, 12, 13, 14, 15

MSG_NAME = {
    1: "SCCRQ", 2: "SCCRP", 3: "StopCCRQ", 4: "StopCCRP", 5: "EchoRQ",
    6: "EchoRP", 7: "OCRQ", 8: "OCRP", 9: "ICRQ", 10: "ICRP", 11: "ICCN",
    12: "CCRQ", 13: "CDN", 14: "WEN", 15: "SLI",
}
MSG_SIZE = {
    1: 156, 2: 156, 3: 16, 4: 16, 5: 16, 6: 20, 7: 168, 8: 32, 9: 220,
    10: 24, 11: 28, 12: 16, 13: 148, 14: 40, 15: 24,
}

_HDR = struct.Struct("!HHIHH")  # length, PPTP msg type, cookie, ctrl type, reserved0


def _hdr(ctrl_type):
    return _HDR.pack(MSG_SIZE[ctrl_type], 1, MAGIC, ctrl_type, 0)


def _str(s, n):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return b[:n].ljust(n, b"\0")


def sccrq(host="pflab", vendor="pptp-fixup-lab", framing=1, bearer=1,
          max_channels=0, firmware=1):
    return _hdr(SCCRQ) + struct.pack(
        "!HHIIHH64s64s", 0x0100, 0, framing, bearer, max_channels, firmware,
        _str(host, 64), _str(vendor, 64))


def sccrp(result=1, error=0, host="pflab", vendor="pptp-fixup-lab"):
    return _hdr(SCCRP) + struct.pack(
        "!HBBIIHH64s64s", 0x0100, result, error, 1, 1, 0, 1,
        _str(host, 64), _str(vendor, 64))


def stopccrq(reason=1):
    return _hdr(STOPCCRQ) + struct.pack("!BBH", reason, 0, 0)


def stopccrp(result=1, error=0):
    return _hdr(STOPCCRP) + struct.pack("!BBH", result, error, 0)


def echorq(ident):
    return _hdr(ECHORQ) + struct.pack("!I", ident)


def echorp(ident, result=1, error=0):
    return _hdr(ECHORP) + struct.pack("!IBBH", ident, result, error, 0)


def ocrq(call_id, serial=0, min_bps=2400, max_bps=10000000, bearer=3,
         framing=3, window=64, delay=0, phone=""):
    ph = _str(phone, 64)
    return _hdr(OCRQ) + struct.pack(
        "!HHIIIIHHHH64s64s", call_id, serial, min_bps, max_bps, bearer,
        framing, window, delay, len(phone), 0, ph, b"\0" * 64)


def ocrp(call_id, peer_call_id, result=1, error=0, cause=0,
         speed=10000000, window=64, delay=0, channel=0):
    return _hdr(OCRP) + struct.pack(
        "!HHBBHIHHI", call_id, peer_call_id, result, error, cause, speed,
        window, delay, channel)


def ccrq(call_id):
    return _hdr(CCRQ) + struct.pack("!HH", call_id, 0)


def cdn(call_id, result=1, error=0, cause=0, stats=b""):
    return _hdr(CDN) + struct.pack(
        "!HBBHH128s", call_id, result, error, cause, 0, _str(stats, 128))


def sli(peer_call_id, send_accm=0xFFFFFFFF, recv_accm=0xFFFFFFFF):
    return _hdr(SLI) + struct.pack("!HHII", peer_call_id, 0, send_accm,
                                   recv_accm)


def parse_ctrl(msg):
    """Parse one complete control message into a dict (``type``, ``name`` ...)."""
    length, mtype, cookie, ctype, _ = _HDR.unpack_from(msg)
    d = {"length": length, "pptp_type": mtype, "cookie": cookie,
         "type": ctype, "name": MSG_NAME.get(ctype, "?%d" % ctype)}
    body = msg[12:]
    if ctype in (SCCRQ, SCCRP):
        if ctype == SCCRQ:
            ver, _r, fr, be, mc, fw, host, vend = struct.unpack_from(
                "!HHIIHH64s64s", body)
        else:
            ver, res, err, fr, be, mc, fw, host, vend = struct.unpack_from(
                "!HBBIIHH64s64s", body)
            d.update(result=res, error=err)
        d.update(version=ver, framing=fr, bearer=be, max_channels=mc,
                 firmware=fw, host=host.rstrip(b"\0").decode("latin-1"),
                 vendor=vend.rstrip(b"\0").decode("latin-1"))
    elif ctype == STOPCCRQ:
        d["reason"] = body[0]
    elif ctype == STOPCCRP:
        d.update(result=body[0], error=body[1])
    elif ctype == ECHORQ:
        d["ident"] = struct.unpack_from("!I", body)[0]
    elif ctype == ECHORP:
        ident, res, err = struct.unpack_from("!IBB", body)
        d.update(ident=ident, result=res, error=err)
    elif ctype == OCRQ:
        (cid, serial, mn, mx, be, fr, win, dl, plen) = struct.unpack_from(
            "!HHIIIIHHH", body)
        d.update(call_id=cid, serial=serial, min_bps=mn, max_bps=mx,
                 bearer=be, framing=fr, window=win, delay=dl, phone_len=plen)
    elif ctype == OCRP:
        (cid, peer, res, err, cause, speed, win, dl, ch) = struct.unpack_from(
            "!HHBBHIHHI", body)
        d.update(call_id=cid, peer_call_id=peer, result=res, error=err,
                 cause=cause, speed=speed, window=win, delay=dl, channel=ch)
    elif ctype == CCRQ:
        d["call_id"] = struct.unpack_from("!H", body)[0]
    elif ctype == CDN:
        cid, res, err, cause = struct.unpack_from("!HBBH", body)
        d.update(call_id=cid, result=res, error=err, cause=cause)
    elif ctype == SLI:
        peer, _r, saccm, raccm = struct.unpack_from("!HHII", body)
        d.update(peer_call_id=peer, send_accm=saccm, recv_accm=raccm)
    elif ctype in (ICRQ,):
        d["call_id"] = struct.unpack_from("!H", body)[0]
    elif ctype in (ICRP,):
        d.update(zip(("call_id", "peer_call_id"),
                     struct.unpack_from("!HH", body)))
    elif ctype in (ICCN, WEN):
        d["peer_call_id"] = struct.unpack_from("!H", body)[0]
    return d


class CtrlStream:
    """Reassemble control messages from a TCP byte stream."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 12:
            length = int.from_bytes(self.buf[:2], "big")
            if length < 12:
                raise ValueError("bad PPTP length %d" % length)
            if len(self.buf) < length:
                break
            out.append(parse_ctrl(bytes(self.buf[:length])))
            del self.buf[:length]
        return out


# ---- enhanced GRE (RFC 2637 section 4.1) ----

def gre_build(call_id, payload=b"", seq=None, ack=None):
    """Enhanced GRE v1 header (K set; S if seq given; A if ack given) + payload."""
    flags = 0x2000 | 0x0001  # K, version 1
    if seq is not None:
        flags |= 0x1000
    if ack is not None:
        flags |= 0x0080
    out = struct.pack("!HHHH", flags, GRE_PROTO_PPP, len(payload), call_id)
    if seq is not None:
        out += struct.pack("!I", seq & 0xFFFFFFFF)
    if ack is not None:
        out += struct.pack("!I", ack & 0xFFFFFFFF)
    return out + bytes(payload)


def gre_parse(pkt):
    """Parse enhanced GRE (no IP header).  Returns a dict or None."""
    if len(pkt) < 8:
        return None
    flags, proto, plen, cid = struct.unpack_from("!HHHH", pkt)
    d = {"flags": flags, "version": flags & 7, "proto": proto,
         "payload_len": plen, "call_id": cid, "seq": None, "ack": None,
         "checksum": bool(flags & 0x8000), "key": bool(flags & 0x2000)}
    off = 8
    if flags & 0x1000:
        if len(pkt) < off + 4:
            return None
        d["seq"] = struct.unpack_from("!I", pkt, off)[0]
        off += 4
    if flags & 0x0080:
        if len(pkt) < off + 4:
            return None
        d["ack"] = struct.unpack_from("!I", pkt, off)[0]
        off += 4
    d["payload"] = bytes(pkt[off:off + plen])
    return d


def strip_ipv4(pkt):
    """(src, dst, proto, l4 bytes) of a raw IPv4 packet."""
    ihl = (pkt[0] & 0x0F) * 4
    return (socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]),
            pkt[9], pkt[ihl:])
