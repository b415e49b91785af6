#include "daemon/agent.hpp"

#include <poll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "daemon/privileges.hpp"
#include "nfq/link.hpp"

#include <systemd/sd-daemon.h>
#include "pptp/inet.hpp"

namespace agent {
namespace {

#ifdef PPTP_FIXUP_SANITIZER_SELFTEST
// NOLINTBEGIN(clang-analyzer-unix.Malloc): the leak is the point
void leak_on_purpose() {
    void* leaked = std::malloc(4242);
    asm volatile("" : : "r"(leaked) : "memory");  // kept, then forgotten
}
// NOLINTEND(clang-analyzer-unix.Malloc)
#endif

std::string describe_call(const nat::Call& call) {
    std::ostringstream s;
    s << "PPTP call " << call.id << " inside " << pptp::format_ipv4(call.inside_address) << " call-id "
      << call.inside_call_id << " public " << pptp::format_ipv4(call.public_address) << " call-id "
      << call.public_call_id << " outside " << pptp::format_ipv4(call.outside_address) << " call-id "
      << call.outside_call_id;
    return s.str();
}

std::string format_duration(std::chrono::steady_clock::duration d) {
    const auto total = std::chrono::duration_cast<std::chrono::seconds>(d).count();
    std::array<char, 32> text{};
    (void)std::snprintf(text.data(), text.size(), "%lld:%02lld:%02lld", static_cast<long long>(total / 3600),
                        static_cast<long long>((total / 60) % 60), static_cast<long long>(total % 60));
    return text.data();
}

std::string hex_mark(std::uint32_t mark) {
    std::array<char, 16> text{};
    (void)std::snprintf(text.data(), text.size(), "0x%08x", mark);
    return text.data();
}

}  // namespace

void EventLog::publish(nlohmann::json event) const {
    if (publish_) {
        std::array<char, 32> now{};
        const std::time_t t = std::time(nullptr);
        std::tm utc{};
        gmtime_r(&t, &utc);
        (void)std::strftime(now.data(), now.size(), "%Y-%m-%dT%H:%M:%SZ", &utc);
        event["time"] = now.data();
        publish_(std::move(event));
    }
}

void EventLog::call_built(const nat::Call& call) {
    logging::write(logging::Level::Info, "302017", "Built " + describe_call(call));
    publish({{"event", "call-built"}, {"session", control::session_json(call, std::chrono::steady_clock::now())}});
    if (next_ != nullptr) {
        next_->call_built(call);
    }
}

void EventLog::call_torn_down(const nat::Call& call, nat::TeardownReason reason) {
    if (next_ != nullptr) {
        next_->call_torn_down(call, reason);
    }
    std::ostringstream s;
    if (reason == nat::TeardownReason::Shutdown && call.offloaded) {
        s << "Left in the kernel " << describe_call(call) << " packets in " << call.packets_in << " out "
          << call.packets_out << ": its GRE flows on, the next start adopts it";
        logging::write(logging::Level::Info, "302019", s.str());
        publish({{"event", "call-left-offloaded"},
                 {"session", control::session_json(call, std::chrono::steady_clock::now())}});
        return;
    }
    s << "Teardown " << describe_call(call) << " duration "
      << format_duration(std::chrono::steady_clock::now() - call.created) << " packets in " << call.packets_in
      << " out " << call.packets_out << " bytes in " << call.bytes_in << " out " << call.bytes_out << " reason "
      << nat::teardown_reason_name(reason);
    logging::write(logging::Level::Info, "302018", s.str());
    publish({{"event", "call-torn-down"},
             {"reason", nat::teardown_reason_name(reason)},
             {"session", control::session_json(call, std::chrono::steady_clock::now())}});
}

void EventLog::packet_dropped(nat::DropReason reason, std::uint32_t source, std::uint32_t destination) {
    std::uint64_t suppressed = 0;
    if (!drop_limiter_.allow(static_cast<std::uint64_t>(reason), std::chrono::steady_clock::now(), suppressed)) {
        return;
    }
    std::ostringstream s;
    s << "Dropped packet from " << pptp::format_ipv4(source) << " to " << pptp::format_ipv4(destination) << ": "
      << nat::drop_reason_name(reason);
    if (suppressed > 0) {
        s << " (" << suppressed << " more of this kind since the last report)";
    }
    logging::write(logging::Level::Warning, "400001", s.str());
    // As the log: one event per reason per 10 s, with how many more there were.
    publish({{"event", "drop"},
             {"reason", nat::drop_reason_name(reason)},
             {"source", pptp::format_ipv4(source)},
             {"destination", pptp::format_ipv4(destination)},
             {"more_since_last", suppressed}});
}

void EventLog::control_violation(const nat::ControlConnection& conn, nat::DropReason reason, std::string_view message,
                                 bool reset) {
    std::uint64_t suppressed = 0;
    if (!violation_limiter_.allow(conn.id, std::chrono::steady_clock::now(), suppressed)) {
        return;
    }
    std::ostringstream s;
    s << "PPTP control connection " << pptp::format_ipv4(conn.key.inside_address) << ':' << conn.key.inside_port
      << " - " << pptp::format_ipv4(conn.key.outside_address) << ':' << conn.key.outside_port << ": "
      << nat::drop_reason_name(reason) << " (" << message << "), message "
      << (reset ? "control connection reset (an RST to each peer)"
          : reason == nat::DropReason::control_unknown_call_id
              ? "Call ID set to 0 and message passed on"
              : "passed on, its Call IDs translated, its state ignored");
    if (suppressed > 0) {
        s << "; " << suppressed << " more on this connection since the last report";
    }
    logging::write(logging::Level::Warning, "400002", s.str());
    publish({{"event", "violation"},
             {"reason", nat::drop_reason_name(reason)},
             {"inside_address", pptp::format_ipv4(conn.key.inside_address)},
             {"inside_port", conn.key.inside_port},
             {"outside_address", pptp::format_ipv4(conn.key.outside_address)},
             {"outside_port", conn.key.outside_port},
             {"reset", reset}});
}

void EventLog::call_refused(const nat::ControlConnection& conn, std::uint16_t call_id, nat::DropReason reason) {
    std::ostringstream s;
    s << "Refused PPTP call of " << pptp::format_ipv4(conn.key.inside_address) << " call-id " << call_id << " to "
      << pptp::format_ipv4(conn.key.outside_address) << ": " << nat::drop_reason_name(reason)
      << "; control connection reset";
    logging::write(logging::Level::Warning, "400003", s.str());
    publish({{"event", "call-refused"},
             {"reason", nat::drop_reason_name(reason)},
             {"inside_address", pptp::format_ipv4(conn.key.inside_address)},
             {"outside_address", pptp::format_ipv4(conn.key.outside_address)},
             {"call_id", call_id}});
}

Agent::Agent(const daemon_options::Options& options, std::vector<std::string> argv)
    : options_(options), argv_(std::move(argv)) {
    logging::set_level(options_.log_level);
    // Resolved once: an upgrade may replace the files while we run.
    options_.rules_command = installer_path(options_.rules_command);
    for (const std::string& name : options_.outside_interfaces) {
        outside_ifindexes_.push_back(nfq::interface_index(name));
    }
    nat::TableConfig table_config = options_.table;
    // Without an override each control connection's public address is the
    // one its conntrack entry shows (table_config.public_address stays 0).
    table_config.public_address = options_.public_address.value_or(0);
    link_watcher_ = std::make_unique<nfq::LinkWatcher>();
    if (!options_.public_address) {
        kernel_nat_ = std::make_unique<KernelNat>();
    }
    table_ = std::make_unique<nat::CallTable>(table_config, clock_, counters_, &events_);
    handler_ = std::make_unique<nat::PacketHandler>(*table_, counters_, &events_, options_.handler);
    handler_->set_deferred_verdicts(this);
    handler_->set_local_addresses(nfq::local_ipv4_addresses());
    handler_->set_gateway_gre(nfq::gre_socket_open());
    handler_->set_nat_lookup(kernel_nat_.get());
    for (std::uint16_t port : options_.fixup_ports) {
        handler_->enable_port(port);
    }

    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
        sigaddset(&mask, sig);
    }
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    signal_fd_ = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (signal_fd_ < 0 || timer_fd_ < 0) {
        throw std::runtime_error(std::string("cannot create signal/timer descriptors: ") + std::strerror(errno));
    }
    // Ten ticks a second: a segment held for an incomplete field goes on cut
    // after its field wait (200 ms); the rest runs once a second.
    itimerspec tick{};
    tick.it_interval.tv_nsec = 100'000'000;
    tick.it_value.tv_nsec = 100'000'000;
    timerfd_settime(timer_fd_, 0, &tick, nullptr);

    nfq::QueueConfig queue_config;
    queue_config.queue_number = options_.queue;
    queue_config.max_length = options_.queue_max_length;
    queue_config.max_burst = options_.burst;
    queue_ = std::make_unique<nfq::Queue>(queue_config);

    api_ = std::make_unique<control::ApiContext>(
        control::ApiContext{*table_,
                            counters_,
                            *handler_,
                            [this] { return io_stats(); },
                            [this](std::uint16_t port, bool enable) { return set_fixup_port(port, enable); },
                            [this] { return fixup_ports(); },
                            [this] { return offload_stats(); },
                            [this] {
                                if (offload_) {
                                    offload_->refresh(*table_);
                                }
                            },
                            {},
                            {}});
    if (options_.ha_sync == daemon_options::Options::HaSync::Connlabel) {
        try {
            ha_ = std::make_unique<HaLabelSync>();
        } catch (const nfq::ConntrackError& e) {
            throw std::runtime_error(std::string("--ha-sync connlabel: ") + e.what());
        }
        events_.set_next(ha_.get());
        api_->ha_stats = [this] { return ha_->stats(); };
        api_->ha_adopt = [this] { return adopt_from_conntrack(); };
    }
    control_ = std::make_unique<control::Server>(options_.control_socket, [this](const nlohmann::json& request) {
        return control::handle_request(request, *api_);
    });
    events_.set_publisher([this](const nlohmann::json& event) {
        if (control_) {
            control_->publish(event);
        }
    });
    // Before privileges go: the netlink socket keeps the rights it was
    // opened with.
    open_offload();
    if (!options_.keep_capabilities) {
        drop_privileges(options_.user);
    }
    // With the queue bound (packets wait there meanwhile) and the control
    // socket ours (no other agent runs with it).
    start_offload();
    if (ha_) {
        // After the offload is up, which takes what it can of them.
        (void)adopt_from_conntrack();
    }
    if (!options_.metrics_file.empty()) {
        write_metrics_file();  // at once: a missing directory shows at start
    }
#ifdef PPTP_FIXUP_SANITIZER_SELFTEST
    // Sanitizer builds only: a test sets this to prove that LeakSanitizer
    // still sees this process's leaks once it has left root.
    if (std::getenv("PPTP_FIXUP_SELFTEST_LEAK") != nullptr) {
        leak_on_purpose();
    }
#endif
    if (options_.manage_rules) {
        if (const std::string failure = apply_rules(rules_settings(), fixup_ports()); !failure.empty()) {
            throw std::runtime_error("cannot install the rules: " + failure);
        }
    }

    std::string outsides;
    for (const auto& name : options_.outside_interfaces) {
        outsides += (outsides.empty() ? "" : ",") + name;
    }
    std::ostringstream ports;
    for (std::size_t i = 0; i < options_.fixup_ports.size(); ++i) {
        ports << (i == 0 ? "" : ",") << options_.fixup_ports[i];
    }
    logging::write(logging::Level::Notice, "",
                   "pptp-fixupd " PPTP_FIXUP_VERSION " started: queue " + std::to_string(options_.queue) +
                       ", outside " + outsides + " (public address " +
                       (options_.public_address ? pptp::format_ipv4(*options_.public_address)
                                                : std::string("of each connection, from conntrack")) +
                       "), fixup ports " + ports.str() + ", control socket " + options_.control_socket +
                       (options_.user ? ", user " + *options_.user : std::string()) + ", " + offload_summary_);
    sd_notifyf(0, "READY=1\nSTATUS=queue %u bound, 0 calls\nMAINPID=%lu", static_cast<unsigned>(options_.queue),
               static_cast<unsigned long>(getpid()));
    std::uint64_t watchdog_usec = 0;
    watchdog_ = sd_watchdog_enabled(0, &watchdog_usec) > 0;
}

Agent::~Agent() {
    if (signal_fd_ >= 0) {
        close(signal_fd_);
    }
    if (timer_fd_ >= 0) {
        close(timer_fd_);
    }
}

offload::OffloadConfig Agent::offload_config() const {
    offload::OffloadConfig config;
    config.outside_interfaces = options_.outside_interfaces;
    config.mark = options_.offload_mark;
    config.max_calls = static_cast<std::uint32_t>(std::min<std::size_t>(options_.table.max_calls, 1U << 24U));
    return config;
}

void Agent::offload_unavailable(const std::string& why) {
    using Mode = daemon_options::Options::GreOffload;
    if (options_.gre_offload == Mode::Nft) {
        throw std::runtime_error(why + " (--gre-offload nft)");
    }
    offload_off_reason_ = why;
    offload_summary_ = "GRE offload off (unavailable)";
    logging::write(logging::Level::Warning, "",
                   "GRE offload unavailable, every GRE packet goes through the queue: " + why);
}

void Agent::open_offload() {
    try {
        nft_ = std::make_unique<offload::NftOffload>(offload_config());
    } catch (const offload::OffloadError& e) {
        offload_unavailable(e.what());
    }
}

void Agent::start_offload() {
    using Mode = daemon_options::Options::GreOffload;
    if (!nft_) {
        return;
    }
    try {
        if (options_.gre_offload == Mode::Off) {
            const std::size_t adopted = adopt_onto_queue_path(*nft_, *table_);
            offload_off_reason_ = "--gre-offload off";
            offload_summary_ = "GRE offload off" + (adopted > 0 ? " (" + std::to_string(adopted) +
                                                                      " call(s) an earlier run offloaded adopted "
                                                                      "onto the queue, its table deleted)"
                                                                : std::string());
            return;
        }
        auto bridge = std::make_unique<GreOffloadBridge>(*nft_);
        const std::size_t adopted = bridge->adopt_and_install(*table_);
        offload_ = std::move(bridge);
        table_->set_offload(offload_.get());
        offload_summary_ = "GRE offload in nf_tables table ip " + nft_->config().table + " (mark bit " +
                           hex_mark(nft_->config().mark) + ", " + std::to_string(adopted) +
                           " call(s) adopted from an earlier run)";
    } catch (const offload::OffloadError& e) {
        offload_.reset();
        table_->set_offload(nullptr);
        try {
            (void)adopt_onto_queue_path(*nft_, *table_);
        } catch (const offload::OffloadError&) {
        }
        nft_.reset();
        offload_unavailable(e.what());
    }
}

void Agent::write_metrics_file() {
    const std::string temporary = options_.metrics_file + ".tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << control::metrics_text(*api_);
        if (!out.flush()) {
            if (!metrics_failed_) {
                logging::write(logging::Level::Warning, "", "cannot write the metrics file " + temporary);
            }
            metrics_failed_ = true;
            return;
        }
    }
    // Readers see the old file or the new one, never half of one.
    if (std::rename(temporary.c_str(), options_.metrics_file.c_str()) != 0) {
        if (!metrics_failed_) {
            logging::write(logging::Level::Warning, "",
                           "cannot rename " + temporary + " to " + options_.metrics_file + ": " + std::strerror(errno));
        }
        metrics_failed_ = true;
        return;
    }
    metrics_failed_ = false;
}

std::uint64_t Agent::offload_poll_seconds() const {
    // Often enough that a call in use is never taken for idle.
    const nat::TableConfig& c = table_->config();
    const auto shortest = std::min(c.call_idle_timeout.count(), c.call_unreplied_timeout.count()) / 3;
    return static_cast<std::uint64_t>(
        std::max<long long>(1, std::min<long long>(options_.offload_poll_seconds, shortest)));
}

nlohmann::json Agent::offload_stats() const {
    nlohmann::json result =
        offload_ ? offload_->stats() : nlohmann::json{{"mode", "off"}, {"reason", offload_off_reason_}};
    std::size_t offloaded = 0;
    table_->for_each_call([&](const nat::Call& call) { offloaded += call.offloaded ? 1 : 0; });
    result["calls"] = offloaded;
    result["marked_packets_in_queue"] = marked_in_queue_;
    return result;
}

nfq::SinkVerdict Agent::on_packet(const nfq::PacketMeta& meta, std::span<std::uint8_t> packet) {
    constexpr std::size_t kIpProtocolOffset = 9;
    if (offload_ && (meta.mark & options_.offload_mark) != 0 && packet.size() > kIpProtocolOffset &&
        packet[kIpProtocolOffset] == pptp::kIpProtoGre) {
        // Translated by the kernel already; only an older rule set (without
        // the mark match) queues such a packet.
        if (marked_in_queue_++ == 0) {
            logging::write(logging::Level::Warning, "",
                           "offloaded GRE reaches the queue: the rules lack the offload mark match; run "
                           "pptp-fixup-rules install again");
        }
        return nfq::SinkVerdict{true, false, false, 0};
    }
    nat::Direction direction = nat::Direction::Transit;
    if (is_outside(meta.in_interface)) {
        direction = nat::Direction::Inbound;
    } else if (is_outside(meta.out_interface)) {
        direction = nat::Direction::Outbound;
    }
    const nat::Verdict v = handler_->handle(direction, packet, meta.packet_id);
    return nfq::SinkVerdict{v.accept, v.modified, v.held, v.length};
}

RulesSettings Agent::rules_settings() const {
    return RulesSettings{options_.rules_command, options_.outside_interfaces, options_.queue, options_.offload_mark,
                         options_.ha_sync == daemon_options::Options::HaSync::Connlabel};
}

nlohmann::json Agent::adopt_from_conntrack() {
    const std::vector<std::uint16_t> ports = fixup_ports();
    const AdoptionReport report = ha_->adopt(*table_, *handler_, ports, options_.public_address);
    std::string line = "conntrack labels: " + std::to_string(report.entries) + " labelled connection(s), " +
                       std::to_string(report.adopted) + " call(s) adopted, " + std::to_string(report.already_known) +
                       " already here, " + std::to_string(report.conflicts) + " in conflict, " +
                       std::to_string(report.invalid_labels) + " label(s) not ours or damaged, " +
                       std::to_string(report.ended_elsewhere) + " call(s) here that ended on the other gateway";
    if (report.dump_failed) {
        line += "; the dump failed: " + std::string(std::strerror(report.error));
    }
    logging::write(report.dump_failed || report.conflicts > 0 ? logging::Level::Warning : logging::Level::Notice,
                   "302030", line);
    nlohmann::json result = {{"labelled_connections", report.entries},  {"adopted", report.adopted},
                             {"already_known", report.already_known},   {"conflicts", report.conflicts},
                             {"invalid_labels", report.invalid_labels}, {"ended_elsewhere", report.ended_elsewhere},
                             {"resynchronized", report.resynchronized}, {"kernel_filter", report.kernel_filter},
                             {"dump_failed", report.dump_failed}};
    if (report.dump_failed) {
        result["dump_error"] = std::strerror(report.error);
    }
    nlohmann::json event = result;
    event["event"] = "ha-adopt";
    events_.publish(std::move(event));
    return result;
}

std::vector<std::uint16_t> Agent::fixup_ports() const {
    std::vector<std::uint16_t> ports;
    for (std::uint32_t p = 1; p <= 65535; ++p) {
        if (handler_->port_enabled(static_cast<std::uint16_t>(p))) {
            ports.push_back(static_cast<std::uint16_t>(p));
        }
    }
    return ports;
}

std::string Agent::set_fixup_port(std::uint16_t port, bool enable) {
    if (handler_->port_enabled(port) == enable) {
        return {};
    }
    enable ? handler_->enable_port(port) : handler_->disable_port(port);
    if (const std::string failure = apply_rules(rules_settings(), fixup_ports()); !failure.empty()) {
        enable ? handler_->disable_port(port) : handler_->enable_port(port);
        logging::write(
            logging::Level::Error, "",
            "fixup " + std::string(enable ? "enable " : "disable ") + std::to_string(port) + " undone: " + failure);
        return "rules not updated, port left as it was: " + failure;
    }
    std::size_t torn_down = 0;
    if (!enable) {
        torn_down = table_->remove_connections_on_port(port, nat::TeardownReason::FixupDisabled);
    }
    events_.publish({{"event", "fixup"}, {"port", port}, {"enabled", enable}, {"connections_torn_down", torn_down}});
    logging::write(logging::Level::Notice, "500001",
                   std::string("fixup protocol pptp ") + std::to_string(port) + (enable ? " enabled" : " disabled") +
                       (enable ? "" : "; " + std::to_string(torn_down) + " control connection(s) torn down"));
    return {};
}

nlohmann::json Agent::io_stats() const {
    const nfq::QueueStats& q = queue_->stats();
    nlohmann::json result = {{"agent",
                              {{"received", q.received},
                               {"verdicts_sent", q.verdicts_sent},
                               {"batches_sent", q.batches_sent},
                               {"receive_overruns", q.receive_overruns},
                               {"send_errors", q.send_errors}}}};
    // The kernel's own view of the queue (this network namespace).
    std::ifstream proc("/proc/net/netfilter/nfnetlink_queue");
    std::string line;
    while (std::getline(proc, line)) {
        std::istringstream fields(line);
        unsigned long long number = 0, portid = 0, length = 0, mode = 0, range = 0, dropped = 0, user_dropped = 0,
                           sequence = 0;
        if (fields >> number >> portid >> length >> mode >> range >> dropped >> user_dropped >> sequence &&
            number == options_.queue) {
            result["kernel"] = {{"length", length}, {"dropped", dropped}, {"user_dropped", user_dropped}};
        }
    }
    return result;
}

bool Agent::is_outside(std::uint32_t ifindex) const noexcept {
    return ifindex != 0 &&
           std::find(outside_ifindexes_.begin(), outside_ifindexes_.end(), ifindex) != outside_ifindexes_.end();
}

std::optional<nat::NatMapping> KernelNat::mapping_of(const nat::ConnectionKey& key) {
    const auto tuples = conntrack_.find_tcp(key.inside_address, key.inside_port, key.outside_address, key.outside_port);
    if (!tuples) {
        if (!warned_) {
            warned_ = true;
            logging::write(logging::Level::Warning, "",
                           "no conntrack entry for PPTP control connection " + pptp::format_ipv4(key.inside_address) +
                               ":" + std::to_string(key.inside_port) + " - " + pptp::format_ipv4(key.outside_address) +
                               ":" + std::to_string(key.outside_port) +
                               ": its public address is unknown, its calls are refused (control_nat_unknown)" +
                               (conntrack_.last_error() != 0
                                    ? std::string("; ctnetlink: ") + std::strerror(conntrack_.last_error())
                                    : std::string()) +
                               "; reported once");
        }
        return std::nullopt;
    }
    const nat::NatMapping mapping{tuples->original_source, tuples->original_destination, tuples->reply_source,
                                  tuples->reply_destination};
    if (nat::public_address_for(mapping, key.outside_address) == 0 && !warned_) {
        warned_ = true;
        logging::write(logging::Level::Warning, "",
                       "the conntrack entry of PPTP control connection " + pptp::format_ipv4(key.inside_address) + ":" +
                           std::to_string(key.inside_port) + " - " + pptp::format_ipv4(key.outside_address) + ":" +
                           std::to_string(key.outside_port) + " does not name its outside peer (original " +
                           pptp::format_ipv4(mapping.original_source) + " -> " +
                           pptp::format_ipv4(mapping.original_destination) + ", reply " +
                           pptp::format_ipv4(mapping.reply_source) + " -> " +
                           pptp::format_ipv4(mapping.reply_destination) + "); its calls are refused; reported once");
    }
    return mapping;
}

void Agent::follow_link_changes() {
    if (!link_watcher_->drain()) {
        return;
    }
    try {
        for (std::size_t i = 0; i < options_.outside_interfaces.size(); ++i) {
            const std::uint32_t index = nfq::interface_index(options_.outside_interfaces[i]);
            if (index != outside_ifindexes_[i]) {
                logging::write(
                    logging::Level::Notice, "",
                    "outside interface " + options_.outside_interfaces[i] + " is now index " + std::to_string(index));
                outside_ifindexes_[i] = index;
            }
        }
        // New connections take their (possibly new) public address from
        // conntrack by themselves; the gateway's own addresses we follow.
        handler_->set_local_addresses(nfq::local_ipv4_addresses());
    } catch (const std::exception& e) {
        logging::write(logging::Level::Warning, "", std::string("outside interface: ") + e.what());
    }
}

void Agent::reload() {
    if (options_.config_file.empty()) {
        logging::write(logging::Level::Notice, "", "SIGHUP: no --config file to reload");
        return;
    }
    daemon_options::Options fresh;
    try {
        std::vector<const char*> args;
        for (const auto& a : argv_) {
            args.push_back(a.c_str());
        }
        const auto parsed = daemon_options::parse(static_cast<int>(args.size()), args.data());
        if (!parsed.options) {
            return;
        }
        fresh = *parsed.options;
    } catch (const std::exception& e) {
        logging::write(logging::Level::Error, "", std::string("reload failed, nothing changed: ") + e.what());
        return;
    }
    if (fresh.queue != options_.queue || fresh.outside_interfaces != options_.outside_interfaces ||
        fresh.public_address != options_.public_address || fresh.control_socket != options_.control_socket ||
        fresh.gre_offload != options_.gre_offload || fresh.offload_mark != options_.offload_mark ||
        fresh.offload_poll_seconds != options_.offload_poll_seconds || fresh.ha_sync != options_.ha_sync) {
        logging::write(logging::Level::Warning, "",
                       "reload: queue, outside, public-address, control-socket, offload and ha-sync changes need a "
                       "restart; kept");
    }
    logging::set_level(fresh.log_level);
    table_->set_config(fresh.table);
    handler_->set_config(fresh.handler);
    const std::vector<std::uint16_t> before = fixup_ports();
    std::vector<std::uint16_t> after = fresh.fixup_ports;
    std::sort(after.begin(), after.end());
    after.erase(std::unique(after.begin(), after.end()), after.end());
    for (std::uint16_t p : before) {
        if (!std::binary_search(after.begin(), after.end(), p)) {
            set_fixup_port(p, false);
        }
    }
    for (std::uint16_t p : after) {
        set_fixup_port(p, true);
    }
    options_.table = fresh.table;
    options_.handler = fresh.handler;
    options_.log_level = fresh.log_level;
    options_.fixup_ports = after;
    std::string list;
    for (std::uint16_t p : fixup_ports()) {
        list += (list.empty() ? "" : ",") + std::to_string(p);
    }
    logging::write(logging::Level::Notice, "",
                   "reloaded " + options_.config_file + ": fixup ports " + list + ", " +
                       std::to_string(table_->call_count()) + " live calls kept");
}

void Agent::release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) {
    queue_->emit_verdict(packet_id, accept, packet);
}

void Agent::log_table() const {
    logging::write(logging::Level::Notice, "",
                   std::to_string(table_->connection_count()) + " control connections, " +
                       std::to_string(table_->call_count()) + " calls");
    table_->for_each_call([](const nat::Call& call) {
        std::ostringstream s;
        s << "Live " << describe_call(call) << " state " << nat::state_name(call.state) << " packets in "
          << call.packets_in << " out " << call.packets_out;
        logging::write(logging::Level::Notice, "", s.str());
    });
}

int Agent::run() {
    std::vector<pollfd> fds;
    bool running = true;
    while (running) {
        fds.assign({{queue_->fd(), POLLIN, 0},
                    {signal_fd_, POLLIN, 0},
                    {timer_fd_, POLLIN, 0},
                    {link_watcher_ ? link_watcher_->fd() : -1, POLLIN, 0},
                    {offload_ ? offload_->ready_fd() : -1, POLLIN, 0}});
        control_->add_poll_fds(fds);
        if (poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            logging::write(logging::Level::Error, "", std::string("poll failed: ") + std::strerror(errno));
            return 1;
        }
        clock_.refresh();
        if ((fds[0].revents & POLLIN) != 0) {
            // Drain what is queued, a burst at a time, before looking at
            // timers and the control socket again.
            for (int bursts = 0; bursts < 16 && queue_->process_ready(*this) == options_.burst; ++bursts) {
                clock_.refresh();
            }
        }
        if ((fds[2].revents & POLLIN) != 0) {
            std::uint64_t expirations = 0;
            [[maybe_unused]] auto n = read(timer_fd_, &expirations, sizeof(expirations));
            handler_->expire_held();
            queue_->flush_verdicts();
            if (++ticks_ % 10 == 0) {  // once a second
                handler_->set_gateway_gre(nfq::gre_socket_open());
                if (offload_ && ticks_ % (10ULL * offload_poll_seconds()) == 0) {
                    offload_->start_poll(*table_);  // kernel traffic counts as activity once read
                }
                table_->expire();
                if (!options_.metrics_file.empty() && ticks_ % (10ULL * options_.metrics_seconds) == 0) {
                    write_metrics_file();
                }
                if (ticks_ % 50 == 0) {
                    sd_notifyf(0, "STATUS=%zu calls, %zu control connections, %llu packets\n%s", table_->call_count(),
                               table_->connection_count(),
                               static_cast<unsigned long long>(counters_.get(nat::EventCounter::packets_seen)),
                               watchdog_ ? "WATCHDOG=1" : "");
                } else if (watchdog_) {
                    sd_notify(0, "WATCHDOG=1");
                }
            }
        }
        if ((fds[3].revents & POLLIN) != 0) {
            follow_link_changes();
        }
        if ((fds[4].revents & POLLIN) != 0) {
            offload_->collect(*table_);
        }
        control_->handle(fds, 5);
        if ((fds[1].revents & POLLIN) != 0) {
            signalfd_siginfo info{};
            while (read(signal_fd_, &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
                if (info.ssi_signo == SIGINT || info.ssi_signo == SIGTERM) {
                    running = false;
                } else if (info.ssi_signo == SIGUSR1) {
                    log_table();
                } else if (info.ssi_signo == SIGHUP) {
                    reload();
                }
            }
        }
    }
    sd_notify(0, "STOPPING=1\nSTATUS=shutting down");
    logging::write(logging::Level::Notice, "", "shutting down");
    // Offloaded calls stay in the kernel, and the rules stay (also with
    // --manage-rules): a restart adopts the calls, and meanwhile the queue
    // is fail-closed for everything else. "pptp-fixup-rules remove" is the
    // stop for good.
    if (offload_) {
        offload_->poll(*table_);
        table_->set_offload(nullptr);
    }
    table_->clear_all(nat::TeardownReason::Shutdown);
    control_.reset();
    queue_.reset();
    return 0;
}

}  // namespace agent
