#!/usr/bin/python3
"""What the fixup's rules let through and what they queue (run as root).

- PPTP GRE between two inside networks (client 1 on br-in, client 2 moved
  to a second inside bridge br-guest, so the router routes between them
  and its FORWARD chain sees the packets): the user's rules (policy DROP,
  only br-in -> out0 and ESTABLISHED,RELATED) forbid that path, and the
  fixup's accept for untracked PPTP GRE must not open it: 0 of 200 arrive,
  in either direction, as without the fixup (plain) and with the kernel's
  helper. Once the user allows the path, all 200 arrive (the check is not
  vacuous).
- A TCP connection from inside whose source port happens to be 1723, to an
  outside server's port 8080, is not a control connection: it is not
  queued (the agent's control_packets stays), and its echo comes back. A
  connection opened to port 1723 is still queued.

    sudo /usr/bin/python3 tests/integration/test_rules_policy.py [-v]
"""

import json
import os
import sys
import time
import unittest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

from lab import netns  # noqa: E402
from lab.agent import agent_hooks  # noqa: E402
from lab.netns import Lab  # noqa: E402
from lab.pcap import ipv4_packets  # noqa: E402
from lab.runner import run_tests, wait_until  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=netns.TESTS_DIR)
GUEST_ROUTER = "198.18.1.1"
GUEST_CLIENT2 = "198.18.1.12"
PACKETS = 200
# -s 256 (tcpdump takes options after the filter's place too): with the full
# default snapshot length libpcap's capture ring holds about 8 packets, and
# the sender's bursts of 50 lose some of theirs at the capture.
CAPTURE_GRE = ["-s", "256", "ip", "proto", "47"]


def log(*a):
    print("    [rules-policy]", *a, flush=True)


def lab_for(mode, clients=2):
    hooks = agent_hooks() if mode == "agent" else {}
    return Lab(clients=clients, mode=mode, **hooks)


def move_client2_to_guest_bridge(lab):
    """client 2 leaves br-in for a bridge of its own, br-guest (198.18.1.1/24
    in the router): client 1 <-> client 2 is routed, through FORWARD."""
    lab.router_exec(["ip", "-batch", "-"], input="\n".join([
        "link add br-guest type bridge",
        "addr add %s/24 dev br-guest" % GUEST_ROUTER,
        "link set vc2 nomaster",
        "link set vc2 master br-guest",
        "link set br-guest up"]) + "\n")
    lab.router_exec(["sysctl", "-q", "-w", "net.ipv4.conf.br-guest.rp_filter=0"])
    lab.client_exec(2, ["ip", "-batch", "-"], input="\n".join([
        "addr flush dev eth0",
        "addr add %s/24 dev eth0" % GUEST_CLIENT2,
        "route add default via %s" % GUEST_ROUTER]) + "\n")
    # Neighbours known from the start: a burst to an unresolved one loses
    # packets while ARP runs.
    for i, gateway, bridge, client in ((1, netns.ROUTER_IN, "br-in", netns.client_addr(1)),
                                       (2, GUEST_ROUTER, "br-guest", GUEST_CLIENT2)):
        lab.router_exec(["ip", "neigh", "replace", client, "lladdr", mac(lab, "client%d" % i, "eth0"),
                         "dev", bridge, "nud", "permanent"])
        lab.client_exec(i, ["ip", "neigh", "replace", gateway, "lladdr", mac(lab, "router", bridge),
                            "dev", "eth0", "nud", "permanent"])


def mac(lab, role, dev):
    return json.loads(lab.exec(role, ["ip", "-j", "link", "show", dev]).stdout)[0]["address"]


def send_pptp_gre(lab, role, src, dst, count):
    """``count`` valid enhanced GRE packets (version 1, protocol 0x880B)."""
    out = lab.exec(role, [netns.PYTHON, "-m", "lab.junk", "gre", "--src", src, "--dst", dst,
                          "--spec", "call_id:%d" % count, "--call-id", "4242"],
                   env=ENV, timeout=60).stdout
    return json.loads(out)["sent"]["call_id"]


def gre_arrived(pcap, src, dst):
    return sum(1 for p in ipv4_packets(pcap)
               if p["proto"] == 47 and p["src"] == src and p["dst"] == dst)


def gre_between_inside_networks(lab):
    """PPTP GRE sent each way between client 1 (br-in) and client 2
    (br-guest); {direction: packets that arrived}."""
    c1 = netns.client_addr(1)
    cap1, pcap1 = lab.capture("client1", bpf=CAPTURE_GRE)
    cap2, pcap2 = lab.capture("client2", bpf=CAPTURE_GRE)
    sent = (send_pptp_gre(lab, "client1", c1, GUEST_CLIENT2, PACKETS),
            send_pptp_gre(lab, "client2", GUEST_CLIENT2, c1, PACKETS))
    time.sleep(0.5)  # anything late
    lab.stop_process(cap1)
    lab.stop_process(cap2)
    if sent != (PACKETS, PACKETS):
        raise netns.LabError("sent %s, not %d each way" % (sent, PACKETS))
    return {"inside -> guest": gre_arrived(pcap2, c1, GUEST_CLIENT2),
            "guest -> inside": gre_arrived(pcap1, GUEST_CLIENT2, c1)}


class InsideGre(unittest.TestCase):

    def test_no_path_between_inside_networks_the_user_forbids(self):
        for mode in ("plain", "kernel-helper", "agent"):
            with self.subTest(mode=mode), lab_for(mode) as lab:
                move_client2_to_guest_bridge(lab)
                forbidden = gre_between_inside_networks(lab)
                log(mode, "with the user's rules (only br-in -> out0):", forbidden)
                self.assertEqual(forbidden, {"inside -> guest": 0, "guest -> inside": 0})
                # The user opens the path: then every packet arrives, so the
                # zeros above are the firewall's doing, not the lab's.
                for a, b in (("br-in", "br-guest"), ("br-guest", "br-in")):
                    lab.router_exec(["iptables", "-w", "-A", "FORWARD", "-i", a, "-o", b, "-j", "ACCEPT"])
                allowed = gre_between_inside_networks(lab)
                log(mode, "with the path allowed:", allowed)
                self.assertEqual(allowed, {"inside -> guest": PACKETS, "guest -> inside": PACKETS})


ECHO_SERVER = r"""
import socket, sys, threading
def echo(c):
    with c:
        while True:
            data = c.recv(4096)
            if not data:
                return
            c.sendall(data)
def serve(s):
    while True:
        threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
socks = []
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port))
    s.listen()
    socks.append(s)
for s in socks[1:]:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
serve(socks[0])
"""

ECHO_CLIENT = r"""
import json, socket, sys
server, port, bind_port, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if bind_port:
    s.bind(("", bind_port))
s.settimeout(3)
got = b""
try:
    s.connect((server, port))
    s.sendall(text)
    while len(got) < len(text):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except OSError as e:
    print(json.dumps({"local_port": s.getsockname()[1], "echo": got.decode(), "error": str(e)}))
    sys.exit(0)
print(json.dumps({"local_port": s.getsockname()[1], "echo": got.decode(), "error": None}))
"""


class EphemeralFixupPort(unittest.TestCase):

    def tcp_echo(self, lab, port, bind_port, text):
        out = lab.client_exec(1, [netns.PYTHON, "-c", ECHO_CLIENT, netns.SERVER_ADDR, str(port),
                                  str(bind_port), text], timeout=20).stdout
        return json.loads(out)

    def control_packets(self, lab):
        return lab.agent.stats()["counters"]["control_packets"]

    def test_source_port_1723_is_not_a_control_connection(self):
        with lab_for("agent", clients=1) as lab:
            lab.spawn("server", [netns.PYTHON, "-c", ECHO_SERVER, netns.SERVER_ADDR, "8080", "1723"])
            self.assertTrue(wait_until(lambda: lab.listening("server", 8080) and
                                       lab.listening("server", 1723), 5))
            before = self.control_packets(lab)
            text = "not PPTP, only a web request from source port 1723\n"
            r = self.tcp_echo(lab, 8080, 1723, text)
            after = self.control_packets(lab)
            log("client port 1723 -> server port 8080:", r, "control_packets", before, "->", after)
            self.assertEqual(r["local_port"], 1723)
            self.assertEqual((r["echo"], r["error"]), (text, None))
            self.assertEqual(after, before, "the connection to port 8080 was queued as PPTP control")
            # A connection opened to port 1723 still is (its SYN counts).
            r = self.tcp_echo(lab, 1723, 0, "")
            queued = self.control_packets(lab)
            log("client ephemeral port -> server port 1723:", r, "control_packets", after, "->", queued)
            self.assertIsNone(r["error"])
            self.assertGreater(queued, after)


if __name__ == "__main__":
    run_tests()
