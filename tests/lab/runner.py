"""What every lab test script shares: how it runs, and small waiting helpers."""

import os
import sys
import time
import unittest

from . import netns


def wait_until(pred, timeout, step=0.1):
    """Polls pred() until it is true or timeout seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def _main():
    if os.geteuid() != 0:
        print("must run as root", file=sys.stderr)
        return 2
    removed = netns.reap_stale()
    if removed:
        print("removed stale lab namespaces:", removed)
    t = time.monotonic()
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    print("total %.1fs" % (time.monotonic() - t))
    if prog.result.testsRun == 0:
        # A script that collects nothing (a typo in a name, a bad import
        # guard) must not pass by running nothing.
        print("no test ran", file=sys.stderr)
        return 1
    return 0 if prog.result.wasSuccessful() else 1


def run_tests():
    """Runs the calling script's unittest cases as root; exits 0 on success,
    1 on failure, 2 when not root, 128+N when stopped by signal N (the labs
    have cleaned up by then)."""
    try:
        sys.exit(_main())
    except netns.LabTerminated as e:
        sys.exit(128 + e.signum)
