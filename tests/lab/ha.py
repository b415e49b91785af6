"""An active/standby pair of PPTP NAT gateways in namespaces: keepalived
(VRRP) moves the inside gateway address and the public address, conntrackd
(FTFW, UDP unicast over a sync link of their own) syncs the kernel's
conntrack, pptp-fixupd --ha-sync connlabel on each gateway.

Topology (``HaPair``, a ``lab.topology.Topology``, so the same guarantees:
names ``pf<pid>-<n><random>-<role>``, everything removed on exit, on
exceptions and on SIGTERM/SIGINT/SIGHUP)::

    client1..N  eth0 198.18.0.(10+I)/24, default via 198.18.0.1 (inside VIP)
        |  inside LAN (a bridge in the switch namespace "sw")
    gw-a  in0 198.18.0.2/24   out0 203.0.113.2/24   sync0 198.19.0.1/30
    gw-b  in0 198.18.0.3/24   out0 203.0.113.3/24   sync0 198.19.0.2/30
        |  outside LAN (another bridge in "sw")
    server  eth0 203.0.113.10/24 (pptpd; no route back inside)

    VIPs (keepalived, one sync group, gw-a preferred): 198.18.0.1/24 on in0,
    203.0.113.1/24 on out0.  Each gateway: FORWARD policy DROP +
    ESTABLISHED,RELATED + in0 -> out0, nat POSTROUTING -s 198.18.0.0/24
    -o out0 SNAT --to-source 203.0.113.1.

Every config comes from the shipped examples in packaging/ha/
(keepalived.conf, conntrackd.conf, pptp-fixup-ha-notify), rendered per
gateway by replacing their example interfaces, addresses and paths; a
replacement whose example text is missing from the shipped file fails the
lab, so the examples stay what the lab tests.  keepalived runs with
``-i gw-a`` / ``-i gw-b`` (the shipped file's ``@gw-a``/``@gw-b`` lines).

    with HaPair(clients=3) as lab:
        lab.start_pptpd_at("server")
        ...                      # calls through gw-a (lab.master() == "gw-a")
        lab.fail("gw-a")         # its links down, as a dead gateway
        lab.wait_master("gw-b")
        lab.agents["gw-b"].stats()["ha"]

A failed gateway comes back with ``lab.reboot(role)`` (as a rebooted box:
agent, conntrackd and keepalived restarted, the agent's rules and offload
table removed and installed again, the kernel's conntrack flushed) or
``lab.restore(role)`` (links up, everything on it as it was).

Per gateway ``lab.gw_dir(role)`` holds its configs, logs
(conntrackd.log, keepalived.log, ha-notify.log: the notify script's
lines, each with a time stamp) and the agent's socket and log.

``lab.ct_entries(role)`` and ``lab.ct_set_label(role, orig, labels)`` read
and set labels in a gateway's kernel with lab.ctnetlink (the conntrack tool
shows labels only through /etc/xtables/connlabel.conf, which the lab does
not touch).
"""

import json
import os
import re
import signal
import subprocess
import time

from . import netns
from . import topology
from .agent import RULES_TOOL, Agent, bin_dir
from .netns import LabError

REPO = os.path.dirname(os.path.dirname(netns.LAB_DIR))
PACKAGING = os.path.join(REPO, "packaging", "ha")
KEEPALIVED_CONF = os.path.join(PACKAGING, "keepalived.conf")
CONNTRACKD_CONF = os.path.join(PACKAGING, "conntrackd.conf")
NOTIFY_SCRIPT = os.path.join(PACKAGING, "pptp-fixup-ha-notify")

GATEWAYS = ("gw-a", "gw-b")
INSIDE_NET = "198.18.0.0/24"
INSIDE_VIP = "198.18.0.1"
PUBLIC_VIP = "203.0.113.1"
SERVER = topology.SERVER
GW_INSIDE = {"gw-a": "198.18.0.2", "gw-b": "198.18.0.3"}
GW_OUTSIDE = {"gw-a": "203.0.113.2", "gw-b": "203.0.113.3"}
GW_SYNC = {"gw-a": "198.19.0.1", "gw-b": "198.19.0.2"}
INSIDE_IF, OUTSIDE_IF, SYNC_IF = "in0", "out0", "sync0"
# The example values of the shipped files and what the lab puts there.
EXAMPLE_SYNC = ("10.0.0.1", "10.0.0.2")       # this gateway's, the other's
EXAMPLE_ADDR = {"192.168.1.1": INSIDE_VIP, "203.0.113.1": PUBLIC_VIP,
                "192.168.1.2": GW_INSIDE["gw-a"], "192.168.1.3": GW_INSIDE["gw-b"],
                "203.0.113.2": GW_OUTSIDE["gw-a"], "203.0.113.3": GW_OUTSIDE["gw-b"]}
EXAMPLE_NOTIFY = "/usr/local/sbin/pptp-fixup-ha-notify"
PYTHON = netns.PYTHON


def render(template_path, mapping):
    """The template's text with every key of ``mapping`` replaced by its
    value, all in one pass, a key only as a whole token (not inside a longer
    address or name).  A key missing from the template is an error: the
    shipped example changed and the lab would no longer test it."""
    with open(template_path) as f:
        text = f.read()
    missing = [k for k in mapping if not re.search(_token(k), text)]
    if missing:
        raise LabError("%s no longer has %s" % (template_path, missing))
    pattern = re.compile("|".join(_token(k) for k in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping[m.group(0)], text)


def _token(key):
    return r"(?<![\w.])" + re.escape(key) + r"(?![\w])(?!\.\d)"


def set_shell_vars(template_path, values):
    """The shell script's text with each ``NAME=...`` assignment line of
    ``values`` set to the value (each must be there)."""
    with open(template_path) as f:
        lines = f.read().split("\n")
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"([A-Z_]+)=", line)
        if m and m.group(1) in values and m.group(1) not in seen:
            lines[i] = "%s=%s" % (m.group(1), _shell_quote(values[m.group(1)]))
            seen.add(m.group(1))
    missing = set(values) - seen
    if missing:
        raise LabError("%s no longer sets %s" % (template_path, sorted(missing)))
    return "\n".join(lines)


def _shell_quote(value):
    return "'" + value.replace("'", "'\\''") + "'" if value else ""


# ----------------------------------------------------------------- the pair

class _GatewayView:
    """What ``lab.agent.Agent`` needs of a lab, for one gateway: its
    namespace as "router", a temp dir of its own (socket, log, config)."""

    def __init__(self, lab, role):
        self._lab = lab
        self.role = role
        self.tmpdir = lab.gw_dir(role)
        self.outside_ifs = [OUTSIDE_IF]
        self.outside_if = OUTSIDE_IF

    def router_exec(self, argv, **kw):
        return self._lab.exec(self.role, argv, **kw)

    def spawn(self, role, argv, **kw):
        return self._lab.spawn(self.role if role == "router" else role, argv, **kw)

    def __getattr__(self, name):
        return getattr(self._lab, name)


def installer_has_conntrack_labels():
    cp = netns.run([RULES_TOOL, "--help"], check=False)
    return "--conntrack-labels" in cp.stdout + cp.stderr


# The no-op connlabel rule the lab loads itself when the rule installer has
# no --conntrack-labels yet: entries get label space only while some
# connlabel rule exists in the namespace.
CONNLABEL_RULE = ["-t", "mangle", "-A", "PREROUTING", "-m", "connlabel", "--label", "127",
                  "-m", "comment", "--comment", "pflab-ha-labelspace", "-j", "RETURN"]


class HaAgent(Agent):
    """pptp-fixupd --ha-sync connlabel on one gateway of an HaPair; its
    rules with --conntrack-labels (or, from an installer without it, the
    lab's own connlabel rule)."""

    def __init__(self, lab, role, extra_args=(), **kw):
        self.own_label_rule = not installer_has_conntrack_labels()
        super().__init__(_GatewayView(lab, role), extra_args=["--ha-sync", "connlabel"] + list(extra_args),
                         rules_args=[] if self.own_label_rule else ["--conntrack-labels"], **kw)
        self.role = role

    def install_rules(self):
        super().install_rules()
        if self.own_label_rule and self.lab.router_exec(
                ["iptables", "-w"] + CONNLABEL_RULE[:2] + ["-C"] + CONNLABEL_RULE[3:], check=False).returncode != 0:
            self.lab.router_exec(["iptables", "-w"] + CONNLABEL_RULE)

    def ha_adopt(self):
        return self.ctl_json("ha", "adopt")

    def ha_stats(self):
        return self.stats()["ha"]


class HaPair(topology.Topology):
    """The pair (see the module docstring).  ``clients``: inside clients;
    ``agents``: run pptp-fixupd on both gateways (else only the rules'
    connlabel rule, so labels and conntrackd can be tried without it);
    ``agent_args``: more arguments for both daemons; ``start``: start
    keepalived (gw-a master, then gw-b backup); ``label_space``: without
    agents, the gateways that get the connlabel rule."""

    def __init__(self, clients=3, agents=True, agent_args=(), name_hint="", start=True,
                 label_space=GATEWAYS):
        super().__init__(mode="agent", agent_setup=self._setup, agent_teardown=self._teardown,
                         name_hint=name_hint)
        self.n_inside = clients
        self.with_agents = agents
        self.agent_args = list(agent_args)
        self.start_ha = start
        self.label_space = tuple(label_space)   # without agents: gateways given the connlabel rule
        self.agents = {}
        self.keepalived = {}
        self.conntrackd = {}
        self.failed = set()
        for role in ("gw-a", "gw-b"):
            self.host(role, router=role == "gw-a")
        self.host("server")
        clients_ = ["client%d" % i for i in range(1, clients + 1)]
        for role in clients_:
            self.host(role)
        # Topology treats one host as "the router"; gw-b gets the same by hand.
        self.sysctl("gw-b", "net.ipv4.ip_forward=1")
        self.segment("inside", [(g, INSIDE_IF, [GW_INSIDE[g] + "/24"]) for g in GATEWAYS] +
                     [(c, "eth0", [topology.inside_addr(10 + i) + "/24"])
                      for i, c in enumerate(clients_, 1)])
        self.segment("outside", [(g, OUTSIDE_IF, [GW_OUTSIDE[g] + "/24"]) for g in GATEWAYS] +
                     [("server", "eth0", [SERVER + "/24"])])
        self.segment("sync", [(g, SYNC_IF, [GW_SYNC[g] + "/30"]) for g in GATEWAYS])
        for c in clients_:
            self.route(c, "default via %s" % INSIDE_VIP)
        self.inside_ifs = [INSIDE_IF]
        self.outside_ifs = [OUTSIDE_IF]
        for rule in (["-P", "FORWARD", "DROP"],
                     ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["-A", "FORWARD", "-i", INSIDE_IF, "-o", OUTSIDE_IF, "-j", "ACCEPT"]):
            self.iptables("gw-b", *rule)
        for g in GATEWAYS:
            self.iptables(g, "-t", "nat", "-A", "POSTROUTING", "-s", INSIDE_NET, "-o", OUTSIDE_IF,
                          "-j", "SNAT", "--to-source", PUBLIC_VIP)
        self.info = {"inside_vip": INSIDE_VIP, "public_vip": PUBLIC_VIP, "server": SERVER,
                     "clients": clients_}

    # ---- paths and configs
    def gw_dir(self, role):
        d = os.path.join(self.tmpdir, role)
        os.makedirs(d, exist_ok=True)
        return d

    def conntrackd_conf(self, role):
        return os.path.join(self.gw_dir(role), "conntrackd.conf")

    def notify_log(self, role):
        try:
            with open(os.path.join(self.gw_dir(role), "ha-notify.log")) as f:
                return f.read()
        except OSError:
            return ""

    def write_configs(self, role):
        d = self.gw_dir(role)
        own, other = GW_SYNC[role], GW_SYNC["gw-b" if role == "gw-a" else "gw-a"]
        mapping = {"eth2": SYNC_IF}
        mapping.update(EXAMPLE_ADDR)
        mapping.update({EXAMPLE_SYNC[0]: own, EXAMPLE_SYNC[1]: other,
                        "/var/log/conntrackd.log": os.path.join(d, "conntrackd.log"),
                        "/var/lock/conntrackd.lock": os.path.join(d, "conntrackd.lock"),
                        "/var/run/conntrackd.ctl": os.path.join(d, "conntrackd.ctl")})
        with open(self.conntrackd_conf(role), "w") as f:
            f.write(render(CONNTRACKD_CONF, mapping))
        script = os.path.join(d, "pptp-fixup-ha-notify")
        with open(script, "w") as f:
            f.write(set_shell_vars(NOTIFY_SCRIPT, {
                "CONNTRACKD_CONFIG": self.conntrackd_conf(role),
                "CONNTRACKD_LOCK": os.path.join(d, "conntrackd.lock"),
                "PPTP_FIXUPCTL": os.path.join(bin_dir(), "pptp-fixupctl"),
                "PPTP_FIXUP_SOCKET": os.path.join(d, "pptp-fixupd.sock"),
                "HA_LOG": os.path.join(d, "ha-notify.log"),
                "DEFAULTS": os.path.join(d, "no-defaults")}))
        os.chmod(script, 0o755)
        mapping = {"eth1": INSIDE_IF, "eth0": OUTSIDE_IF, "192.168.1.1": INSIDE_VIP,
                   "203.0.113.1": PUBLIC_VIP, EXAMPLE_NOTIFY: script}
        with open(os.path.join(d, "keepalived.conf"), "w") as f:
            f.write(render(KEEPALIVED_CONF, mapping))

    # ---- bring-up
    def _setup(self, _lab):
        # The lab's temp dir is 0700 root under /tmp; keepalived's script
        # security wants no one but root able to change the script's path.
        os.chmod(self.tmpdir, 0o700)
        for g in GATEWAYS:
            self.write_configs(g)
            if self.with_agents:
                agent = HaAgent(self, g, extra_args=self.agent_args)
                self.agents[g] = agent
                agent.install_rules()
                agent.start()
            elif g in self.label_space:
                self.give_label_space(g)
        for g in GATEWAYS:
            self.start_conntrackd(g)
        if self.start_ha:
            self.start_keepalived("gw-a")
            self.wait_master("gw-a", timeout=15)
            self.start_keepalived("gw-b")
            self.wait_state("gw-b", "backup", timeout=15)

    def give_label_space(self, role):
        """The lab's no-op connlabel rule: conntrack entries created from
        now on in ``role`` get label space."""
        self.exec(role, ["iptables", "-w"] + CONNLABEL_RULE)

    def start_conntrackd(self, role, wait=10.0):
        log = open(os.path.join(self.gw_dir(role), "conntrackd.out"), "ab")
        p = self.spawn(role, ["conntrackd", "-C", self.conntrackd_conf(role)],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.conntrackd[role] = p
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise LabError("conntrackd in %s exited with %s: %s" % (
                    role, p.returncode, self._file(role, "conntrackd.log")))
            if self.exec(role, ["conntrackd", "-C", self.conntrackd_conf(role), "-s"], check=False).returncode == 0:
                return p
            time.sleep(0.1)
        raise LabError("conntrackd in %s did not answer: %s" % (role, self._file(role, "conntrackd.log")))

    def start_keepalived(self, role):
        d = self.gw_dir(role)
        log = open(os.path.join(d, "keepalived.log"), "ab")
        p = self.spawn(role, ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
                              "--vrrp", "--config-id", role, "--use-file", os.path.join(d, "keepalived.conf"),
                              "--pid", os.path.join(d, "keepalived.pid"),
                              "--vrrp_pid", os.path.join(d, "keepalived-vrrp.pid")],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.keepalived[role] = p
        time.sleep(0.2)
        if p.poll() is not None:
            raise LabError("keepalived in %s exited with %s: %s" % (
                role, p.returncode, self._file(role, "keepalived.log")))
        return p

    def _file(self, role, name):
        try:
            with open(os.path.join(self.gw_dir(role), name), "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    # ---- state
    def addresses(self, role):
        out = self.exec(role, ["ip", "-4", "-o", "addr", "show"], check=False).stdout
        return set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out))

    def has_vips(self, role):
        return {INSIDE_VIP, PUBLIC_VIP} <= self.addresses(role)

    def state(self, role):
        """The last state the notify script finished ("master", "backup",
        "fault") or None."""
        done = re.findall(r"pptp-fixup-ha-notify: (master|backup|fault): done", self.notify_log(role))
        return done[-1] if done else None

    def notify_times(self, role, what):
        """Time stamps (time.time()) of the notify script's lines that
        start with ``what`` (e.g. "master: committing")."""
        return [float(t) for t, rest in re.findall(r"^(\d+\.\d+) pptp-fixup-ha-notify: (.*)$",
                                                    self.notify_log(role), re.M) if rest.startswith(what)]

    def wait_state(self, role, state, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(role) == state:
                return True
            time.sleep(0.05)
        raise LabError("%s not %s after %ss; notify log: %s; keepalived: %s" % (
            role, state, timeout, self.notify_log(role), self._file(role, "keepalived.log")))

    def wait_master(self, role, timeout=15.0):
        """Until ``role`` holds both VIPs and its notify script has done
        "master" (committed and adopted)."""
        self.wait_state(role, "master", timeout)
        deadline = time.monotonic() + timeout
        while not self.has_vips(role):
            if time.monotonic() > deadline:
                raise LabError("%s is master without the VIPs: %s" % (role, self.addresses(role)))
            time.sleep(0.05)
        return True

    def master(self):
        holders = [g for g in GATEWAYS if self.has_vips(g)]
        return holders[0] if len(holders) == 1 else None

    def fail(self, role):
        """The gateway fails as a dead box does for the network: all its
        links down at once (keepalived there sees it and goes to FAULT)."""
        self.failed.add(role)
        self._links(role, "down")

    def _links(self, role, updown):
        netns.run(["ip", "-n", self.ns_name(role), "-batch", "-"],
                  input="".join("link set %s %s\n" % (i, updown) for i in (INSIDE_IF, OUTSIDE_IF, SYNC_IF)))

    def restore(self, role):
        """The failed gateway's links up again, everything on it as it was
        (a cable or a switch port back, no reboot): its agent, conntrackd
        and keepalived go on with what they had (keepalived leaves FAULT
        for BACKUP, nopreempt keeps it there)."""
        self.failed.discard(role)
        self._links(role, "up")

    def reboot(self, role):
        """The failed gateway comes back as a rebooted box: what ran there
        is gone (agent, conntrackd, keepalived stopped; the agent's rules
        and its GRE offload table removed; the kernel's conntrack table
        flushed), then, links up, it boots as the README sets a gateway up:
        the rules (--conntrack-labels), a fresh pptp-fixupd --ha-sync
        connlabel (its start-up adoption finds no labels), conntrackd,
        keepalived (BACKUP, nopreempt: it does not take the VIPs back)."""
        agent = self.agents.get(role)
        if agent is not None:
            agent.stop()
            agent.remove_rules()
        for procs in (self.keepalived, self.conntrackd):
            p = procs.pop(role, None)
            if p is not None:
                self.stop_process(p, timeout=3.0, sig=signal.SIGTERM)
        # A reboot starts with an empty /run (the lock) and kernel.
        for name in ("conntrackd.lock", "conntrackd.ctl"):
            try:
                os.unlink(os.path.join(self.gw_dir(role), name))
            except FileNotFoundError:
                pass
        self.exec(role, ["conntrack", "-F"], check=False)
        self._links(role, "up")
        self.failed.discard(role)
        if agent is not None:
            agent.install_rules()
            agent.start()
        self.start_conntrackd(role)
        self.start_keepalived(role)

    def ctd(self, role, *args, check=True):
        return self.exec(role, ["conntrackd", "-C", self.conntrackd_conf(role)] + list(args), check=check).stdout

    def ct_entries(self, role):
        out = self.exec(role, ["env", "PYTHONPATH=" + netns.TESTS_DIR, PYTHON, "-m", "lab.ctnetlink", "dump"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ct_set_label(self, role, orig, labels):
        self.exec(role, ["env", "PYTHONPATH=" + netns.TESTS_DIR, PYTHON, "-m", "lab.ctnetlink", "set",
                         json.dumps(orig), bytes(labels).hex()])

    def control_entries(self, role, port=1723):
        return [e for e in self.ct_entries(role)
                if e.get("orig", {}).get("proto") == 6 and e["orig"].get("dport") == port]

    # ---- teardown
    def _teardown(self, _lab):
        errors = []
        for g, agent in self.agents.items():
            try:
                agent.cleanup()
            except Exception as e:       # both gateways' agents are checked
                errors.append("%s: %s" % (g, e))
        for procs in (self.keepalived, self.conntrackd):
            for p in procs.values():
                self.stop_process(p, timeout=3.0, sig=signal.SIGTERM)
        if errors:
            raise LabError("; ".join(errors))

