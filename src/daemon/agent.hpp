// pptp-fixupd wired together: options -> interface facts -> call table ->
// packet handler -> NFQUEUE, in one poll loop with signals and timers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "control/api.hpp"
#include "control/server.hpp"
#include "daemon/ha_sync.hpp"
#include "daemon/offload_bridge.hpp"
#include "daemon/options.hpp"
#include "daemon/rules.hpp"
#include "nat/call_table.hpp"
#include "nat/clock.hpp"
#include "nat/counters.hpp"
#include "nat/packet_handler.hpp"
#include "nfq/conntrack.hpp"
#include "nfq/link.hpp"
#include "nfq/queue.hpp"
#include "offload/nft_offload.hpp"

namespace agent {

// Logs what the table and the handler report: call build/teardown with
// stable IDs, drops rate-limited per reason.
class EventLog final : public nat::TableObserver, public nat::DropObserver {
public:
    void call_built(const nat::Call& call) override;
    void call_torn_down(const nat::Call& call, nat::TeardownReason reason) override;
    void packet_dropped(nat::DropReason reason, std::uint32_t source, std::uint32_t destination) override;
    void control_violation(const nat::ControlConnection& conn, nat::DropReason reason, std::string_view message,
                           bool dropped) override;
    void call_refused(const nat::ControlConnection& conn, std::uint16_t call_id, nat::DropReason reason) override;
    // Where events also go (pptp-fixupctl events); empty: nowhere.
    void set_publisher(std::function<void(nlohmann::json)> publish) { publish_ = std::move(publish); }
    // Told of every call built and torn down after the log (--ha-sync).
    void set_next(nat::TableObserver* next) noexcept { next_ = next; }
    void publish(nlohmann::json event) const;

private:
    std::function<void(nlohmann::json)> publish_;
    nat::TableObserver* next_ = nullptr;
    logging::RateLimiter drop_limiter_{std::chrono::seconds(10), 1};
    // Protocol violations: one line per control connection per minute.
    logging::RateLimiter violation_limiter_{std::chrono::seconds(60), 1};
};

// Each control connection's public address, from the kernel's conntrack
// table: what its NAT (MASQUERADE, SNAT pool, port forward, 1:1) chose.
class KernelNat final : public nat::NatLookup {
public:
    std::optional<nat::NatMapping> mapping_of(const nat::ConnectionKey& key) override;

private:
    nfq::ConntrackTable conntrack_;
    bool warned_ = false;
};

class Agent final : public nfq::PacketSink, public nat::DeferredVerdicts {
public:
    // Throws std::runtime_error (one line) when the agent cannot start.
    // `argv` is kept to parse the options again on SIGHUP.
    Agent(const daemon_options::Options& options, std::vector<std::string> argv);
    ~Agent() override;
    Agent(const Agent&) = delete;
    Agent& operator=(const Agent&) = delete;

    // Runs until SIGINT or SIGTERM. Returns the process exit code.
    int run();

    nfq::SinkVerdict on_packet(const nfq::PacketMeta& meta, std::span<std::uint8_t> packet) override;
    void release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) override;

private:
    void log_table() const;
    void reload();
    void follow_link_changes();
    [[nodiscard]] bool is_outside(std::uint32_t ifindex) const noexcept;
    std::string set_fixup_port(std::uint16_t port, bool enable);
    [[nodiscard]] std::vector<std::uint16_t> fixup_ports() const;
    [[nodiscard]] nlohmann::json io_stats() const;
    [[nodiscard]] RulesSettings rules_settings() const;
    // --gre-offload: builds the kernel offload (adopting what an earlier run
    // left there), or takes those calls onto the queue path.
    void open_offload();
    void start_offload();
    void offload_unavailable(const std::string& why);
    [[nodiscard]] offload::OffloadConfig offload_config() const;
    [[nodiscard]] nlohmann::json offload_stats() const;
    [[nodiscard]] std::uint64_t offload_poll_seconds() const;
    void write_metrics_file();
    [[nodiscard]] nlohmann::json adopt_from_conntrack();

    daemon_options::Options options_;
    std::vector<std::string> argv_;
    std::vector<std::uint32_t> outside_ifindexes_;  // as options_.outside_interfaces
    std::unique_ptr<KernelNat> kernel_nat_;         // without --public-address
    nat::CachedClock clock_;
    nat::Counters counters_;
    EventLog events_;
    std::unique_ptr<nat::CallTable> table_;
    std::unique_ptr<nat::PacketHandler> handler_;
    std::unique_ptr<nfq::Queue> queue_;
    std::unique_ptr<control::ApiContext> api_;
    std::unique_ptr<control::Server> control_;
    std::unique_ptr<nfq::LinkWatcher> link_watcher_;
    std::unique_ptr<offload::NftOffload> nft_;
    std::unique_ptr<GreOffloadBridge> offload_;  // null when GRE goes through the queue only
    std::unique_ptr<HaLabelSync> ha_;            // --ha-sync connlabel
    std::string offload_off_reason_;
    std::string offload_summary_;
    bool metrics_failed_ = false;  // reported once until a write succeeds  // for the start-up log line
    std::uint64_t marked_in_queue_ = 0;
    bool watchdog_ = false;
    std::uint64_t ticks_ = 0;
    int signal_fd_ = -1;
    int timer_fd_ = -1;
};

}  // namespace agent
