// Connects the call table to the kernel offload (offload/): established calls
// go in, ended calls come out, kernel counters come back into the audit, and
// calls an earlier run left in the kernel are adopted at start.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/log.hpp"
#include "nat/call_table.hpp"
#include "offload/nft_offload.hpp"

namespace agent {

class GreOffloadBridge final : public nat::CallOffload {
public:
    // Starts the counter reader (a thread with a netlink socket of its own:
    // a dump of many calls takes long, and the packet loop must not wait).
    explicit GreOffloadBridge(offload::NftOffload& nft);
    ~GreOffloadBridge() override;
    GreOffloadBridge(const GreOffloadBridge&) = delete;
    GreOffloadBridge& operator=(const GreOffloadBridge&) = delete;

    bool offload(const nat::Call& call) override;
    void withdraw(nat::Call& call) override;

    // At start: takes into `table` the calls the kernel's maps hold, then
    // (re)builds the table keeping exactly those. Returns how many. Throws
    // offload::OffloadError when the table cannot be built.
    std::size_t adopt_and_install(nat::CallTable& table);
    // Reads the kernel's counters into the offloaded calls (an element that
    // moved counts as activity) and removes elements of no live call, now.
    void poll(nat::CallTable& table);
    // The same in the background: the reader thread dumps the maps, and
    // collect() applies the result once ready_fd() is readable.
    void start_poll(const nat::CallTable& table);
    [[nodiscard]] int ready_fd() const noexcept { return ready_fd_; }
    void collect(nat::CallTable& table);
    // Before an audit answer: at once with few calls, else from the last
    // background reading (and a new one is started).
    void refresh(nat::CallTable& table);
    // The call's counters from its elements.
    static void apply(nat::Call& call, const offload::ElementCounters& in, const offload::ElementCounters& out,
                      nat::Instant now);

    [[nodiscard]] nlohmann::json stats() const;

private:
    // Up to this many offloaded calls an audit reads the kernel's counters
    // first (a dump of 16,384 calls takes about 25 ms; it grows with the
    // square of the number); above, it answers from the last reading.
    static constexpr std::uint64_t kSynchronousAuditCalls = 16384;
    void apply(nat::CallTable& table, const offload::CounterSnapshot& snapshot, std::uint64_t serial_limit);
    void reader_loop();

    offload::NftOffload& nft_;
    std::unique_ptr<offload::NftOffload> reader_;
    std::thread reader_thread_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    bool requested_ = false;
    bool busy_ = false;  // a reading is asked for or under way (main thread's view)
    std::uint64_t requested_serial_ = 0;
    std::optional<offload::CounterSnapshot> result_;
    std::string result_error_;
    int ready_fd_ = -1;
    std::uint64_t live_ = 0;  // calls offloaded now
    std::chrono::steady_clock::time_point last_read_{};
    std::uint64_t installed_ = 0;
    std::uint64_t install_failures_ = 0;
    std::uint64_t withdrawn_ = 0;
    std::uint64_t withdraw_failures_ = 0;
    std::uint64_t stale_removed_ = 0;
    std::uint64_t polls_ = 0;
    std::uint64_t poll_failures_ = 0;
    logging::RateLimiter failure_limiter_{std::chrono::seconds(10), 1};
};

// The record the kernel keeps of a call.
[[nodiscard]] offload::CallRecord record_of(const nat::Call& call);
// A record as the call table adopts it (`counters` folded into its base when
// the elements are made anew).
[[nodiscard]] nat::AdoptedCall adopted_from(const offload::OffloadedCall& found);

// --gre-offload off, or a start without the kernel's support: calls an
// earlier run left in the kernel are adopted onto the queue path and the
// table is deleted. Returns how many were adopted.
std::size_t adopt_onto_queue_path(offload::NftOffload& nft, nat::CallTable& table);

}  // namespace agent
