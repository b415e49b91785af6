"""A small ctnetlink client of the lab's own (no library of the agent's):
dumps conntrack entries with their labels and replaces an entry's label, so
tests can check what pptp-fixupd put on an entry and put there what someone
else might (another user's bits, a damaged or forged label); conntrack(8)
cannot without /etc/xtables/connlabel.conf. Run inside a namespace:

    python3 -m lab.ctnetlink dump                  # one JSON entry per line
    python3 -m lab.ctnetlink set TUPLE_JSON HEX    # TUPLE_JSON: src, dst, proto, sport, dport
"""

import json
import os
import socket
import struct
import sys


_NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT, CTA_MARK = 1, 2, 3, 4, 7, 8
CTA_LABELS, CTA_LABELS_MASK = 22, 23


def _attrs(buf):
    off = 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def _attr(kind, payload, nested=False):
    return struct.pack("=HH", 4 + len(payload), kind | (_NLA_F_NESTED if nested else 0)) + \
        payload + b"\0" * (-len(payload) % 4)


def _tuple_of(buf):
    t = {}
    for k, v in _attrs(buf):
        if k == 1:
            for k2, v2 in _attrs(v):
                if k2 in (1, 2):
                    t["src" if k2 == 1 else "dst"] = socket.inet_ntoa(v2)
        elif k == 2:
            for k2, v2 in _attrs(v):
                if k2 == 1:
                    t["proto"] = v2[0]
                elif k2 in (2, 3):
                    t["sport" if k2 == 2 else "dport"] = struct.unpack(">H", v2[:2])[0]
    return t


def _tuple_attr(t):
    ip = _attr(1, socket.inet_aton(t["src"])) + _attr(2, socket.inet_aton(t["dst"]))
    proto = _attr(1, bytes([t["proto"]])) + _attr(2, struct.pack(">H", t["sport"])) + \
        _attr(3, struct.pack(">H", t["dport"]))
    return _attr(CTA_TUPLE_ORIG, _attr(1, ip, True) + _attr(2, proto, True), True)


def _ctnetlink(msg, flags, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)    # NETLINK_NETFILTER
    try:
        s.bind((0, 0))
        payload = struct.pack("=BBH", socket.AF_INET, 0, 0) + body
        s.send(struct.pack("=IHHII", 16 + len(payload), (1 << 8) | msg, flags, 1, 0) + payload)
        out = []
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                p = data[off + 16:off + length]
                off += (length + 3) & ~3
                if kind == 3:            # NLMSG_DONE
                    return out
                if kind == 2:            # NLMSG_ERROR (an ACK when 0)
                    err = -struct.unpack_from("=i", p)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return out
                out.append(_entry_of(p[4:]))
    finally:
        s.close()


def _entry_of(buf):
    e = {"labels": None}
    for k, v in _attrs(buf):
        if k in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            e["orig" if k == CTA_TUPLE_ORIG else "reply"] = _tuple_of(v)
        elif k == CTA_STATUS:
            e["status"] = struct.unpack(">I", v)[0]
        elif k == CTA_TIMEOUT:
            e["timeout"] = struct.unpack(">I", v)[0]
        elif k == CTA_MARK:
            e["mark"] = struct.unpack(">I", v)[0]
        elif k == CTA_LABELS:
            e["labels"] = v.hex()
        elif k == CTA_PROTOINFO:
            for k2, v2 in _attrs(v):
                if k2 != 1:              # CTA_PROTOINFO_TCP
                    continue
                for k3, v3 in _attrs(v2):
                    if k3 == 1:
                        e["tcp_state"] = v3[0]
                    elif k3 in (4, 5):   # struct nf_ct_tcp_flags {flags, mask}
                        e["tcp_flags_" + ("orig" if k3 == 4 else "reply")] = v3[0]
    return e


def dump():
    """Every IPv4 conntrack entry of this namespace (dicts)."""
    return _ctnetlink(1, 0x301, b"")             # IPCTNL_MSG_CT_GET, REQUEST|DUMP


def set_label(orig, labels):
    """Replaces the label (16 bytes) of the entry whose original tuple is
    ``orig`` (dict src, dst, proto, sport, dport)."""
    body = _tuple_attr(orig) + _attr(CTA_LABELS, labels) + _attr(CTA_LABELS_MASK, b"\xff" * len(labels))
    _ctnetlink(0, 0x5, body)                     # IPCTNL_MSG_CT_NEW, REQUEST|ACK


def main(argv):
    if argv[:1] == ["dump"]:
        for e in dump():
            print(json.dumps(e))
    elif len(argv) == 3 and argv[0] == "set":
        set_label(json.loads(argv[1]), bytes.fromhex(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
