#!/usr/bin/python3
"""pptp-fixupd's GRE offload (--gre-offload nft) with real pptpd (run as root).

Synthetic clients (lab.synthetic_pns in --interactive mode: the call stays
up until the test clears it, frames are sent in rounds on demand) behind the
lab router's one public address; pptpd (with the pppd stand-in, which
echoes every frame) on the outside.  Every Agent here is started with
--gre-offload nft explicitly, whatever PPTP_FIXUP_TEST_GRE_OFFLOAD says.

- restart: two clients with the same Call ID (7), both calls offloaded (the
  sessions say so, the kernel maps hold their elements, `nft list map`
  lists them); their GRE flows both ways without reaching the queue; the
  agent stops (SIGTERM, exit 0) and each client still gets its own echoes,
  only those, with its own Call ID; started again it adopts both calls with
  the same Call IDs and counters that did not go down; the peers clear the
  calls, the elements go, the teardown records count every frame the
  clients exchanged, and GRE sent for the ended calls reaches no peer;
- GRE with an offloaded call's public Call ID from another outside address
  is not translated by the kernel, reaches the queue and is dropped
  (gre_no_matching_call); nothing of it reaches the client;
- --gre-offload off over a table an earlier run left: the call is adopted
  onto the queue path, the table is deleted, the call's GRE keeps flowing
  through the queue;
- pptp-fixup-rules remove deletes the table (the offloaded call stops
  flowing even with the rules back); with --keep-offload the table and its
  elements stay (and carry the call again once the rules are back).

The kernel's maps are read with a small netlink dump of this script's own
(``test_gre_offload.py nft-elements``, run in the router namespace), as
well as with nft.

    sudo /usr/bin/python3 tests/integration/test_gre_offload.py [-v]
"""

import json
import os
import re
import socket
import struct
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab import pcap  # noqa: E402
from lab.agent import RULES_FILE, RULES_TOOL, agent_hooks, bin_dir  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.pcap import control_messages  # noqa: E402
from lab.ppp import split_ppp  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402
from lab.synthetic_pns import HeldCall  # noqa: E402

SERVER = netns.SERVER_ADDR
PUBLIC = netns.ROUTER_OUT
ROGUE = "203.0.113.20"      # another outside host (a second address of the server)
CALL_ID = 7
MAPS = ("in_addr", "in_key", "out_source")
TEARDOWN = re.compile(
    r"302018: Teardown PPTP call \d+ inside (\S+) call-id (\d+) public \S+ call-id (\d+) "
    r"outside \S+ call-id (\d+) duration \S+ packets in (\d+) out (\d+)")
PFSYN = re.compile(rb"^PFSYN:(\d+):(\d+):(\d+):")


def log(*a):
    print("    [offload]", *a, flush=True)


def hooks():
    return agent_hooks(gre_offload="nft")


# ---------------------------------------------------------------- kernel view

def nft_elements_main(table="pptp_fixup"):
    """Run in the router namespace: prints {map: [element, ...] or null} as
    JSON. Each element: key and data in hex, counter packets and bytes (None
    without a counter), userdata length. A dump of the kernel's own view
    (NFT_MSG_GETSETELEM), independent of the nft tool."""
    def attrs(buf):
        off = 0
        while off + 4 <= len(buf):
            length, kind = struct.unpack_from("=HH", buf, off)
            if length < 4:
                return
            yield kind & 0x3FFF, buf[off + 4:off + length]
            off += (length + 3) & ~3

    def attr(kind, payload):
        return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)

    def counter_of(expr):
        a = dict(attrs(expr))
        if a.get(1, b"").rstrip(b"\0") != b"counter" or 2 not in a:
            return None
        c = dict(attrs(a[2]))
        return struct.unpack(">Q", c[2])[0], struct.unpack(">Q", c[1])[0]

    def dump(set_name):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)   # NETLINK_NETFILTER
        s.bind((0, 0))
        body = struct.pack("=BBH", 2, 0, 0) + attr(1, table.encode() + b"\0") + \
            attr(2, set_name.encode() + b"\0")
        msg_type = (10 << 8) | 13        # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM
        s.send(struct.pack("=IHHII", 16 + len(body), msg_type, 0x301, 1, 0) + body)
        out = []
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                payload = data[off + 16:off + length]
                off += (length + 3) & ~3
                if kind == 3:            # NLMSG_DONE
                    return out
                if kind == 2:            # NLMSG_ERROR
                    err = -struct.unpack_from("=i", payload)[0]
                    if err == 0:
                        continue
                    if err == 2:         # ENOENT: no such table or map
                        return None
                    raise OSError(err, os.strerror(err))
                for k, v in attrs(payload[4:]):
                    if k != 3:           # NFTA_SET_ELEM_LIST_ELEMENTS
                        continue
                    for _k, elem in attrs(v):
                        e = {"packets": None, "bytes": None, "userdata": 0}
                        for ek, ev in attrs(elem):
                            if ek in (1, 2):        # KEY, DATA (NFTA_DATA_VALUE inside)
                                e["key" if ek == 1 else "data"] = dict(attrs(ev)).get(1, b"").hex()
                            elif ek == 6:           # USERDATA
                                e["userdata"] = len(ev)
                            elif ek == 7:           # EXPR
                                c = counter_of(ev)
                                if c:
                                    e["packets"], e["bytes"] = c
                            elif ek == 11:          # EXPRESSIONS
                                for _lk, ex in attrs(ev):
                                    c = counter_of(ex)
                                    if c:
                                        e["packets"], e["bytes"] = c
                        out.append(e)

    print(json.dumps({name: dump(name) for name in MAPS}))


def kernel_maps(lab):
    """{map: {key tuple: element}} as the kernel holds them, or None when
    the table is gone. Keys: (address, address, Call ID) as in the agent's
    maps (outside . public . public Call ID for in_addr and in_key, inside .
    outside . outside Call ID for out_source); element "value" is the
    looked-up address (in_addr, out_source) or Call ID (in_key)."""
    out = lab.router_exec([netns.PYTHON, os.path.abspath(__file__), "nft-elements"]).stdout
    raw = json.loads(out)
    if all(v is None for v in raw.values()):
        return None
    result = {}
    for name, elements in raw.items():
        result[name] = {}
        for e in elements or []:
            k = bytes.fromhex(e["key"])
            key = (socket.inet_ntoa(k[0:4]), socket.inet_ntoa(k[4:8]), int.from_bytes(k[8:10], "big"))
            d = bytes.fromhex(e.get("data", ""))
            e["value"] = socket.inet_ntoa(d) if len(d) == 4 else int.from_bytes(d, "big")
            result[name][key] = e
    return result


def nft(lab, *args):
    return lab.router_exec(["nft"] + list(args), check=False)


def nft_tables(lab, test):
    r = nft(lab, "list", "tables")
    test.assertEqual(r.returncode, 0, "nft list tables: %s" % r.stderr)
    return r.stdout


# ------------------------------------------------------------------ traffic

def send_gre(lab, role, dst, call_ids, src=None, count=1, marker=b"PFSTRAY"):
    """count enhanced GRE packets (S set, a PPP IP frame naming the marker)
    per Call ID, from a namespace, optionally from address src."""
    script = (
        "import socket,struct,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,47)\n"
        "if sys.argv[2]: s.bind((sys.argv[2],0))\n"
        "n=int(sys.argv[3]); m=sys.argv[4].encode()\n"
        "for cid in map(int,sys.argv[5:]):\n"
        "    for i in range(n):\n"
        "        p=b'\\xff\\x03\\x00\\x21'+m+b':%d:%d' % (cid, i)\n"
        "        s.sendto(struct.pack('!HHHHI',0x3001,0x880B,len(p),cid,1000+i)+p,(sys.argv[1],0))\n")
    lab.exec(role, [netns.PYTHON, "-c", script, dst, src or "", str(count), marker.decode()]
             + [str(c) for c in call_ids])


def gre_packets(path, src=None, dst=None):
    """GRE packets of a capture: dicts of pcap.ipv4_packets (non-fragments)."""
    return [d for d in pcap.ipv4_packets(path)
            if d["proto"] == 47 and (src is None or d["src"] == src)
            and (dst is None or d["dst"] == dst)]


def frame_owner(gre):
    """The pid of the synthetic PNS whose frame this GRE packet carries
    (PFSYN:<pid>:...), or None for other payloads (LCP, ack-only)."""
    if gre is None or not gre["payload"]:
        return None
    proto, payload = split_ppp(gre["payload"])
    m = PFSYN.match(payload) if proto == 0x0021 else None
    return int(m.group(1)) if m else None


def wait_offloaded(lab, n, timeout=5.0):
    """The sessions once n calls are established and offloaded."""
    box = {}

    def ok():
        box["s"] = lab.agent.sessions()
        return len(box["s"]) == n and all(s["state"] == "established" and s["offloaded"]
                                          for s in box["s"])
    wait_until(ok, timeout)
    return box["s"]


def teardowns(text):
    """{(inside address, inside id, public id, outside id): (packets in, out)}
    of the agent's teardown records."""
    return {(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))):
            (int(m.group(5)), int(m.group(6))) for m in TEARDOWN.finditer(text)}


def rules_tool(lab, *args, check=True):
    return lab.router_exec(["env", "PPTP_FIXUPD=" + os.path.join(bin_dir(), "pptp-fixupd"),
                            RULES_TOOL] + list(args) + ["--rules", RULES_FILE], check=check)


def triple(s):
    return (s["inside_call_id"], s["public_call_id"], s["outside_call_id"])


class GreOffload(unittest.TestCase):

    def start_calls(self, lab, clients):
        calls = [HeldCall(lab, i, call_id=CALL_ID, frames=3) for i in clients]
        for c in calls:
            r = c.ready()
            self.assertEqual(r.get("event"), "ready", r)
            self.assertEqual(r["frames_echoed"], 3, r)
            self.assertEqual(r["gre_rx_foreign"], 0, r)
        return calls

    def assert_round(self, call, n, what):
        r = call.send(n)
        self.assertEqual(r.get("event"), "sent", "%s: %s" % (what, r))
        self.assertEqual(r["echoed_new"], n, "%s: client %d got %s of %d echoes: %s"
                         % (what, call.index, r["echoed_new"], n, r))
        self.assertEqual(r["gre_rx_foreign"], 0, "%s: another client's frames reached client %d"
                         % (what, call.index))
        self.assertEqual(r["gre_rx_other_call"], 0, "%s: GRE of another Call ID at client %d"
                         % (what, call.index))
        return r

    def assert_maps_hold(self, lab, sessions, what):
        """The kernel's three maps hold exactly the sessions' elements."""
        k = kernel_maps(lab)
        self.assertIsNotNone(k, "%s: no table ip pptp_fixup" % what)
        want_in = {(SERVER, PUBLIC, s["public_call_id"]): s for s in sessions}
        want_out = {(s["inside_address"], SERVER, s["outside_call_id"]): s for s in sessions}
        self.assertEqual(set(k["in_key"]), set(want_in), "%s: in_key %s" % (what, k["in_key"]))
        self.assertEqual(set(k["in_addr"]), set(want_in), "%s: in_addr" % what)
        self.assertEqual(set(k["out_source"]), set(want_out), "%s: out_source" % what)
        for key, s in want_in.items():
            self.assertEqual(k["in_key"][key]["value"], s["inside_call_id"], what)
            self.assertEqual(k["in_addr"][key]["value"], s["inside_address"], what)
            self.assertGreater(k["in_addr"][key]["userdata"], 0, "%s: in_addr without its record" % what)
        for key in want_out:
            self.assertEqual(k["out_source"][key]["value"], PUBLIC, what)
        return k

    # ------------------------------------------------------------- 1
    def test_1_restart_keeps_offloaded_calls(self):
        t0 = time.monotonic()
        with Lab(clients=2, mode="agent", **hooks()) as lab:
            lab.start_pptpd()
            scap, spath = lab.capture("server", bpf=["ip", "proto", "47", "or", "tcp", "port", "1723"])
            calls = self.start_calls(lab, (1, 2))
            sent = {c.index: 3 for c in calls}      # frames each client sent (all echoed)
            sessions = wait_offloaded(lab, 2)
            log("sessions:", [(s["inside_address"], triple(s), s["offloaded"]) for s in sessions])
            self.assertEqual(len(sessions), 2, sessions)
            for s in sessions:
                self.assertTrue(s["offloaded"], s)
            self.assertEqual(sorted(s["inside_address"] for s in sessions),
                             [netns.client_addr(1), netns.client_addr(2)])
            self.assertEqual([s["inside_call_id"] for s in sessions], [CALL_ID, CALL_ID])
            self.assertEqual(len({s["public_call_id"] for s in sessions}), 2, sessions)
            by_addr = {s["inside_address"]: s for s in sessions}
            public_ids = {s["public_call_id"] for s in sessions}
            self.assert_maps_hold(lab, sessions, "established")
            with self.subTest("nft list map ip pptp_fixup in_key lists both elements"):
                r = nft(lab, "list", "map", "ip", "pptp_fixup", "in_key")
                self.assertEqual(r.returncode, 0,
                                 "AGENT BUG: nft (Debian nftables) cannot list the agent's map once it "
                                 "holds two elements: exit %s, %s" % (r.returncode, r.stderr.strip()))
                for pid in public_ids:
                    self.assertIn(str(pid), r.stdout, r.stdout)

            # Both ways in the kernel: the queue sees none of it.
            before = lab.agent.stats()["counters"]
            for c in calls:
                self.assert_round(c, 5, "offloaded")
                sent[c.index] += 5
            after = lab.agent.stats()["counters"]
            self.assertEqual((after["gre_inbound"], after["gre_outbound"]),
                             (before["gre_inbound"], before["gre_outbound"]),
                             "offloaded GRE reached the queue")
            k = kernel_maps(lab)
            for s in sessions:
                self.assertGreaterEqual(k["in_key"][(SERVER, PUBLIC, s["public_call_id"])]["packets"], 8)
                self.assertGreaterEqual(
                    k["out_source"][(s["inside_address"], SERVER, s["outside_call_id"])]["packets"], 8)
            pre_stop = {s["inside_address"]: s for s in lab.agent.sessions()}
            for s in pre_stop.values():
                self.assertGreaterEqual(s["packets_out"], 8, s)
                self.assertGreaterEqual(s["packets_in"], 9, s)   # LCP + 8 echoes

            # Agent down: the calls flow on, each to its own client.
            self.assertEqual(lab.agent.stop(), 0, lab.agent.run_output())
            self.assertEqual(lab.agent.run_output().count("302019: Left in the kernel"), 2, lab.agent.run_output())
            caps = {c.index: lab.capture("client%d" % c.index, bpf=["ip", "proto", "47"]) for c in calls}
            for c in calls:
                self.assert_round(c, 5, "agent stopped")
                sent[c.index] += 5
            owners = {}
            for i, (proc, path) in caps.items():
                lab.stop_process(proc)
                from_server = gre_packets(path, src=SERVER, dst=netns.client_addr(i))
                own = {frame_owner(d["gre"]) for d in gre_packets(path, src=netns.client_addr(i))} - {None}
                got = [frame_owner(d["gre"]) for d in from_server]
                self.assertEqual(len(own), 1, "client %d's own frames: pids %s" % (i, own))
                self.assertEqual({d["gre"]["call_id"] for d in from_server}, {CALL_ID},
                                 "client %d got GRE of other Call IDs while the agent was down" % i)
                self.assertEqual(set(got) - {None}, own,
                                 "client %d got other clients' frames while the agent was down" % i)
                self.assertEqual(sum(1 for o in got if o is not None), 5, "client %d: echoes" % i)
                owners[i] = own
            self.assertNotEqual(owners[1], owners[2])
            self.assert_maps_hold(lab, sessions, "agent stopped")

            # Started again: both calls adopted as they were.
            lab.agent.start()
            adopted_line = re.compile(r"\b2 call\(s\) adopted")
            self.assertTrue(wait_until(lambda: adopted_line.search(lab.agent.run_output()), 5),
                            lab.agent.run_output())
            stats = lab.agent.stats()
            self.assertEqual(stats["counters"]["calls_adopted"], 2, stats["counters"])
            self.assertEqual(stats["offload"]["calls"], 2, stats["offload"])
            adopted = {s["inside_address"]: s for s in lab.agent.sessions()}
            log("adopted:", [(a, triple(s), s["packets_in"], s["packets_out"]) for a, s in adopted.items()])
            self.assertEqual(set(adopted), set(by_addr))
            for addr, s in adopted.items():
                self.assertEqual(triple(s), triple(by_addr[addr]), s)
                self.assertEqual((s["public_address"], s["outside_address"], s["state"], s["offloaded"]),
                                 (PUBLIC, SERVER, "established", True), s)
                self.assertGreaterEqual(s["packets_in"], pre_stop[addr]["packets_in"], s)
                self.assertGreaterEqual(s["packets_out"], pre_stop[addr]["packets_out"], s)
                # What the kernel carried while the agent was down counts too.
                self.assertGreaterEqual(s["packets_out"], pre_stop[addr]["packets_out"] + 5, s)
            self.assert_maps_hold(lab, sessions, "adopted")
            base = lab.agent.stats()["counters"]
            for c in calls:
                self.assert_round(c, 3, "adopted")
                sent[c.index] += 3
            now = lab.agent.stats()["counters"]
            self.assertEqual((now["gre_inbound"], now["gre_outbound"]),
                             (base["gre_inbound"], base["gre_outbound"]), "adopted calls' GRE reached the queue")
            # A last round, as a call's last seconds before it is cleared
            # (no counter reading between it and the clear).
            for c in calls:
                self.assert_round(c, 4, "last frames")
                sent[c.index] += 4

            # The peers clear the calls: CCRQ, pptpd closes the connection.
            results = [c.clear() for c in calls]
            for r in results:
                self.assertEqual(r["returncode"], 0, r)
                self.assertIsNone(r["error"], r)
            self.assertTrue(wait_until(lambda: lab.agent.sessions() == [], 5), lab.agent.sessions())
            k = kernel_maps(lab)
            self.assertEqual({m: len(k[m]) for m in MAPS}, {m: 0 for m in MAPS}, k)
            r = nft(lab, "list", "map", "ip", "pptp_fixup", "in_key")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("elements", r.stdout)
            off = lab.agent.stats()["offload"]
            self.assertEqual((off["calls"], off["withdrawn"]), (0, 2), off)

            # GRE for the ended calls, both ways, reaches no peer.
            drops0 = lab.agent.stats()["dropped"]["gre_no_matching_call"]
            lab.stop_process(scap)
            caps = {i: lab.capture("client%d" % i, bpf=["ip", "proto", "47"]) for i in (1, 2)}
            late, late_path = lab.capture("server", path=os.path.join(lab.tmpdir, "late.pcap"),
                                          bpf=["ip", "proto", "47"])
            send_gre(lab, "server", PUBLIC, sorted(public_ids), count=3)
            for addr, s in by_addr.items():
                i = int(addr.rsplit(".", 1)[1]) - 10
                send_gre(lab, "client%d" % i, SERVER, [s["outside_call_id"]], count=3)
            self.assertTrue(wait_until(
                lambda: lab.agent.stats()["dropped"]["gre_no_matching_call"] >= drops0 + 12, 3),
                lab.agent.stats()["dropped"])
            time.sleep(0.2)
            for i, (proc, path) in caps.items():
                lab.stop_process(proc)
                self.assertEqual(gre_packets(path, dst=netns.client_addr(i)), [],
                                 "GRE of an ended call reached client %d" % i)
            lab.stop_process(late)
            self.assertEqual(gre_packets(late_path, dst=SERVER), [], "GRE of an ended call reached the server")

            # The Call-Clear-Requests reached the server with the public Call IDs.
            at_server = control_messages(spath)
            self.assertEqual({m["call_id"] for _s, _d, m in at_server if m["name"] == "CCRQ"}, public_ids,
                             [m for _s, _d, m in at_server if m["name"] == "CCRQ"])
            out = lab.agent.run_output()
            self.assertEqual(lab.agent.stop(), 0, lab.agent.run_output())

        # The audit: each call's teardown record counts what its client
        # exchanged (all frames echoed; in: also the stand-in's LCP frame).
        records = teardowns(out)
        log("teardown records:", records, "frames sent:", sent)
        for addr, s in by_addr.items():
            i = int(addr.rsplit(".", 1)[1]) - 10
            key = (addr,) + triple(s)
            self.assertIn(key, records, out)
            with self.subTest("teardown record of client %d counts its packets" % i):
                p_in, p_out = records[key]
                self.assertGreaterEqual(
                    (p_in, p_out), (sent[i] + 1, sent[i]),
                    "AGENT BUG: the teardown record of an offloaded call misses the packets the kernel "
                    "counted since the last counter reading: packets in %d out %d, but client %d sent %d "
                    "frames and got all %d echoes (+1 LCP)" % (p_in, p_out, i, sent[i], sent[i]))
                self.assertGreaterEqual(p_in, sent[i] + 1)
        log("total %.1fs" % (time.monotonic() - t0))

    # ------------------------------------------------------------- 2
    def test_2_gre_from_another_outside_address_is_dropped(self):
        with Lab(clients=1, mode="agent", **hooks()) as lab:
            lab.start_pptpd()
            call, = self.start_calls(lab, (1,))
            s, = wait_offloaded(lab, 1)
            self.assertTrue(s["offloaded"], s)
            key = (SERVER, PUBLIC, s["public_call_id"])
            lab.server_exec(["ip", "addr", "add", ROGUE + "/24", "dev", "eth0"])
            k0 = self.assert_maps_hold(lab, [s], "established")
            st0 = lab.agent.stats()
            cap, path = lab.capture("client1", bpf=["ip", "proto", "47"])
            n = 10
            send_gre(lab, "server", PUBLIC, [s["public_call_id"]], src=ROGUE, count=n, marker=b"PFROGUE")
            self.assertTrue(wait_until(
                lambda: lab.agent.stats()["dropped"]["gre_no_matching_call"] >=
                st0["dropped"]["gre_no_matching_call"] + n, 3), lab.agent.stats()["dropped"])
            k1 = kernel_maps(lab)
            st1 = lab.agent.stats()
            self.assert_round(call, 3, "after the rogue GRE")   # the real call is untouched
            time.sleep(0.1)
            lab.stop_process(cap)
            k2 = kernel_maps(lab)
            st2 = lab.agent.stats()
            seen = gre_packets(path)
            log("at the client:", [(d["src"], d["dst"], d["gre"] and d["gre"]["call_id"]) for d in seen])
            self.assertEqual([d for d in seen if d["src"] == ROGUE or b"PFROGUE" in d["payload"]], [],
                             "GRE from the other outside address reached the client")
            self.assertEqual({d["gre"]["call_id"] for d in seen if d["src"] == SERVER}, {CALL_ID})
            # Not translated by the kernel (its element did not count it),
            # queued and dropped by the agent.
            self.assertEqual(k1["in_key"][key]["packets"], k0["in_key"][key]["packets"], (k0, k1))
            self.assertGreaterEqual(k2["in_key"][key]["packets"], k1["in_key"][key]["packets"] + 3)
            self.assertEqual(st1["counters"]["gre_inbound"] - st0["counters"]["gre_inbound"], n)
            self.assertEqual(st1["dropped"]["gre_no_matching_call"] - st0["dropped"]["gre_no_matching_call"], n)
            self.assertEqual(st2["counters"]["gre_inbound"], st1["counters"]["gre_inbound"],
                             "the real call's GRE reached the queue")
            self.assertEqual(lab.agent.sessions()[0]["offloaded"], True)
            r = call.clear()
            self.assertEqual(r["returncode"], 0, r)

    # ------------------------------------------------------------- 3
    def test_3_offload_off_adopts_and_deletes_the_table(self):
        with Lab(clients=1, mode="agent", **hooks()) as lab:
            lab.start_pptpd()
            call, = self.start_calls(lab, (1,))
            s0, = wait_offloaded(lab, 1)
            self.assert_round(call, 3, "offloaded")
            s0, = lab.agent.sessions()
            self.assertTrue(s0["offloaded"], s0)
            self.assertEqual(lab.agent.stop(), 0, lab.agent.run_output())
            self.assertIn("pptp_fixup", nft_tables(lab, self))

            lab.agent.gre_offload = "off"
            lab.agent.start()
            self.assertIn("--gre-offload off", " ".join(lab.agent.proc.args))
            off_line = re.compile(r"GRE offload off\W+1 call\(s\)")
            self.assertTrue(wait_until(lambda: off_line.search(lab.agent.run_output()), 5),
                            lab.agent.run_output())
            tables = nft_tables(lab, self)
            self.assertNotIn("pptp_fixup", tables, tables)
            self.assertIsNone(kernel_maps(lab))
            stats = lab.agent.stats()
            self.assertEqual(stats["counters"]["calls_adopted"], 1, stats["counters"])
            self.assertEqual(stats["offload"]["mode"], "off", stats["offload"])
            s1, = lab.agent.sessions()
            self.assertEqual(triple(s1), triple(s0), s1)
            self.assertEqual((s1["inside_address"], s1["state"], s1["offloaded"]),
                             (netns.client_addr(1), "established", False), s1)
            self.assertGreaterEqual(s1["packets_in"], s0["packets_in"])
            self.assertGreaterEqual(s1["packets_out"], s0["packets_out"])

            cap, path = lab.capture("client1", bpf=["ip", "proto", "47"])
            g0 = stats["counters"]
            self.assert_round(call, 5, "on the queue path")
            lab.stop_process(cap)
            g1 = lab.agent.stats()["counters"]
            self.assertGreaterEqual(g1["gre_inbound"] - g0["gre_inbound"], 5, "the queue saw no inbound GRE")
            self.assertGreaterEqual(g1["gre_outbound"] - g0["gre_outbound"], 5, "the queue saw no outbound GRE")
            echoes = [d for d in gre_packets(path, src=SERVER) if frame_owner(d["gre"]) is not None]
            self.assertEqual(len(echoes), 5)
            self.assertEqual({d["gre"]["call_id"] for d in echoes}, {CALL_ID})
            s2, = lab.agent.sessions()
            self.assertGreaterEqual(s2["packets_out"], s1["packets_out"] + 5, s2)
            r = call.clear()
            self.assertEqual(r["returncode"], 0, r)
            self.assertTrue(wait_until(lambda: lab.agent.sessions() == [], 5), lab.agent.sessions())
            self.assertEqual(lab.agent.stop(), 0, lab.agent.run_output())
            self.assertIn((netns.client_addr(1),) + triple(s0), teardowns(lab.agent.output()))

    # ------------------------------------------------------------- 4
    def test_4_rules_remove_deletes_the_table_unless_kept(self):
        with Lab(clients=1, mode="agent", **hooks()) as lab:
            lab.start_pptpd()
            call, = self.start_calls(lab, (1,))
            s, = wait_offloaded(lab, 1)
            self.assertEqual(lab.agent.stop(), 0, lab.agent.run_output())
            k0 = self.assert_maps_hold(lab, [s], "agent stopped")

            r = rules_tool(lab, "remove", "--keep-offload")
            self.assertIn("removed rules", r.stdout)
            self.assertNotIn("PPTP_FIXUP", lab.router_exec(["iptables-save"]).stdout)
            self.assertIn("pptp_fixup", nft_tables(lab, self))
            k1 = self.assert_maps_hold(lab, [s], "after remove --keep-offload")
            self.assertEqual(set(k1["in_key"]), set(k0["in_key"]))
            # The kept elements still carry the call once the rules are back
            # (the agent still down).
            lab.agent.install_rules()
            self.assert_round(call, 3, "kept offload, agent stopped")

            r = rules_tool(lab, "remove")
            self.assertIn("removed rules and the GRE offload", r.stdout)
            self.assertNotIn("PPTP_FIXUP", lab.router_exec(["iptables-save"]).stdout)
            tables = nft_tables(lab, self)
            self.assertNotIn("pptp_fixup", tables, tables)
            self.assertIsNone(kernel_maps(lab))
            # Gone for good: with the rules back and no agent, the call's GRE
            # meets the fail-closed queue.
            lab.agent.install_rules()
            r = call.send(3, wait=1.0)
            self.assertEqual(r.get("event"), "sent", r)
            self.assertEqual(r["echoed_new"], 0, r)
            call.close(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["nft-elements"]:
        nft_elements_main()
    else:
        run_tests()
