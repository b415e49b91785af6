#!/usr/bin/python3
"""The ha-sync mode's helpers, each run inside one namespace of a lab by
run.py (root, /usr/bin/python3, tests/ on PYTHONPATH):

    ha_bench.py fill --entries N --labelled M [--public ADDR] [--server ADDR]
        creates N conntrack entries in this namespace directly with ctnetlink
        (IPCTNL_MSG_CT_NEW + NLM_F_CREATE|NLM_F_EXCL, BATCH messages per
        send, every one acknowledged): TCP ESTABLISHED, timeout --timeout.
        M of them are PPTP control connections as the agent leaves them with
        --ha-sync connlabel: inside host 10.128.0.0 + i -> --server:1723,
        SNAT to --public, a label in the agent's format (src/ha/
        connection_label.cpp: magic 0xB7, version 1, PNS inside, one outgoing
        call, CRC-8) naming inside Call ID 1 + i, public Call ID
        --first-public-id + i, outside Call ID 30001 + i. The other N - M are
        plain TCP connections (10.64.0.0 + j -> 192.0.2.(1 + j / 50000):443,
        SNAT to --public) with no label. Prints one JSON line: created, errors,
        seconds.

    ha_bench.py dump [--port 1723]
        what the kernel's side of a dump costs, without any parsing: the
        whole IPv4 table (as the agent's adopt asks for it) and the same with
        the kernel-side filter of ctnetlink (CTA_FILTER: TCP, original
        destination port --port), each timed from the request to NLMSG_DONE.
        Prints one JSON line: entries and seconds of each.

    ha_bench.py probe --server ADDR [--interval-ms 1]
        the packet-loop probe: one PPTP control connection to the synthetic
        PAC (SCCRQ/SCCRP, then Echo-Request / Echo-Reply ping-pong, one every
        --interval-ms), through the router, whose agent queues every segment
        of TCP/1723 whatever the offload does. Runs until a line on stdin
        (or EOF), then prints one JSON line: every round trip as [send time
        (CLOCK_MONOTONIC, s), round trip (s)].
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))

from lab import pptp_proto  # noqa: E402
from lab.ctnetlink import _attr  # noqa: E402
from lab.ha_label import one_call_label  # noqa: E402

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_LABELS, CTA_LABELS_MASK = 22, 23
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 0x2, 0x4, 0x8
TCP_CONNTRACK_ESTABLISHED = 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IPCTNL_MSG_CT_NEW = 0
NFNL_SUBSYS_CTNETLINK = 1


def _tuple(kind, src, dst, sport, dport):
    ip = _attr(1, src) + _attr(2, dst)
    proto = _attr(1, bytes([socket.IPPROTO_TCP])) + _attr(2, struct.pack(">H", sport)) + \
        _attr(3, struct.pack(">H", dport))
    return _attr(kind, _attr(1, ip, True) + _attr(2, proto, True), True)


def _address(base, i):
    return struct.pack(">I", struct.unpack(">I", socket.inet_aton(base))[0] + i)


def entry_message(seq, src, sport, dst, dport, public, public_port, timeout, label=None):
    """IPCTNL_MSG_CT_NEW creating one ESTABLISHED TCP entry src:sport ->
    dst:dport whose reply goes to public:public_port (SNAT)."""
    body = _tuple(CTA_TUPLE_ORIG, src, dst, sport, dport) + \
        _tuple(CTA_TUPLE_REPLY, dst, public, dport, sport if public_port is None else public_port) + \
        _attr(CTA_STATUS, struct.pack(">I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED)) + \
        _attr(CTA_TIMEOUT, struct.pack(">I", timeout)) + \
        _attr(CTA_PROTOINFO, _attr(1, _attr(1, bytes([TCP_CONNTRACK_ESTABLISHED])), True), True)
    if label is not None:
        body += _attr(CTA_LABELS, label) + _attr(CTA_LABELS_MASK, b"\xff" * len(label))
    payload = struct.pack("=BBH", socket.AF_INET, 0, 0) + body
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                       flags, seq, 0) + payload


def fill(entries, labelled, public, server, timeout, batch, first_public_id):
    """Creates the entries; returns the JSON-able result."""
    if labelled > entries:
        raise SystemExit("fill: --labelled above --entries")
    if first_public_id + labelled > 65536 or labelled > 30000 or entries - labelled > 50000 * 200:
        raise SystemExit("fill: too many labelled entries for distinct Call IDs")
    pub, srv = socket.inet_aton(public), socket.inet_aton(server)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)    # NETLINK_NETFILTER
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    created = errors = 0
    first_error = None
    t0 = time.monotonic()
    seq = 0

    def message(k):
        if k < labelled:   # a PPTP control connection with its calls in the label
            return entry_message(k + 1, _address("10.128.0.0", k), 1024 + k % 60000, srv, 1723, pub, None,
                                 timeout, one_call_label(1 + k, first_public_id + k, 30001 + k))
        # Reply tuples (peer -> public:port) must be distinct too: 50,000
        # ports per outside peer.
        j = k - labelled
        return entry_message(k + 1, _address("10.64.0.0", j), 1024 + j % 50000, _address("192.0.2.1", j // 50000),
                             443, pub, None, timeout)

    while seq < entries:
        n = min(batch, entries - seq)
        s.send(b"".join(message(k) for k in range(seq, seq + n)))
        seq += n
        acks = 0
        while acks < n:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == 2:    # NLMSG_ERROR: 0 is the ACK
                    acks += 1
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        errors += 1
                        first_error = first_error or os.strerror(err)
                    else:
                        created += 1
                off += (length + 3) & ~3
    s.close()
    count = None
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            count = int(f.read())
    except OSError:
        pass
    return {"entries": entries, "labelled": labelled, "created": created, "errors": errors,
            "first_error": first_error, "seconds": time.monotonic() - t0, "conntrack_count": count}


CTA_FILTER, CTA_FILTER_ORIG_FLAGS = 25, 1
CTA_FILTER_FLAG_PROTO_NUM, CTA_FILTER_FLAG_PROTO_DST_PORT = 1 << 3, 1 << 5


def timed_dump(body=b""):
    """(entries, seconds) of one IPCTNL_MSG_CT_GET dump, messages counted only."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    payload = struct.pack("=BBH", socket.AF_INET, 0, 0) + body
    t0 = time.monotonic()
    s.send(struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | 1, 0x301, 1, 0) + payload)
    n = 0
    try:
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == 3:                            # NLMSG_DONE
                    return n, time.monotonic() - t0
                if kind == 2:                            # NLMSG_ERROR
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return n, time.monotonic() - t0
                n += 1
                off += (length + 3) & ~3
    finally:
        s.close()


def dumps(port):
    full_n, full_s = timed_dump()
    proto = _attr(1, bytes([socket.IPPROTO_TCP])) + _attr(3, struct.pack(">H", port))
    body = _attr(CTA_TUPLE_ORIG, _attr(2, proto, True), True) + _attr(
        CTA_FILTER, _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_PROTO_NUM |
                                                             CTA_FILTER_FLAG_PROTO_DST_PORT)), True)
    out = {"full_entries": full_n, "full_seconds": full_s}
    try:
        out["filtered_entries"], out["filtered_seconds"] = timed_dump(body)
    except OSError as e:
        out["filter_error"] = str(e)
    return out


def probe(server, interval):
    """Echo-Request ping-pong over one control connection until told to stop."""
    c = socket.create_connection((server, pptp_proto.PPTP_PORT), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = pptp_proto.CtrlStream()

    def read_message(deadline):
        while True:
            r, _, _ = select.select([c], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return None
            data = c.recv(65536)
            if not data:
                raise SystemExit("probe: the PAC closed the connection")
            out = stream.feed(data)
            if out:
                return out

    c.sendall(pptp_proto.sccrq())
    if read_message(time.monotonic() + 10) is None:
        raise SystemExit("probe: no SCCRP")
    samples = []
    ident = 0
    stop = False
    next_send = time.monotonic()
    while not stop:
        ident += 1
        t = time.monotonic()
        c.sendall(pptp_proto.echorq(ident))
        got = read_message(t + 30)
        rtt = time.monotonic() - t
        if got is None:
            raise SystemExit("probe: no Echo-Reply in 30 s")
        samples.append((t, rtt))
        next_send = max(next_send + interval, time.monotonic())
        while True:
            wait = next_send - time.monotonic()
            r, _, _ = select.select([sys.stdin], [], [], max(0.0, wait))
            if r:
                stop = True
                break
            if wait <= 0:
                break
    c.close()
    return {"samples": samples, "echoes": len(samples)}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill")
    f.add_argument("--entries", type=int, required=True)
    f.add_argument("--labelled", type=int, required=True)
    f.add_argument("--public", default="203.0.113.1")
    f.add_argument("--server", default="203.0.113.10")
    f.add_argument("--timeout", type=int, default=86400)
    f.add_argument("--batch", type=int, default=256)
    f.add_argument("--first-public-id", type=int, default=30001)
    d = sub.add_parser("dump")
    d.add_argument("--port", type=int, default=1723)
    p = sub.add_parser("probe")
    p.add_argument("--server", required=True)
    p.add_argument("--interval-ms", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.cmd == "fill":
        out = fill(a.entries, a.labelled, a.public, a.server, a.timeout, a.batch, a.first_public_id)
    elif a.cmd == "dump":
        out = dumps(a.port)
    else:
        out = probe(a.server, a.interval_ms / 1000.0)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
