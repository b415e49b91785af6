"""Parametrised namespace topologies, built the way ``netns.Lab`` builds its
fixed one and with the same guarantees: every namespace is created by the
topology (names ``pf<pid>-<counter><random>-<role>``, so labs run in
parallel and ``netns.reap_stale`` finds leftovers), every process started
in it is registered, and everything is removed on exit, on exceptions and
on SIGTERM/SIGINT/SIGHUP (``Topology`` is a ``netns.Lab``).

A topology is described before it is entered::

    t = Topology(mode="kernel-helper")          # "plain" | "kernel-helper" | "agent"
    t.host("router", router=True)               # the NAT gateway (one per topology)
    t.host("client1"); t.host("server")
    t.segment("inside", [("router", "br-in", ["198.18.0.1/24"]),
                         ("client1", "eth0", ["198.18.0.11/24"])],
              bridge_at="router", port_prefix="vc")
    t.segment("up0", [("router", "out0", ["203.0.113.1/24"]),
                      ("server", "eth0", ["203.0.113.10/24"])])
    t.route("client1", "default via 198.18.0.1")
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
    t.outside_ifs = ["out0"]
    with t as lab:
        lab.start_pptpd_at("server")

Segments: with ``bridge_at`` the bridge is that member's interface (a Linux
bridge with the member's addresses) and every other member gets a veth
whose far end is a port of it; a segment of two members without
``bridge_at`` is one veth pair; more members without ``bridge_at`` meet on
a bridge in a switch namespace of the topology's own ("sw").  Every
namespace has IPv6 off and rp_filter 0 (set before its interfaces exist,
so they inherit it); the router also forwards, and its bridges, like the
switch's, do not call iptables (as ``netns.Lab``).

The router gets the user's firewall that ``netns.Lab`` has (FORWARD policy
DROP, ESTABLISHED,RELATED, inside -> each outside interface accepted), the
topology's own rules (``iptables``), and in mode "kernel-helper" the
kernel's PPTP helper on TCP/1723 (raw PREROUTING CT --helper pptp).  In
mode "agent" ``agent_setup(lab)`` runs after the build; ``lab.outside_ifs``
lists the uplinks, which ``lab.agent.Agent`` passes on.

Factories for the NAT topologies of tests/integration/test_nat_topologies.py:
``port_forward``, ``snat_pool``, ``two_uplinks``, ``static_nat``,
``gateway_pptp``; each sets ``lab.info`` (a dict of its addresses).
"""

import os
import subprocess
import time

from . import netns
from .netns import LabError, run

INSIDE_PREFIX = "198.18.0."
OUTSIDE_PREFIX = "203.0.113."
ROUTER_IN = netns.ROUTER_IN
ROUTER_OUT = netns.ROUTER_OUT
SERVER = netns.SERVER_ADDR
_SWITCH = "sw"


class _Host:
    def __init__(self, role, router):
        self.role = role
        self.router = router
        self.addrs = {}        # ifname -> ["a.b.c.d/len", ...]
        self.routes = []       # "ip route add" arguments
        self.ip_rules = []     # "ip rule add" arguments
        self.iptables = []     # argument lists after "iptables -w"
        self.sysctls = []


class _Segment:
    def __init__(self, name, members, bridge_at, port_prefix):
        self.name = name
        self.members = [(r, i, list(a)) for r, i, a in members]
        self.bridge_at = bridge_at
        self.port_prefix = port_prefix


class Topology(netns.Lab):
    """A ``netns.Lab`` whose namespaces, links, addresses, routes and rules
    are given by the caller (see the module docstring).  ``Lab``'s helpers
    work on it: ``exec``/``spawn``/``capture``/``stop_process``/``conntrack``
    by role, ``router_exec``; ``client_addr(i)`` is client I's address
    here, ``addr_of(role)`` any host's first address."""

    def __init__(self, mode="plain", agent_setup=None, agent_teardown=None,
                 keep_bridge_nf=False, name_hint=""):
        super().__init__(clients=0, mode=mode, agent_setup=agent_setup,
                         agent_teardown=agent_teardown,
                         keep_bridge_nf=keep_bridge_nf, name_hint=name_hint)
        self.hosts = {}
        self.segments = []
        self.outside_ifs = []
        self.inside_ifs = []
        self.info = {}
        self.pptpds = {}       # role -> Popen (with .log_path)

    # ---- description
    def host(self, role, router=False):
        if role in self.hosts or role == _SWITCH:
            raise ValueError("role %r twice or reserved" % role)
        if router and any(h.router for h in self.hosts.values()):
            raise ValueError("one router per topology")
        self.hosts[role] = _Host(role, router)
        return self

    def segment(self, name, members, bridge_at=None, port_prefix=None):
        """members: (role, ifname, [addr/len, ...]) each."""
        for role, ifname, addrs in members:
            if role not in self.hosts:
                raise ValueError("segment %s: unknown host %r" % (name, role))
            if ifname in self.hosts[role].addrs:
                raise ValueError("%s has %s twice" % (role, ifname))
            self.hosts[role].addrs[ifname] = list(addrs)
        if bridge_at is not None and bridge_at not in [m[0] for m in members]:
            raise ValueError("bridge_at must be a member")
        if port_prefix is None:
            port_prefix = "p%d" % len(self.segments)
        self.segments.append(_Segment(name, members, bridge_at, port_prefix))
        return self

    def route(self, role, spec):
        self.hosts[role].routes.append(spec)
        return self

    def ip_rule(self, role, spec):
        self.hosts[role].ip_rules.append(spec)
        return self

    def iptables(self, role, *args):
        self.hosts[role].iptables.append(list(args))
        return self

    def sysctl(self, role, *settings):
        self.hosts[role].sysctls.extend(settings)
        return self

    # ---- names and addresses (netns.Lab's, for a free-form topology)
    def _role_ns(self, role):
        return role

    def addr_of(self, role, ifname=None):
        """First address (no prefix length) of a host, or of one interface."""
        h = self.hosts[role]
        for name, addrs in h.addrs.items():
            if addrs and ifname in (None, name):
                return addrs[0].split("/")[0]
        raise KeyError("%s has no address%s" % (role, " on " + ifname if ifname else ""))

    def client_addr(self, i):
        return self.addr_of("client%d" % i)

    host_addr = addr_of

    @property
    def router_role(self):
        return next(h.role for h in self.hosts.values() if h.router)

    @property
    def outside_if(self):
        return self.outside_ifs[0]

    @property
    def inside_if(self):
        return self.inside_ifs[0] if self.inside_ifs else "br-in"

    @property
    def server_addr(self):
        return self.addr_of("server")

    @property
    def router_outside_addr(self):
        return self.addr_of(self.router_role, self.outside_if)

    @property
    def router_inside_addr(self):
        return self.addr_of(self.router_role, self.inside_if)

    # ---- build
    def _build(self):
        if not any(h.router for h in self.hosts.values()):
            raise LabError("a topology needs a router")
        if not self.outside_ifs:
            raise LabError("a topology needs outside_ifs")
        switched = [s for s in self.segments
                    if s.bridge_at is None and len(s.members) > 2]
        roles = list(self.hosts) + ([_SWITCH] if switched else [])
        for role in roles:
            name = "%s-%s" % (self.id, self._role_ns(role))
            run(["ip", "netns", "add", name])
            self.namespaces[role] = name
        bridge_nf = not self.keep_bridge_nf and os.path.exists(
            "/proc/sys/net/bridge/bridge-nf-call-iptables")
        # Before any interface: new ones inherit "default".
        for role in roles:
            s = list(netns._NO_IPV6) + ["net.ipv4.conf.all.rp_filter=0",
                                        "net.ipv4.conf.default.rp_filter=0"]
            h = self.hosts.get(role)
            if role == _SWITCH or (h and h.router):
                if h:
                    s.append("net.ipv4.ip_forward=1")
                if bridge_nf:
                    s += ["net.bridge.bridge-nf-call-iptables=0",
                          "net.bridge.bridge-nf-call-ip6tables=0",
                          "net.bridge.bridge-nf-call-arptables=0"]
            if h:
                s += h.sysctls
            self.exec(role, ["sysctl", "-q", "-w"] + s)

        links = []                       # root batch: veth pairs
        per_ns = {r: ["link set lo up"] for r in roles}
        up_last = {r: [] for r in roles}
        for idx, seg in enumerate(self.segments):
            if seg.bridge_at is not None:
                brole, bif, _ = next(m for m in seg.members if m[0] == seg.bridge_at)
                per_ns[brole].append("link add %s type bridge" % bif)
                n = 0
                for role, ifname, _ in seg.members:
                    if role == brole:
                        continue
                    n += 1
                    port = "%s%d" % (seg.port_prefix, n)
                    links.append("link add %s netns %s type veth peer name %s netns %s"
                                 % (ifname, self.ns_name(role), port, self.ns_name(brole)))
                    per_ns[brole] += ["link set %s master %s" % (port, bif),
                                      "link set %s up" % port]
                up_last[brole].append(bif)
            elif len(seg.members) == 2:
                (r1, i1, _), (r2, i2, _) = seg.members
                links.append("link add %s netns %s type veth peer name %s netns %s"
                             % (i1, self.ns_name(r1), i2, self.ns_name(r2)))
            else:
                br = "br%d" % idx
                per_ns[_SWITCH] += ["link add %s type bridge" % br]
                for n, (role, ifname, _) in enumerate(seg.members, 1):
                    port = "s%dp%d" % (idx, n)
                    links.append("link add %s netns %s type veth peer name %s netns %s"
                                 % (ifname, self.ns_name(role), port,
                                    self.ns_name(_SWITCH)))
                    per_ns[_SWITCH] += ["link set %s master %s" % (port, br),
                                        "link set %s up" % port]
                up_last[_SWITCH].append(br)
        if links:
            run(["ip", "-batch", "-"], input="\n".join(links) + "\n")
        for role, h in self.hosts.items():
            for ifname, addrs in h.addrs.items():
                per_ns[role] += ["addr add %s dev %s" % (a, ifname) for a in addrs]
                if ifname not in up_last[role]:
                    per_ns[role].append("link set %s up" % ifname)
        for role in roles:
            cmds = per_ns[role] + ["link set %s up" % b for b in up_last[role]]
            h = self.hosts.get(role)
            if h:
                cmds += ["route add %s" % r for r in h.routes]
                cmds += ["rule add %s" % r for r in h.ip_rules]
            run(["ip", "-n", self.ns_name(role), "-batch", "-"],
                input="\n".join(cmds) + "\n")

        router = self.router_role
        inside = self.inside_ifs or [i for i in self.hosts[router].addrs
                                     if i not in self.outside_ifs]
        rules = [["-P", "FORWARD", "DROP"],
                 ["-A", "FORWARD", "-m", "conntrack", "--ctstate",
                  "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
        for i in inside:
            for o in self.outside_ifs:
                rules.append(["-A", "FORWARD", "-i", i, "-o", o, "-j", "ACCEPT"])
        for role, h in self.hosts.items():
            for r in (rules if h.router else []) + h.iptables:
                self.exec(role, ["iptables", "-w"] + r)
        if self.mode == "kernel-helper":
            self.exec(router, ["iptables", "-w", "-t", "raw", "-A",
                               "PREROUTING", "-p", "tcp", "--dport", "1723",
                               "-j", "CT", "--helper", "pptp"])

    # ---- pptpd anywhere
    def start_pptpd_at(self, role, listen=None, connections=100, extra_conf=(),
                       wait=10.0):
        """pptpd (foreground, own config, pid file and log, the pppd
        stand-in) in ``role``'s namespace listening on ``listen`` (default:
        the host's first address); waits until 1723 listens there.  Returns
        the Popen (``.log_path``; ``pptpd_output(role)`` reads it)."""
        if role in self.pptpds:
            raise LabError("pptpd already started in %s" % role)
        listen = listen or self.addr_of(role)
        d = os.path.join(self.tmpdir, "pptpd-%s" % role)
        os.makedirs(d)
        opt = os.path.join(d, "options")
        open(opt, "w").close()
        conf = os.path.join(d, "pptpd.conf")
        n = len(self.pptpds)
        with open(conf, "w") as f:
            f.write("\n".join([
                "ppp %s" % netns.STANDIN, "option %s" % opt,
                "localip 10.%d.0.1" % (250 - n), "remoteip 10.%d.1.1-250" % (250 - n),
                "listen %s" % listen, "connections %d" % connections,
                "noipparam"] + list(extra_conf)) + "\n")
        log_path = os.path.join(d, "pptpd.log")
        with open(log_path, "wb") as out:
            proc = self.spawn(role, ["pptpd", "-c", conf, "-f", "-p",
                                     os.path.join(d, "pptpd.pid")],
                              stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT)
        proc.log_path = log_path
        self.pptpds[role] = proc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError("pptpd in %s exited with %s: %s" % (
                    role, proc.returncode, self.pptpd_output(role)))
            if self.listening_on(role, listen, 1723):
                return proc
            time.sleep(0.05)
        raise LabError("pptpd in %s not listening on %s:1723 after %ss: %s" % (
            role, listen, wait, self.pptpd_output(role)))

    def pptpd_output(self, role):
        try:
            with open(self.pptpds[role].log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, KeyError):
            return ""

    def listening_on(self, role, addr, port):
        out = self.exec(role, ["ss", "-ltnH", "src %s:%d" % (addr, port)],
                        check=False).stdout
        return bool(out.strip())


# ------------------------------------------------------------ the topologies

def inside_addr(n):
    return INSIDE_PREFIX + str(n)


def outside_addr(n):
    return OUTSIDE_PREFIX + str(n)


def _inside(t, hosts, router="router", bridge="br-in"):
    """hosts: [(role, address)]: one bridged inside segment, default routes
    via the router."""
    t.segment("inside", [(router, bridge, [ROUTER_IN + "/24"])] +
              [(role, "eth0", [addr + "/24"]) for role, addr in hosts],
              bridge_at=router, port_prefix="vc")
    for role, _ in hosts:
        t.route(role, "default via %s" % ROUTER_IN)
    t.inside_ifs = [bridge]


def _new(hosts, kw):
    t = Topology(**kw)
    t.host("router", router=True)
    for role in hosts:
        t.host(role)
    return t


def port_forward(inside_clients=2, outside_clients=2, **lab_kw):
    """An inside pptpd ("insrv", 198.18.0.50) behind a port forward of
    TCP/1723 on the router's public address 203.0.113.1 (nat PREROUTING
    DNAT + a FORWARD accept), MASQUERADE for the rest.  Outside on one
    switch: "server" (203.0.113.10: the pptpd the inside clients dial, and
    itself a client of the inside server) and "ext1".."extN"
    (203.0.113.(20+i), clients of the inside server).  Inside: "client1"..
    (198.18.0.(10+i))."""
    ins = [("client%d" % i, inside_addr(10 + i)) for i in range(1, inside_clients + 1)]
    ext = [("ext%d" % i, outside_addr(20 + i)) for i in range(1, outside_clients + 1)]
    t = _new([r for r, _ in ins] + ["insrv", "server"] + [r for r, _ in ext], lab_kw)
    insrv = inside_addr(50)
    _inside(t, ins + [("insrv", insrv)])
    t.segment("up0", [("router", "out0", [ROUTER_OUT + "/24"]),
                      ("server", "eth0", [SERVER + "/24"])] +
              [(role, "eth0", [a + "/24"]) for role, a in ext])
    t.outside_ifs = ["out0"]
    t.iptables("router", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", ROUTER_OUT,
               "-p", "tcp", "--dport", "1723", "-j", "DNAT", "--to-destination", insrv)
    t.iptables("router", "-A", "FORWARD", "-i", "out0", "-o", "br-in", "-d", insrv,
               "-p", "tcp", "--dport", "1723", "-j", "ACCEPT")
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
    t.info = {"public": ROUTER_OUT, "inside_server": insrv, "server": SERVER,
              "inside_clients": [r for r, _ in ins], "outside_clients": [r for r, _ in ext]}
    return t


def snat_pool(clients=4, pool=(ROUTER_OUT, outside_addr(2)), **lab_kw):
    """SNAT of everything leaving out0 to a pool of public addresses (all
    on out0, ``--to-source FIRST-LAST``); clients "client1".. inside, the
    server outside."""
    ins = [("client%d" % i, inside_addr(10 + i)) for i in range(1, clients + 1)]
    t = _new([r for r, _ in ins] + ["server"], lab_kw)
    _inside(t, ins)
    t.segment("up0", [("router", "out0", [a + "/24" for a in pool]),
                      ("server", "eth0", [SERVER + "/24"])])
    t.outside_ifs = ["out0"]
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "SNAT",
               "--to-source", "%s-%s" % (pool[0], pool[-1]))
    t.info = {"pool": list(pool), "server": SERVER, "inside_clients": [r for r, _ in ins]}
    return t


UPLINK2_ROUTER = "192.0.2.1"
UPLINK2_GATEWAY = "192.0.2.10"


def two_uplinks(**lab_kw):
    """Two uplinks, each with its own MASQUERADE: out0 (203.0.113.1, the
    main table's) and out1 (192.0.2.1; table 2, used for client2's traffic
    by ``ip rule from 198.18.0.12 table 2``).  The server (203.0.113.10 on
    eth0) is reachable through both: its eth1 (192.0.2.10) is uplink 2's
    gateway, so client2's packets reach it on eth1 from 192.0.2.1."""
    ins = [("client1", inside_addr(11)), ("client2", inside_addr(12))]
    t = _new(["client1", "client2", "server"], lab_kw)
    _inside(t, ins)
    t.segment("up0", [("router", "out0", [ROUTER_OUT + "/24"]),
                      ("server", "eth0", [SERVER + "/24"])])
    t.segment("up1", [("router", "out1", [UPLINK2_ROUTER + "/24"]),
                      ("server", "eth1", [UPLINK2_GATEWAY + "/24"])])
    t.outside_ifs = ["out0", "out1"]
    t.route("router", "default via %s dev out1 table 2" % UPLINK2_GATEWAY)
    t.route("router", "198.18.0.0/24 dev br-in table 2")
    t.ip_rule("router", "from %s table 2" % inside_addr(12))
    for o in t.outside_ifs:
        t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", o, "-j", "MASQUERADE")
    t.info = {"server": SERVER, "public": {"client1": ROUTER_OUT, "client2": UPLINK2_ROUTER},
              "uplink": {"client1": "out0", "client2": "out1"}}
    return t


STATIC_PUBLIC = outside_addr(5)


def static_nat(**lab_kw):
    """Static 1:1 NAT of client1 (198.18.0.11) to 203.0.113.5, a second
    address of out0: nat PREROUTING -d 203.0.113.5 DNAT to it (every
    protocol), POSTROUTING -s 198.18.0.11 -o out0 SNAT to 203.0.113.5
    before the MASQUERADE that client2 (198.18.0.12) goes through."""
    t = _new(["client1", "client2", "server"], lab_kw)
    _inside(t, [("client1", inside_addr(11)), ("client2", inside_addr(12))])
    t.segment("up0", [("router", "out0", [ROUTER_OUT + "/24", STATIC_PUBLIC + "/24"]),
                      ("server", "eth0", [SERVER + "/24"])])
    t.outside_ifs = ["out0"]
    t.iptables("router", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", STATIC_PUBLIC,
               "-j", "DNAT", "--to-destination", inside_addr(11))
    t.iptables("router", "-A", "FORWARD", "-i", "out0", "-o", "br-in", "-d", inside_addr(11),
               "-j", "ACCEPT")
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-s", inside_addr(11), "-o", "out0",
               "-j", "SNAT", "--to-source", STATIC_PUBLIC)
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
    t.info = {"server": SERVER, "public": {"client1": STATIC_PUBLIC, "client2": ROUTER_OUT}}
    return t


def gateway_pptp(**lab_kw):
    """PPTP on the router itself: the router (203.0.113.1) is a client of
    the outside pptpd ("server", 203.0.113.10) and runs a pptpd of its own
    that "ext1" (203.0.113.21) dials; "client1" (198.18.0.11) is a
    masqueraded client of the server at the same time."""
    t = _new(["client1", "server", "ext1"], lab_kw)
    _inside(t, [("client1", inside_addr(11))])
    t.segment("up0", [("router", "out0", [ROUTER_OUT + "/24"]),
                      ("server", "eth0", [SERVER + "/24"]),
                      ("ext1", "eth0", [outside_addr(21) + "/24"])])
    t.outside_ifs = ["out0"]
    t.iptables("router", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
    t.info = {"server": SERVER, "public": ROUTER_OUT, "ext": outside_addr(21)}
    return t
