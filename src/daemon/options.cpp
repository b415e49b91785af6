#include "daemon/options.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "pptp/inet.hpp"

namespace po = boost::program_options;

namespace daemon_options {
namespace {

constexpr const char* kSynopsis = R"(pptp-fixupd - stateful PPTP fixup for NAT/PAT gateways, on an NFQUEUE

SYNOPSIS
  pptp-fixupd --queue N --outside IF [--public-address A] [--fixup-port P]...
              [--control-socket PATH] [--config FILE] [options]

DESCRIPTION
  Lets any number of PPTP clients (PNS) behind one masqueraded address reach
  PPTP servers (PAC) outside, like Cisco PIX "fixup protocol pptp 1723". The
  kernel's conntrack NAT keeps translating the TCP control connection; this
  agent follows every PPTP control message on the fixup ports, gives each
  inside Call ID a public Call ID unique per (public address, outside peer),
  rewrites Call ID fields both ways, and translates enhanced GRE itself:
  outbound source address -> public address, inbound destination address and
  Call ID -> the inside peer's. GRE matching no live call is dropped.
  No kernel PPTP helper is needed. Packets reach the agent through the rules
  that pptp-fixup-rules(8) installs; the agent runs in the foreground and logs
  to stderr.

OPTIONS)";

constexpr const char* kEpilog = R"(
CONFIG FILE
  --config FILE reads "key = value" lines with the long option names, e.g.
      queue = 0
      outside = eth1
      fixup-port = 1723
      call-timeout = 18000
  Options on the command line override the file.

PRIVILEGES
  After the queue and the control socket are open the daemon keeps only
  CAP_NET_ADMIN (needed for queue verdicts and for pptp-fixup-rules), also in
  the bounding set, and with --user switches to that user.

SYSTEMD
  With NOTIFY_SOCKET set (Type=notify) it reports READY=1 once the queue is
  bound, STATUS= with live calls and connections every few seconds,
  STOPPING=1 on shutdown, and WATCHDOG=1 when WatchdogSec= is set.

FAILURE MODE
  The queue is fail-closed: if the agent is not running or its queue is full,
  the kernel drops queued packets (PPTP stalls) instead of forwarding GRE with
  inside addresses or unrewritten Call IDs. Other traffic is not queued.

EXIT STATUS
  0 on a clean shutdown (SIGINT/SIGTERM), 1 on a start-up error (bad option,
  missing interface, queue already bound), with one line on stderr saying why.

SIGNALS
  SIGTERM, SIGINT  clean shutdown: calls on the queue path are logged as
                   torn down; offloaded calls stay in the kernel and flow on,
                   and the next start adopts them (see GRE OFFLOAD).
  SIGHUP           reload the config file: fixup ports (rules follow),
                   limits, timeouts, log level and violation policy apply at
                   once and live calls stay. --queue, --outside,
                   --public-address, --control-socket, the offload options
                   and --ha-sync need a restart.
  SIGUSR1          log every live call and control connection.

FIXUP PORTS AT RUN TIME
  pptp-fixupctl fixup enable|disable PORT changes the ports without a restart
  and runs pptp-fixup-rules (see --rules-command) so the queue rules follow.
  Disabling a port tears down its control connections and their calls at
  once (logged with reason fixup-disabled): their messages would no longer
  be inspected, so their Call IDs could not be kept consistent.

CONTROL MESSAGES THAT BREAK RFC 2637
  A broken framing, a refused call, and (--on-violation reset, the default) a
  message out of state, from the wrong peer or of a version other than 1.0
  end the control connection for both peers: an RST to each at the sequence
  number it expects, no byte of it passes any more; counted per reason and
  logged once per connection per minute. A Call ID that names no call of the
  connection goes on set to 0. A segment with a bad TCP checksum is dropped;
  an RST counts only at the next expected sequence number, a FIN only in
  order, a SYN on a connection with data changes nothing; a resend whose
  bytes differ from the first copy is dropped.
  A segment that ends inside a Call ID field, or that arrives after a gap, is
  held (at most 8 segments / 16 KiB per direction of a connection, 64 per
  host, 512 in all, for 2 s) until the rest arrives, then sent on rewritten;
  after 200 ms one held for an incomplete field goes on cut before it, so a
  sender that waits for an ACK (Nagle) sends the rest.

GRE OFFLOAD
  With --gre-offload nft (or auto, where the kernel can), a call whose Call
  IDs are both known and whose reply said connected gets its translation
  installed as elements of nf_tables maps in the table "ip pptp_fixup" (the
  agent's own, created at start over netlink): its GRE is rewritten in the
  kernel and marked (--offload-mark) so the queue rules skip it. A packet of
  no element goes to the queue as before, so GRE of no call is still
  dropped. Ending a call removes its elements at once. The kernel counts
  each call's packets; the agent reads the counters every
  --offload-poll-interval seconds for the audit and the idle timeouts. A
  netlink error or a full map leaves that call on the queue (counted as
  calls_offload_failed).
  The table outlives the agent: a restart finds the calls in it and adopts
  them (their control connections at their next message), so they keep
  flowing and stay audited. "pptp-fixup-rules remove" deletes the table with
  the rules (a stop for good). --gre-offload off at start adopts what an
  earlier run offloaded and deletes the table: those calls go on through the
  queue.

HIGH AVAILABILITY
  An active/standby pair: keepalived (VRRP) moves the public address,
  conntrackd (FTFW) syncs the kernel's conntrack table, so the TCP control
  connections and their NAT survive. With --ha-sync connlabel each control
  connection's calls (their inside, public and outside Call IDs; two per
  connection) ride in a conntrack label (connlabel, 128 bits) on its own
  entry, which conntrackd syncs with it; no protocol of the agent's own.
  The label is rewritten as calls are built and torn down, and left as it
  is at a shutdown. Once conntrackd has committed the entries into the
  standby's kernel (keepalived's notify script: conntrackd -c), "pptp-fixupctl
  ha adopt" (also run at start) takes their calls in: they go on with the
  same Call IDs, their control connections are picked up at their next
  message, their counters start again at 0. The kernel gives an entry label
  space only if it was created while a connlabel rule existed:
  pptp-fixup-rules install --conntrack-labels (on both gateways, before
  clients connect; --manage-rules passes it). Examples: the files under
  /usr/share/doc/pptp-fixup/examples/ha.

SEE ALSO
  pptp-fixup-rules(8), RFC 2637.
)";

std::uint16_t parse_port(const std::string& text, const char* what) {
    try {
        std::size_t used = 0;
        const unsigned long value = std::stoul(text, &used);
        if (used == text.size() && value >= 1 && value <= 65535) {
            return static_cast<std::uint16_t>(value);
        }
    } catch (const std::exception&) {
    }
    throw UsageError(std::string("invalid ") + what + " '" + text + "': expected 1-65535");
}

void parse_call_id_range(const std::string& text, nat::TableConfig& table) {
    const auto dash = text.find('-');
    if (dash == std::string::npos) {
        throw UsageError("invalid call-id-range '" + text + "': expected MIN-MAX, e.g. 1-65535");
    }
    const std::uint16_t lo = parse_port(text.substr(0, dash), "call-id-range minimum");
    const std::uint16_t hi = parse_port(text.substr(dash + 1), "call-id-range maximum");
    if (lo > hi) {
        throw UsageError("invalid call-id-range '" + text + "': minimum above maximum");
    }
    table.call_id_min = lo;
    table.call_id_max = hi;
}

}  // namespace

ParseResult parse(int argc, const char* const* argv) {
    Options opt;
    unsigned int queue = 0;
    std::string public_address;
    std::vector<std::string> ports;
    std::string call_id_range = "1-65535";
    std::string call_id_allocation = "preserve";
    std::string log_level = "info";
    unsigned int call_timeout = 18000;
    unsigned int unreplied_timeout = 600;
    unsigned int setup_timeout = 120;
    unsigned int control_timeout = 3600;
    unsigned int control_setup_timeout = 30;
    std::size_t max_calls_per_host = opt.table.max_calls_per_host;
    std::size_t max_held = opt.handler.holds.segments_total;
    std::size_t max_held_per_host = opt.handler.holds.segments_per_host;
    std::size_t max_calls = opt.table.max_calls;
    std::size_t max_calls_per_connection = opt.table.max_calls_per_connection;
    std::size_t max_connections = opt.table.max_connections;
    std::size_t max_connections_per_host = opt.table.max_connections_per_host;
    std::string on_violation = "reset";
    std::vector<std::string> outsides;
    std::string local_gre = "auto";
    std::string gre_offload = "auto";
    std::string ha_sync = "off";
    std::string offload_mark = "0x01000000";
    unsigned int offload_poll = 10;
    std::string user;

    // clang-format off
    po::options_description general("General");
    general.add_options()
        ("help,h", "print this help and exit")
        ("version", "print the version and exit")
        ("queue,q", po::value<unsigned int>(&queue)->value_name("N"),
         "NFQUEUE number the fixup rules send packets to (0-65535); required")
        ("outside,o", po::value<std::vector<std::string>>(&outsides)->value_name("IF"),
         "outside (public) interface, as for MASQUERADE; repeat (or give a comma list) for several uplinks; "
         "required")
        ("public-address,a", po::value<std::string>(&public_address)->value_name("ADDR"),
         "public IPv4 address for every call (an override); default: each control connection's own, as "
         "the kernel's NAT mapped it (its conntrack entry: a MASQUERADE or SNAT source, a SNAT pool "
         "address, the address of a port forward or a 1:1 NAT)")
        ("local-gre", po::value<std::string>(&local_gre)->value_name("POLICY")->default_value("auto"),
         "GRE from outside that belongs to no call and is addressed to the gateway itself (its own PPTP "
         "client or server): pass (untranslated, to the gateway's own input rules), drop, or auto (pass "
         "while a process on the gateway holds a raw GRE socket, as pptp and pptpd do; checked every "
         "second in /proc/net/raw; kernel-mode PPTP holds none: use pass)")
        ("fixup-port,p", po::value<std::vector<std::string>>(&ports)->value_name("PORT")->composing(),
         "TCP port of PPTP control connections to inspect; repeat for several (default 1723)")
        ("control-socket,s",
         po::value<std::string>(&opt.control_socket)->value_name("PATH")->default_value(kDefaultControlSocket),
         "Unix socket of the control API (mode 0600)")
        ("config,c", po::value<std::string>(&opt.config_file)->value_name("FILE"),
         "read options from FILE (same keys as the long options); reread on SIGHUP")
        ("manage-rules", po::bool_switch(&opt.manage_rules),
         "install the netfilter rules at start (pptp-fixup-rules install) and remove them at exit; without it "
         "the rules are yours to install, and only fixup enable/disable and reloads update them")
        ("metrics-file", po::value<std::string>(&opt.metrics_file)->value_name("PATH"),
         "write the metrics (Prometheus text format, as \"pptp-fixupctl metrics\") to PATH every "
         "--metrics-interval seconds, atomically (a temporary file renamed): for node_exporter's textfile "
         "collector, as a daemon with no IP socket can offer them")
        ("metrics-interval", po::value<std::uint32_t>(&opt.metrics_seconds)->value_name("SECONDS")
                                 ->default_value(15),
         "seconds between rewrites of --metrics-file")
        ("remove-offload", po::bool_switch(&opt.remove_offload),
         "delete the GRE offload table (ip pptp_fixup) and exit: its calls stop flowing. pptp-fixup-rules "
         "remove runs this; nothing else is needed with it")
        ("rules-command", po::value<std::string>(&opt.rules_command)->value_name("PATH")
                              ->default_value("pptp-fixup-rules"),
         "the rule installer run to keep the queue rules in line with the fixup ports; a bare name is "
         "looked for next to pptp-fixupd's own executable first, then in PATH")
        ("user,u", po::value<std::string>(&user)->value_name("NAME"),
         "once the queue and the control socket are open, run as this user (and its group), keeping only "
         "CAP_NET_ADMIN")
        ("keep-capabilities", po::bool_switch(&opt.keep_capabilities),
         "do not drop capabilities after start-up (by default every capability but CAP_NET_ADMIN goes)")
        ("log-level", po::value<std::string>(&log_level)->value_name("LEVEL")->default_value("info"),
         "error, warning, notice, info or debug");

    po::options_description limits("Timeouts, limits and policy");
    limits.add_options()
        ("call-timeout", po::value<unsigned int>(&call_timeout)->value_name("SECONDS")->default_value(18000),
         "seconds an established call whose GRE went both ways may be idle before it is removed; the kernel "
         "helper uses 5 hours (PPTP_GRE_STREAM_TIMEOUT)")
        ("call-unreplied-timeout",
         po::value<unsigned int>(&unreplied_timeout)->value_name("SECONDS")->default_value(600),
         "seconds an established call that has not seen GRE both ways may be idle; the kernel helper uses 600")
        ("setup-timeout", po::value<unsigned int>(&setup_timeout)->value_name("SECONDS")->default_value(120),
         "seconds a call may wait for its reply")
        ("control-timeout", po::value<unsigned int>(&control_timeout)->value_name("SECONDS")->default_value(3600),
         "seconds a control connection may be idle (PPTP echoes every 60 s)")
        ("control-setup-timeout",
         po::value<unsigned int>(&control_setup_timeout)->value_name("SECONDS")->default_value(30),
         "seconds after it opened by which a control connection must have completed its TCP handshake and "
         "Start-Control-Connection exchange; else it is forgotten")
        ("max-calls", po::value<std::size_t>(&max_calls)->value_name("N")->default_value(max_calls),
         "live calls in total; a call beyond is refused")
        ("max-calls-per-connection",
         po::value<std::size_t>(&max_calls_per_connection)->value_name("N")->default_value(max_calls_per_connection),
         "live calls on one control connection; a call beyond is refused")
        ("max-calls-per-host",
         po::value<std::size_t>(&max_calls_per_host)->value_name("N")->default_value(max_calls_per_host),
         "live calls of the control connections one host opened; a call beyond is refused")
        ("max-connections", po::value<std::size_t>(&max_connections)->value_name("N")->default_value(max_connections),
         "control connections tracked; more are refused (SYN dropped)")
        ("max-connections-per-host",
         po::value<std::size_t>(&max_connections_per_host)->value_name("N")->default_value(max_connections_per_host),
         "control connections one host opened (an inside client, or an outside client of a server behind a "
         "port forward); more are refused (SYN dropped)")
        ("max-held-segments", po::value<std::size_t>(&max_held)->value_name("N")->default_value(max_held),
         "control segments held back in all (they stay in the kernel queue; at most a quarter of --queue-maxlen)")
        ("max-held-segments-per-host",
         po::value<std::size_t>(&max_held_per_host)->value_name("N")->default_value(max_held_per_host),
         "control segments held back of one sending host")
        ("call-id-range", po::value<std::string>(&call_id_range)->value_name("MIN-MAX")->default_value("1-65535"),
         "public Call IDs handed out; when all are taken for an outside peer, a new call is refused: its "
         "request is turned into a TCP reset, so the client fails at once")
        ("call-id-allocation",
         po::value<std::string>(&call_id_allocation)->value_name("MODE")->default_value("preserve"),
         "how a call's public Call ID is chosen: preserve (the inside peer's own Call ID when it is free at "
         "that outside peer, else the next free one) or random (a random free one for every call, as "
         "MASQUERADE --random does for ports, so the outside cannot predict or count inside calls)")
        ("on-violation", po::value<std::string>(&on_violation)->value_name("POLICY")->default_value("reset"),
         "a well-framed control message out of state, from the wrong peer or of another version: reset (end "
         "the control connection with an RST to each peer) or accept (pass it on, its Call IDs translated or "
         "neutralised, its state ignored); a broken framing or a refused call always resets")
        ("gre-offload", po::value<std::string>(&gre_offload)->value_name("MODE")->default_value("auto"),
         "where established calls' GRE is translated: nft (in the kernel, by nf_tables maps in the agent's "
         "own table \"ip pptp_fixup\"; the agent only sees a call's first packets and its control "
         "messages), off (every GRE packet through the queue), or auto (nft where the kernel can, else off "
         "with one log line). Offloaded calls keep flowing while the agent restarts")
        ("offload-mark", po::value<std::string>(&offload_mark)->value_name("BIT")->default_value("0x01000000"),
         "packet mark bit (one bit) by which the queue rules skip offloaded GRE; the same as "
         "pptp-fixup-rules --offload-mark. Set by the offload rewrite, cleared again in postrouting: pick a bit your own rules do not use")
        ("offload-poll-interval",
         po::value<unsigned int>(&offload_poll)->value_name("SECONDS")->default_value(10),
         "seconds between readings of the offloaded calls' kernel counters (audit counters and idle timeouts)")
        ("ha-sync", po::value<std::string>(&ha_sync)->value_name("MODE")->default_value("off"),
         "failover to a standby gateway: connlabel (write each control connection's calls into a label on "
         "its conntrack entry, which conntrackd syncs, and adopt calls from such labels at start and on "
         "\"pptp-fixupctl ha adopt\"; the rules need --conntrack-labels, see HIGH AVAILABILITY) or off")
        ("queue-maxlen", po::value<std::uint32_t>(&opt.queue_max_length)->value_name("N")->default_value(4096),
         "packets the kernel may hold in the queue before it drops")
        ("burst", po::value<std::size_t>(&opt.burst)->value_name("N")->default_value(64),
         "packets handled per verdict batch");
    // clang-format on

    po::options_description all;
    all.add(general).add(limits);

    po::variables_map vm;
    try {
        po::store(po::parse_command_line(argc, argv, all), vm);
        if (vm.count("help") != 0U) {
            std::ostringstream text;
            text << kSynopsis << '\n' << all << kEpilog;
            return ParseResult{std::nullopt, text.str()};
        }
        if (vm.count("version") != 0U) {
            return ParseResult{std::nullopt, std::string("pptp-fixupd ") + PPTP_FIXUP_VERSION + "\n"};
        }
        if (vm.count("config") != 0U) {
            const auto path = vm["config"].as<std::string>();
            std::ifstream file(path);
            if (!file) {
                throw UsageError("cannot read config file " + path);
            }
            try {
                po::store(po::parse_config_file(file, all), vm);
            } catch (const po::error& e) {
                throw UsageError("config file " + path + ": " + e.what());
            }
        }
        po::notify(vm);
    } catch (const po::error& e) {
        throw UsageError(e.what());
    }

    if (opt.remove_offload) {
        return ParseResult{opt, {}};
    }
    if (vm.count("queue") == 0U) {
        throw UsageError("missing --queue N (the NFQUEUE number of the fixup rules)");
    }
    if (queue > 65535) {
        throw UsageError("invalid --queue " + std::to_string(queue) + ": expected 0-65535");
    }
    opt.queue = static_cast<std::uint16_t>(queue);
    for (const auto& o : outsides) {
        std::stringstream list(o);
        std::string item;
        while (std::getline(list, item, ',')) {
            if (item.empty() || item.size() >= 16) {
                throw UsageError("invalid --outside '" + o + "': expected interface names");
            }
            if (std::find(opt.outside_interfaces.begin(), opt.outside_interfaces.end(), item) ==
                opt.outside_interfaces.end()) {
                opt.outside_interfaces.push_back(item);
            }
        }
    }
    if (opt.outside_interfaces.empty()) {
        throw UsageError("missing --outside IF (the public interface)");
    }
    if (local_gre == "auto") {
        opt.handler.local_gre = nat::HandlerConfig::LocalGre::Auto;
    } else if (local_gre == "pass") {
        opt.handler.local_gre = nat::HandlerConfig::LocalGre::Pass;
    } else if (local_gre == "drop") {
        opt.handler.local_gre = nat::HandlerConfig::LocalGre::Drop;
    } else {
        throw UsageError("invalid --local-gre '" + local_gre + "': expected auto, pass or drop");
    }
    if (!public_address.empty()) {
        opt.public_address = pptp::parse_ipv4_address(public_address);
        if (!opt.public_address) {
            throw UsageError("invalid --public-address '" + public_address + "': expected an IPv4 address");
        }
    }
    for (const auto& p : ports) {
        // "1723,1724" is accepted too, as in pptp-fixup-rules --ports.
        std::stringstream list(p);
        std::string item;
        while (std::getline(list, item, ',')) {
            opt.fixup_ports.push_back(parse_port(item, "fixup-port"));
        }
    }
    if (opt.fixup_ports.empty()) {
        opt.fixup_ports.push_back(kDefaultFixupPort);
    }
    if (!user.empty()) {
        opt.user = user;
    }
    if (opt.user && opt.keep_capabilities) {
        throw UsageError("--user and --keep-capabilities do not go together");
    }
    if (!logging::parse_level(log_level, opt.log_level)) {
        throw UsageError("invalid --log-level '" + log_level + "': expected error, warning, notice, info or debug");
    }
    parse_call_id_range(call_id_range, opt.table);
    if (call_id_allocation == "preserve") {
        opt.table.call_id_allocation = nat::CallIdAllocation::Preserve;
    } else if (call_id_allocation == "random") {
        opt.table.call_id_allocation = nat::CallIdAllocation::Random;
    } else {
        throw UsageError("invalid --call-id-allocation '" + call_id_allocation + "': expected preserve or random");
    }
    if (call_timeout == 0 || unreplied_timeout == 0 || setup_timeout == 0 || control_timeout == 0 ||
        control_setup_timeout == 0) {
        throw UsageError("timeouts must be at least 1 second");
    }
    opt.table.call_idle_timeout = nat::Seconds(call_timeout);
    opt.table.call_unreplied_timeout = nat::Seconds(unreplied_timeout);
    opt.table.control_setup_timeout = nat::Seconds(control_setup_timeout);
    opt.table.max_calls_per_host = max_calls_per_host;
    // Held segments stay in the kernel queue: they must never fill it.
    opt.handler.holds.segments_total = std::min<std::size_t>(max_held, opt.queue_max_length / 4);
    opt.handler.holds.segments_per_host = max_held_per_host;
    opt.table.call_setup_timeout = nat::Seconds(setup_timeout);
    opt.table.control_idle_timeout = nat::Seconds(control_timeout);
    opt.table.max_calls = max_calls;
    opt.table.max_calls_per_connection = max_calls_per_connection;
    opt.table.max_connections = max_connections;
    opt.table.max_connections_per_host = max_connections_per_host;
    // "drop" was the old default; dropping a segment made its peers resend it
    // for ever, so it now means reset.
    if (on_violation == "reset" || on_violation == "drop") {
        opt.handler.on_violation = nat::ViolationPolicy::Reset;
    } else if (on_violation == "accept") {
        opt.handler.on_violation = nat::ViolationPolicy::Accept;
    } else {
        throw UsageError("invalid --on-violation '" + on_violation + "': expected reset or accept");
    }
    if (gre_offload == "auto") {
        opt.gre_offload = Options::GreOffload::Auto;
    } else if (gre_offload == "nft") {
        opt.gre_offload = Options::GreOffload::Nft;
    } else if (gre_offload == "off") {
        opt.gre_offload = Options::GreOffload::Off;
    } else {
        throw UsageError("invalid --gre-offload '" + gre_offload + "': expected auto, nft or off");
    }
    if (ha_sync == "connlabel") {
        opt.ha_sync = Options::HaSync::Connlabel;
    } else if (ha_sync == "off") {
        opt.ha_sync = Options::HaSync::Off;
    } else {
        throw UsageError("invalid --ha-sync '" + ha_sync + "': expected connlabel or off");
    }
    {
        char* end = nullptr;
        errno = 0;
        const unsigned long mark = std::strtoul(offload_mark.c_str(), &end, 0);
        if (offload_mark.empty() || *end != '\0' || errno != 0 || mark == 0 || mark > 0xFFFFFFFFUL ||
            (mark & (mark - 1)) != 0) {
            throw UsageError("invalid --offload-mark '" + offload_mark + "': expected one bit, e.g. 0x01000000");
        }
        opt.offload_mark = static_cast<std::uint32_t>(mark);
    }
    if (offload_poll == 0) {
        throw UsageError("invalid --offload-poll-interval: expected at least 1 second");
    }
    opt.offload_poll_seconds = offload_poll;
    if (opt.metrics_seconds == 0) {
        throw UsageError("invalid --metrics-interval: expected at least 1 second");
    }
    if (opt.burst == 0 || opt.burst > 1024) {
        throw UsageError("invalid --burst: expected 1-1024");
    }
    return ParseResult{opt, {}};
}

}  // namespace daemon_options
