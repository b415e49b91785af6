"""A small ctnetlink client of the lab's own (no library of the agent's):
reads and writes conntrack labels, so tests can check what pptp-fixupd put
on an entry and put there what someone else might (another user's bits, a
damaged or forged label).  Run inside a namespace:

    python3 -m lab.ctnetlink dump                      # JSON list of labelled TCP entries
    python3 -m lab.ctnetlink set SRC SPORT DST DPORT HEX32   # by original tuple
"""

import json
import os
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
CT_NEW, CT_GET = 0x100, 0x101          # NFNL_SUBSYS_CTNETLINK << 8 | message
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_LABELS = 1, 2, 22
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_F_NESTED = 0x8000


def _attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _attrs(data):
    out, at = {}, 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def _tuple(src, sport, dst, dport):
    ip = _attr(CTA_IP_V4_SRC, socket.inet_aton(src)) + _attr(CTA_IP_V4_DST, socket.inet_aton(dst))
    proto = (_attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP])) +
             _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)) +
             _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return (_attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))


def _request(kind, flags, payload):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        body = struct.pack("=BBH", socket.AF_INET, 0, 0) + payload
        s.send(struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body)
        messages = []
        while True:
            data = s.recv(1 << 20)
            at = 0
            while at + 16 <= len(data):
                length, mtype, _, _, _ = struct.unpack_from("=IHHII", data, at)
                if mtype == NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, at + 16)[0]
                    if err != 0:
                        raise OSError(-err, os.strerror(-err))
                    return messages
                if mtype == NLMSG_DONE:
                    return messages
                messages.append(data[at + 20:at + length])   # after nfgenmsg
                at += (length + 3) & ~3
    finally:
        s.close()


def _parse_tuple(data):
    t = _attrs(data)
    ip, proto = _attrs(t.get(CTA_TUPLE_IP, b"")), _attrs(t.get(CTA_TUPLE_PROTO, b""))
    if proto.get(CTA_PROTO_NUM, b"\0")[0] != socket.IPPROTO_TCP or CTA_IP_V4_SRC not in ip:
        return None
    return {"src": socket.inet_ntoa(ip[CTA_IP_V4_SRC]), "dst": socket.inet_ntoa(ip[CTA_IP_V4_DST]),
            "sport": struct.unpack("!H", proto[CTA_PROTO_SRC_PORT])[0],
            "dport": struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0]}


def dump():
    """Labelled TCP entries: [{"original": tuple, "reply": tuple, "label": hex}]."""
    entries = []
    for message in _request(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, b""):
        a = _attrs(message)
        original = _parse_tuple(a.get(CTA_TUPLE_ORIG, b""))
        label = a.get(CTA_LABELS)
        if original is None or label is None or not any(label):
            continue
        entries.append({"original": original, "reply": _parse_tuple(a.get(CTA_TUPLE_REPLY, b"")),
                        "label": label[:16].hex()})
    return entries


def set_label(src, sport, dst, dport, label):
    """Replaces the label of the entry with this original tuple."""
    _request(CT_NEW, NLM_F_REQUEST | NLM_F_ACK,
             _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, _tuple(src, sport, dst, dport)) + _attr(CTA_LABELS, label))


def main(argv):
    if argv[:1] == ["dump"]:
        print(json.dumps(dump()))
        return 0
    if len(argv) == 6 and argv[0] == "set":
        set_label(argv[1], int(argv[2]), argv[3], int(argv[4]), bytes.fromhex(argv[5]))
        return 0
    print(__doc__, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
