#!/usr/bin/python3
"""Driver of tools/demo: the namespace lab with real peers, shown step by step."""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.pptp_client import RealClient, run_real_clients  # noqa: E402
from lab.synthetic_pns import collect_synthetic, spawn_synthetic  # noqa: E402

FRAMES = 5


def say(text=""):
    print(text, flush=True)


def show_results(results, indent="  "):
    for r in results:
        if r.frames_sent == 0:
            say("%sclient %d (%s): FAILED, no GRE from the server reached it; pptp gave up the call"
                % (indent, r.index, Lab.client_addr(r.index)))
            continue
        verdict = "OK" if r.frames_echoed == r.frames_sent else "FAILED"
        say("%sclient %d (%s): %d of %d PPP frames echoed by the server  %s"
            % (indent, r.index, Lab.client_addr(r.index), r.frames_echoed, r.frames_sent, verdict))


def main():
    say("pptp-fixup demo: three real PPTP clients (pptp-linux) behind one masqueraded")
    say("address, talking to a real PPTP server (pptpd), in network namespaces.")
    say()
    say("  clients 198.18.0.11-13 --- router 198.18.0.1 | 203.0.113.1 --- pptpd 203.0.113.10")
    say("                             (MASQUERADE on out0, FORWARD policy DROP)")
    say()

    say("1. Plain MASQUERADE, no fixup: the server's GRE finds no way back.")
    with Lab(clients=3, mode="plain", name_hint="d") as lab:
        lab.start_pptpd()
        show_results(run_real_clients(lab, [1, 2, 3], frames=FRAMES, timeout=4))
    say()

    say("2. The same, plus pptp-fixup-rules and pptp-fixupd (no kernel PPTP helper).")
    with Lab(clients=3, mode="agent", name_hint="d", **agent_hooks(call_id_allocation=None)) as lab:
        lab.start_pptpd()
        clients = [RealClient(lab, i) for i in (1, 2, 3)]
        try:
            for c in clients:
                c.start()
            for c in clients:
                c.wait_server_frame(8)
            for c in clients:
                c.exchange(FRAMES)
            say()
            say("   pptp-fixupctl sessions  (the agent's view of the live calls):")
            for line in lab.agent.ctl("sessions").splitlines():
                say("     " + line)
            say()
            say("   pptp-fixupctl connections:")
            for line in lab.agent.ctl("connections").splitlines():
                say("     " + line)
        finally:
            results = [c.stop() for c in clients]
        say()
        show_results(results, "   ")
        ok = all(r.frames_echoed == FRAMES for r in results)
        stats = lab.agent.stats()
        say()
        say("   agent counters: %d packets seen, %d rewritten, %d dropped, %d calls built"
            % (stats["counters"]["packets_seen"], stats["counters"]["packets_rewritten"],
               stats["counters"]["packets_dropped"], stats["counters"]["calls_built"]))
        lab.agent.stop()
        say()
        say("   agent log:")
        for line in lab.agent.output().splitlines():
            say("     " + line)
    say()
    say("3. Two clients that choose the same Call ID (7), through pptp-fixupd.")
    say("   (a small synthetic client of the project's; the real pptp picks random IDs)")
    with Lab(clients=2, mode="agent", name_hint="d", **agent_hooks(call_id_allocation=None)) as lab:
        lab.start_pptpd()
        procs = [spawn_synthetic(lab, i, call_id=7, frames=FRAMES, extra=["--hold", "1.5"]) for i in (1, 2)]
        time.sleep(1.0)
        table = lab.agent.ctl("sessions")
        results = [collect_synthetic(lab, p) for p in procs]
        for line in table.splitlines():
            say("     " + line)
        for i, r in enumerate(results, 1):
            say("   client %d (%s): Call ID %s, %s of %s frames echoed  %s"
                % (i, Lab.client_addr(i), r.get("call_id"), r.get("frames_echoed"), r.get("frames_sent"),
                   "OK" if r.get("returncode") == 0 else "FAILED"))
            ok = ok and r.get("returncode") == 0
    say()
    say("Lab removed. Result: %s" % ("every client worked through one address"
                                    if ok else "FAILED: not every client got its frames back"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
