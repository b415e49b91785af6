#!/usr/bin/python3
"""PPTP GRE larger than the MTU, through pptp-fixupd (run as root).

The synthetic client sends PPP frames with payloads of 1400 (GRE packet
1440 bytes: not fragmented), 1600, 3000 and 8190 bytes (2, 3 and 6 IP
fragments on the 1500-byte links).  The agent drops IP fragments that reach
it (ip_fragment), but conntrack's defragmentation runs before the queue
hooks, so the agent must see each GRE packet whole, once, and the kernel
fragments it again on the way out.  Checked:

- every frame is echoed by pptpd (through its pppd stand-in);
- fragments are on the wire both ways: at the server (from the public
  address, rewritten by the agent, and from the server) and at the client
  (the server's echoes, translated back to the inside Call ID);
- the agent counted one packet per frame each way, with the whole GRE size
  (bytes > 1480 per packet), and dropped nothing (ip_fragment 0).

8190 is the largest payload pptpd 1.4.0 echoes: at 8191 and 8192 it
acknowledges the frames but never echoes them, from 8193 on pptpctrl closes
the control connection; the same with the kernel helper, and the frames
reach the server whole, so this is pptpd's limit, not the agent's.

    sudo /usr/bin/python3 tests/integration/test_gre_fragments.py [-v]
"""

import os
import re
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab import pcap  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.synthetic_pns import run_synthetic  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

SIZES = (1400, 1600, 3000, 8190)   # PPP payload bytes; also the Call IDs
FRAMES = 3
MTU_PAYLOAD = 1480                 # IP payload per packet on a 1500 MTU
GRE_PPP_MIN = 12 + 4               # GRE header with K and S (A may add 4),
                                   # PPP address, control and protocol
PUBLIC = netns.ROUTER_OUT
SERVER = netns.SERVER_ADDR
CLIENT = netns.client_addr(1)


def log(*a):
    print("    [fragments]", *a, flush=True)


def fragment_groups(packets, src, dst):
    """{ident: {"count": fragments, "call_id": GRE Call ID of the first}}
    of the fragmented GRE packets from src to dst."""
    groups = {}
    for d in packets:
        if d["proto"] != 47 or d["src"] != src or d["dst"] != dst or \
                not d["fragment"]:
            continue
        g = groups.setdefault(d["ident"], {"count": 0, "call_id": None})
        g["count"] += 1
        if d["offset"] == 0 and d["gre"] is not None:
            g["call_id"] = d["gre"]["call_id"]
    return groups


class GreFragments(unittest.TestCase):

    def test_fragmented_gre_is_echoed(self):
        t0 = time.monotonic()
        with Lab(clients=1, mode="agent", **agent_hooks()) as lab:
            lab.start_pptpd()
            caps = {role: lab.capture(role, bpf=["ip", "proto", "47"])
                    for role in ("server", "client1")}
            results = {}
            for size in SIZES:
                r = run_synthetic(lab, 1, call_id=size, frames=FRAMES, extra=[
                    "--frame-size", str(size), "--timeout", "8",
                    "--first-wait", "5"], timeout=40)
                results[size] = r
                log("payload %5d: %s of %d echoed, rc %s, error %s" % (
                    size, r.get("frames_echoed"), FRAMES, r["returncode"],
                    r.get("error")))
            # The agent logs each call's packets and bytes at teardown.
            teardown = {}

            def all_torn_down():
                text = lab.agent.output()
                for m in re.finditer(
                        r"Teardown PPTP call \d+ inside \S+ call-id (\d+) .*"
                        r"packets in (\d+) out (\d+) bytes in (\d+) out (\d+)",
                        text):
                    teardown[int(m.group(1))] = tuple(
                        int(m.group(i)) for i in range(2, 6))
                return set(SIZES) <= set(teardown)
            self.assertTrue(wait_until(all_torn_down, 5), lab.agent.output())
            time.sleep(0.2)
            packets = {}
            for role, (proc, path) in caps.items():
                lab.stop_process(proc)
                packets[role] = list(pcap.ipv4_packets(path))
            stats = lab.agent.stats()
            self.assertIsNone(lab.agent.proc.poll())
            self.assertEqual(lab.agent.stop(), 0, lab.agent.output())

        for size in SIZES:
            with self.subTest(payload=size):
                r = results[size]
                self.assertEqual(r["returncode"], 0, r)
                self.assertEqual(r["frames_echoed"], FRAMES, r)
                least = GRE_PPP_MIN + size      # bytes of one GRE packet
                fragmented = least > MTU_PAYLOAD
                # The agent saw each frame once, whole.
                self.assertIn(size, teardown, lab.agent.output()[-2000:])
                p_in, p_out, b_in, b_out = teardown[size]
                log("payload %5d: agent saw packets in %d out %d, bytes in "
                    "%d out %d" % (size, p_in, p_out, b_in, b_out))
                self.assertEqual(p_out, FRAMES)
                self.assertGreaterEqual(b_out, FRAMES * least)
                self.assertGreaterEqual(p_in, FRAMES + 1)   # LCP + echoes
                self.assertGreaterEqual(b_in, FRAMES * least)
                # On the wire: fragments both ways, Call IDs translated.
                to_client = {i: g for i, g in fragment_groups(
                    packets["client1"], SERVER, CLIENT).items()
                    if g["call_id"] == size}
                if fragmented:
                    self.assertGreater(b_out / p_out, MTU_PAYLOAD)
                    self.assertGreaterEqual(len(to_client), FRAMES)
                    expect = -(-least // MTU_PAYLOAD)
                    for g in to_client.values():
                        self.assertGreaterEqual(g["count"], expect)
                else:
                    self.assertEqual(to_client, {})
                log("payload %5d: fragmented echoes at the client: %d" % (
                    size, len(to_client)))
        # The frames of the three fragmented sizes left the router for the
        # server in fragments again, from the public address.
        from_public = fragment_groups(packets["server"], PUBLIC, SERVER)
        log("fragmented GRE packets from the public address at the server:",
            len(from_public))
        self.assertGreaterEqual(len(from_public), FRAMES * 3)
        drops = {k: v for k, v in stats["dropped"].items() if v}
        log("agent drops:", drops or "none")
        self.assertEqual(drops, {})
        log("total %.1fs" % (time.monotonic() - t0))



if __name__ == "__main__":
    run_tests()
