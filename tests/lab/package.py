"""The Debian package of the tree, built once for the tests that need it.

``built_package()`` runs tools/package, or reuses what an earlier test built
from the very same tree: tools/package's output is kept in
``<build tree>/package-cache/<hash of the tree>/`` (the build tree is the
parent of PPTP_FIXUP_BIN, default build/debug), and the hash covers every
file tools/package copies into its build, so a changed file means a new
build. A lock file keeps two tests from building the same tree at once.
PPTP_FIXUP_TEST_PACKAGE_CACHE=off always builds afresh (in a temp dir).
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from . import agent

REPO = agent.REPO
# What tools/package leaves out of its copy of the tree.
_EXCLUDED_DIRS = {"__pycache__"}
_EXCLUDED_TOP = {"build", ".git", os.path.join("packaging", "out")}
_KEEP = 3   # cache entries kept (the newest)


def project_version():
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        return re.search(r"project\(pptp-fixup VERSION ([0-9.]+)", f.read()).group(1)


class Build:
    """tools/package's exit status and output, and where its files are."""

    def __init__(self, out, returncode, output, seconds, reused):
        self.out = out
        self.returncode = returncode
        self.output = output
        self.seconds = seconds
        self.reused = reused
        self.version = project_version()
        self.deb = os.path.join(out, "pptp-fixup_%s_amd64.deb" % self.version)
        self.lintian = os.path.join(out, "lintian.txt")


def tree_hash():
    h = hashlib.sha256()
    for top, dirs, files in os.walk(REPO):
        rel_top = os.path.relpath(top, REPO)
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and
                         os.path.normpath(os.path.join(rel_top, d)) not in _EXCLUDED_TOP)
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(top, name)
            rel = os.path.normpath(os.path.join(rel_top, name))
            h.update(rel.encode() + b"\0")
            try:
                st = os.lstat(path)
                h.update(b"%o\0" % st.st_mode)
                if os.path.islink(path):
                    h.update(os.readlink(path).encode())
                else:
                    with open(path, "rb") as f:
                        h.update(f.read())
            except OSError:
                h.update(b"<gone>")
            h.update(b"\0")
    return h.hexdigest()[:16]


def _run_tools_package(out, log):
    started = time.monotonic()
    r = subprocess.run([os.path.join(REPO, "tools", "package"), "--out", out], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=400)
    seconds = time.monotonic() - started
    log("tools/package: exit status %d in %.0f s" % (r.returncode, seconds))
    return r.returncode, r.stdout, seconds


def built_package(log=print):
    """A Build of the tree as it is now (see the module's doc)."""
    if os.environ.get("PPTP_FIXUP_TEST_PACKAGE_CACHE", "on") == "off":
        out = tempfile.mkdtemp(prefix="pptp-fixup-package-")
        os.chmod(out, 0o755)
        return Build(out, *_run_tools_package(out, log), reused=False)
    cache = os.path.join(os.path.dirname(os.path.abspath(agent.bin_dir())), "package-cache")
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, 0o755)
    key = tree_hash()
    out = os.path.join(cache, key)
    result = os.path.join(out, "result.json")
    with open(os.path.join(cache, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(result):
            with open(result) as f:
                saved = json.load(f)
            build = Build(out, saved["returncode"], saved["output"], saved["seconds"], reused=True)
            if os.path.exists(build.deb) or build.returncode != 0:
                log("package of tree %s reused from %s (built in %.0f s)" % (key, out, build.seconds))
                return build
        shutil.rmtree(out, ignore_errors=True)
        os.mkdir(out)
        os.chmod(out, 0o755)
        rc, output, seconds = _run_tools_package(out, log)
        with open(result + ".new", "w") as f:
            json.dump({"returncode": rc, "output": output, "seconds": seconds}, f)
        os.rename(result + ".new", result)
        entries = sorted((e for e in os.listdir(cache) if os.path.isdir(os.path.join(cache, e)) and e != key),
                         key=lambda e: os.path.getmtime(os.path.join(cache, e)), reverse=True)
        for old in entries[_KEEP - 1:]:
            shutil.rmtree(os.path.join(cache, old), ignore_errors=True)
        return Build(out, rc, output, seconds, reused=False)
