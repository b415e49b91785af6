"""Read the IPv4 packets of a classic pcap file (tcpdump -w), stdlib only.

``ipv4_packets(path)`` yields dicts: ``src``, ``dst``, ``proto``, ``ident``,
``fragment`` (MF set or offset non-zero), ``offset`` (bytes), ``payload``
(the bytes after the IP header, as captured), and for GRE ``gre`` (the
``pptp_proto.gre_parse`` dict or None) plus ``gre_proto`` (the protocol
type, or None when fewer than 4 bytes).  TCP segments get ``sport``,
``dport``, ``seq``, ``tcp_flags`` and ``data`` (the TCP payload).

``tcp_streams(path, dport)`` rebuilds the byte streams sent to ``dport``:
per (src, sport) the data from the SYN on and the stream offsets where
segments ended.

``control_messages(path, port)`` parses the PPTP control messages of both
directions of every connection to ``port`` whose SYN was captured:
``(src, dst, message dict)`` in stream order per direction.
"""

import socket
import struct

from . import pptp_proto as P

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113


def records(path):
    """(linktype, frame bytes) of every record."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = head[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise ValueError("%s: not a classic pcap file" % path)
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            _sec, _frac, caplen, _len = struct.unpack(endian + "IIII", rec)
            data = f.read(caplen)
            if len(data) < caplen:
                return
            yield linktype, data


def ipv4_packets(path):
    for linktype, frame in records(path):
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            pkt = frame[14:]
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            pkt = frame[16:]
        else:
            continue
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        total, ident, frag = struct.unpack_from("!HHH", pkt, 2)
        d = {"src": socket.inet_ntoa(pkt[12:16]),
             "dst": socket.inet_ntoa(pkt[16:20]), "proto": pkt[9],
             "ident": ident, "fragment": (frag & 0x3FFF) != 0,
             "offset": (frag & 0x1FFF) * 8,
             "payload": pkt[ihl:max(ihl, min(total, len(pkt)))]}
        if d["proto"] == 47:
            body = d["payload"]
            d["gre_proto"] = struct.unpack_from("!H", body, 2)[0] \
                if len(body) >= 4 and d["offset"] == 0 else None
            d["gre"] = P.gre_parse(body) if d["offset"] == 0 else None
        elif d["proto"] == 6 and len(d["payload"]) >= 20 and \
                d["offset"] == 0:
            t = d["payload"]
            d["sport"], d["dport"], d["seq"] = struct.unpack_from("!HHI", t)
            d["tcp_flags"] = t[13]
            d["data"] = t[(t[12] >> 4) * 4:]
        yield d


TCP_SYN = 0x02


def _reassemble(path, wanted):
    """{(src, sport, dst, dport): {"data", "ends", "segments"}} of the TCP
    directions ``wanted(packet)`` picks whose SYN was captured: the bytes
    from the SYN on (a later copy of a byte overwrites an earlier one) and
    the stream offsets where segments ended."""
    isn = {}
    streams = {}
    for d in ipv4_packets(path):
        if d["proto"] != 6 or "seq" not in d or not wanted(d):
            continue
        key = (d["src"], d["sport"], d["dst"], d["dport"])
        if d["tcp_flags"] & TCP_SYN:
            isn[key] = d["seq"]
            streams[key] = {"data": bytearray(), "ends": set(),
                            "segments": 0}
            continue
        if key not in isn or not d["data"]:
            continue
        st = streams[key]
        off = (d["seq"] - isn[key] - 1) & 0xFFFFFFFF
        end = off + len(d["data"])
        if len(st["data"]) < end:
            st["data"] += bytes(end - len(st["data"]))
        st["data"][off:end] = d["data"]
        st["ends"].add(end)
        st["segments"] += 1
    for st in streams.values():
        st["data"] = bytes(st["data"])
    return streams


def tcp_streams(path, dport):
    """{(src, sport): {"data": bytes, "ends": set of segment end offsets,
    "segments": count}} for the connections to ``dport`` whose SYN was
    captured."""
    streams = _reassemble(path, lambda d: d.get("dport") == dport)
    return {(src, sport): st for (src, sport, _dst, _dport), st in streams.items()}


def control_messages(path, port=P.PPTP_PORT):
    streams = _reassemble(path, lambda d: port in (d.get("sport"), d.get("dport")))
    out = []
    for (src, _sport, dst, _dport), st in streams.items():
        for msg in P.CtrlStream().feed(st["data"]):
            out.append((src, dst, msg))
    return out
