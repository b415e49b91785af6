#!/usr/bin/python3
"""pptp-fixupd --ha-sync connlabel on one gateway (run as root).

The failover test (test_failover.py) moves calls between two gateways; this
one checks the mechanism under it in a single lab router, with real pptpd
and synthetic clients holding calls open:

- with the rules' --conntrack-labels, each control connection's conntrack
  entry carries a label of the agent's that names its calls (read back with
  this script's own ctnetlink dump as well as the agent's counters);
- an agent started over those entries, after the one that wrote them
  stopped (queue path only, --gre-offload off, so nothing else holds the
  calls), adopts every call with the same Call IDs, and their GRE echoes
  again; a call torn down takes its Call IDs out of the label, and the last
  one leaves a label of no calls;
- as on a standby (labels there, no offload table), adopted calls go to
  this gateway's offload; a restart over its own table finds them known;
- an entry whose label is not ours (another user's bits, a damaged label)
  is not adopted and is counted; without --conntrack-labels the entries
  have no label space and the agent says so (label_write_failures, ENOSPC)
  while the calls themselves work.

    sudo /usr/bin/python3 tests/integration/test_ha_labels.py [-v]
"""

import json
import os
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab.agent import agent_hooks, bin_dir  # noqa: E402
from lab.ha_label import label_calls, one_call_label  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402
from lab.synthetic_pns import HeldCall  # noqa: E402

LABELS = ["--conntrack-labels"]
HA = ["--ha-sync", "connlabel"]


def log(*a):
    print("    [ha-labels]", *a, flush=True)


def labels(lab):
    """{inside address: (original tuple, label bytes)} of labelled TCP entries."""
    out = lab.router_exec(["env", "PYTHONPATH=" + TESTS, sys.executable, "-m", "lab.ctnetlink", "dump"]).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {e["orig"]["src"]: (e["orig"], bytes.fromhex(e["labels"])) for e in entries
            if e.get("labels") and e["orig"].get("proto") == 6 and any(bytes.fromhex(e["labels"]))}


def set_label(lab, original, label):
    lab.router_exec(["env", "PYTHONPATH=" + TESTS, sys.executable, "-m", "lab.ctnetlink", "set",
                     json.dumps(original), label.hex()])


def triple(s):
    return (s["inside_address"], s["inside_call_id"], s["public_call_id"], s["outside_call_id"])


class HaLabels(unittest.TestCase):

    def start_calls(self, lab, clients):
        calls = [HeldCall(lab, i, call_id=7, frames=3) for i in clients]
        for c in calls:
            r = c.ready()
            self.assertEqual(r.get("event"), "ready", r)
            self.assertEqual(r["frames_echoed"], 3, r)
        return calls

    def assert_echo(self, call, n, what):
        r = call.send(n)
        self.assertEqual(r.get("event"), "sent", "%s: %s" % (what, r))
        self.assertEqual(r["echoed_new"], n, "%s: client %d got %s of %d echoes: %s"
                         % (what, call.index, r["echoed_new"], n, r))
        self.assertEqual(r["gre_rx_foreign"], 0, what)

    def test_1_restart_on_the_queue_path_adopts_from_labels(self):
        with Lab(clients=2, mode="agent", **agent_hooks(gre_offload="off", extra_args=HA,
                                                        rules_args=LABELS)) as lab:
            lab.start_pptpd()
            calls = self.start_calls(lab, (1, 2))
            before = sorted(triple(s) for s in lab.agent.sessions())
            self.assertEqual(len(before), 2, before)
            ha = lab.agent.stats()["ha"]
            log("written:", ha)
            self.assertGreaterEqual(ha["labels_written"], 2, ha)
            self.assertEqual(ha["label_write_failures"], 0, ha)
            # The kernel's entries carry exactly the sessions' Call IDs.
            found = labels(lab)
            self.assertEqual(sorted(found), [netns.client_addr(1), netns.client_addr(2)], found)
            for s in lab.agent.sessions():
                self.assertEqual(label_calls(found[s["inside_address"]][1]),
                                 [(s["inside_call_id"], s["public_call_id"], s["outside_call_id"])])
            self.assertEqual(lab.agent.stop(), 0)
            # Nothing translates the calls now (queue path only): their GRE
            # stalls, it does not leak.
            lab.agent.start()
            ha = lab.agent.stats()["ha"]
            log("after the restart:", ha)
            self.assertEqual(ha["calls_adopted"], 2, ha)
            after = sorted(triple(s) for s in lab.agent.sessions())
            self.assertEqual(after, before)
            for c in calls:
                self.assert_echo(c, 4, "after adoption")
            # A second run finds them here already.
            r = lab.agent.ctl_json("ha", "adopt")
            self.assertEqual((r["adopted"], r["already_known"]), (0, 2), r)
            # This kernel filters the dump itself (the fixup port's entries only).
            self.assertTrue(r["kernel_filter"], r)
            # A call that ends leaves its label with no call: adopting again
            # brings nothing back.
            r = calls[0].finish("clear")
            self.assertEqual(r.get("returncode"), 0, r)
            self.assertTrue(wait_until(lambda: len(lab.agent.sessions()) == 1, 10), "client 1's call to end")
            self.assertTrue(wait_until(lambda: label_calls(labels(lab)[netns.client_addr(1)][1]) == [], 10),
                            "client 1's label to name no call")
            r = lab.agent.ctl_json("ha", "adopt")
            self.assertEqual((r["adopted"], r["already_known"]), (0, 1), r)
            self.assert_echo(calls[1], 3, "client 2 after client 1 ended")
            r = calls[1].finish("clear")
            self.assertEqual(r.get("returncode"), 0, r)
            self.assertTrue(wait_until(lambda: not lab.agent.sessions(), 10), "the calls to end")

    def test_2_labels_not_ours_are_not_adopted(self):
        with Lab(clients=2, mode="agent", **agent_hooks(gre_offload="off", extra_args=HA,
                                                        rules_args=LABELS)) as lab:
            lab.start_pptpd()
            calls = self.start_calls(lab, (1, 2))
            sessions = {s["inside_address"]: s for s in lab.agent.sessions()}
            c1, c2 = netns.client_addr(1), netns.client_addr(2)
            found = labels(lab)
            self.assertEqual(lab.agent.stop(), 0)
            # Another user's label bit on client 1's entry (bit 100): the
            # label no longer checks out, its call is not adopted.
            original, label = found[c1]
            damaged = bytearray(label)
            damaged[12] |= 0x10
            set_label(lab, original, bytes(damaged))
            lab.agent.start()
            ha = lab.agent.stats()["ha"]
            log("with a damaged label:", ha)
            self.assertEqual((ha["calls_adopted"], ha["invalid_labels"]), (1, 1), ha)
            self.assertEqual([triple(s) for s in lab.agent.sessions()], [triple(sessions[c2])])
            self.assert_echo(calls[1], 3, "client 2, adopted")
            r = calls[0].send(2)
            self.assertEqual(r["echoed_new"], 0, "client 1's call was not adopted, yet it echoes: %s" % r)
            self.assertEqual(r["gre_rx_foreign"], 0, r)
            self.assertGreater(lab.agent.stats()["dropped"]["gre_no_matching_call"], 0)
            # A well-formed label (someone else's) forged on client 1's entry that names client
            # 2's public Call ID (at the same server): refused as a conflict,
            # client 2's call keeps its GRE.
            set_label(lab, original, one_call_label(0x4242, sessions[c2]["public_call_id"],
                                                  sessions[c2]["outside_call_id"] ^ 1))
            r = lab.agent.ctl_json("ha", "adopt")
            log("with a forged label:", r)
            self.assertEqual((r["adopted"], r["conflicts"], r["already_known"]), (0, 1, 1), r)
            self.assertEqual([triple(s) for s in lab.agent.sessions()], [triple(sessions[c2])])
            self.assert_echo(calls[1], 3, "client 2 after the forged label")
            r = calls[1].finish("clear")
            self.assertEqual(r.get("returncode"), 0, r)
            calls[0].finish("close")

    def test_3_entries_without_label_space_are_reported(self):
        # No --conntrack-labels: the kernel gave the entries no label space.
        with Lab(clients=1, mode="agent", **agent_hooks(gre_offload="off", extra_args=HA)) as lab:
            lab.start_pptpd()
            calls = self.start_calls(lab, (1,))
            ha = lab.agent.stats()["ha"]
            log("without label space:", ha)
            self.assertEqual(ha["labels_written"], 0, ha)
            self.assertGreaterEqual(ha["label_write_failures"], 1, ha)
            self.assertEqual(ha["last_write_error"], os.strerror(28), ha)   # ENOSPC
            self.assertIn("--conntrack-labels", lab.agent.output())
            self.assert_echo(calls[0], 3, "the call itself")
            r = calls[0].finish("clear")
            self.assertEqual(r.get("returncode"), 0, r)

    def test_4_adopted_calls_go_to_the_offload(self):
        # As on a standby: the labels are there, the offload table is not
        # (the other gateway's kernel had it). Adopted calls are offloaded
        # here; a restart over this gateway's own table finds them known.
        with Lab(clients=2, mode="agent", **agent_hooks(gre_offload="nft", extra_args=HA,
                                                        rules_args=LABELS)) as lab:
            lab.start_pptpd()
            calls = self.start_calls(lab, (1, 2))
            self.assertTrue(wait_until(lambda: all(s["offloaded"] for s in lab.agent.sessions()), 10),
                            "both calls offloaded")
            before = sorted(triple(s) for s in lab.agent.sessions())
            self.assertEqual(lab.agent.stop(), 0)
            lab.router_exec([os.path.join(bin_dir(), "pptp-fixupd"), "--remove-offload"])
            lab.agent.start()
            ha = lab.agent.stats()["ha"]
            log("adopted onto a new offload table:", ha)
            self.assertEqual(ha["calls_adopted"], 2, ha)
            sessions = lab.agent.sessions()
            self.assertEqual(sorted(triple(s) for s in sessions), before)
            self.assertTrue(all(s["offloaded"] for s in sessions), sessions)
            for c in calls:
                self.assert_echo(c, 4, "offloaded after adoption")
            self.assertEqual(lab.agent.stop(), 0)
            lab.agent.start()
            ha = lab.agent.stats()["ha"]
            self.assertEqual((ha["calls_adopted"], ha["calls_already_known"]), (0, 2), ha)
            for c in calls:
                self.assert_echo(c, 2, "after a restart over the offload table")
                r = c.finish("clear")
                self.assertEqual(r.get("returncode"), 0, r)


if __name__ == "__main__":
    run_tests()
