#include "daemon/offload_bridge.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "pptp/inet.hpp"

namespace agent {
namespace {

constexpr std::uint64_t kIpv4HeaderBytes = 20;  // the kernel counts IP bytes, the queue path GRE bytes

std::int64_t steady_ns(nat::Instant t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

void log_failure(logging::RateLimiter& limiter, std::uint64_t kind, const std::string& text) {
    std::uint64_t suppressed = 0;
    if (limiter.allow(kind, std::chrono::steady_clock::now(), suppressed)) {
        logging::write(logging::Level::Warning, "400010",
                       text + (suppressed > 0 ? " (" + std::to_string(suppressed) + " more since the last report)"
                                              : std::string()));
    }
}

// GRE bytes from the kernel's IP bytes.
std::uint64_t gre_bytes(const offload::ElementCounters& c) {
    return c.bytes >= c.packets * kIpv4HeaderBytes ? c.bytes - c.packets * kIpv4HeaderBytes : 0;
}

// One way's kernel counters into the call; a change counts as activity.
void take_counters(nat::Call& call, const offload::ElementCounters& c, bool inbound, nat::Instant now) {
    std::uint64_t& packets = inbound ? call.packets_in : call.packets_out;
    std::uint64_t& bytes = inbound ? call.bytes_in : call.bytes_out;
    const std::uint64_t total = (inbound ? call.offload_base.packets_in : call.offload_base.packets_out) + c.packets;
    if (total != packets) {
        call.last_activity = now;
    }
    packets = total;
    bytes = (inbound ? call.offload_base.bytes_in : call.offload_base.bytes_out) + gre_bytes(c);
}

}  // namespace

offload::CallRecord record_of(const nat::Call& call) {
    offload::CallRecord r;
    r.inside_address = call.inside_address;
    r.outside_address = call.outside_address;
    r.public_address = call.public_address;
    r.inside_call_id = call.inside_call_id;
    r.public_call_id = call.public_call_id;
    r.outside_call_id = call.outside_call_id;
    r.inside_port = call.connection->key.inside_port;
    r.outside_port = call.connection->key.outside_port;
    r.outgoing = call.outgoing;
    r.opened_from_outside = call.connection->opened_from_outside;
    r.pns_side = call.connection->pns_side;
    r.created_ns = steady_ns(call.created);
    r.base_packets_in = call.offload_base.packets_in;
    r.base_bytes_in = call.offload_base.bytes_in;
    r.base_packets_out = call.offload_base.packets_out;
    r.base_bytes_out = call.offload_base.bytes_out;
    return r;
}

nat::AdoptedCall adopted_from(const offload::OffloadedCall& found) {
    const offload::CallRecord& r = found.record;
    nat::AdoptedCall a;
    a.connection.inside_address = r.inside_address;
    a.connection.outside_address = r.outside_address;
    a.connection.inside_port = r.inside_port;
    a.connection.outside_port = r.outside_port;
    a.opened_from_outside = r.opened_from_outside;
    a.outgoing = r.outgoing;
    a.pns_side = r.pns_side;
    a.public_address = r.public_address;
    a.inside_call_id = r.inside_call_id;
    a.public_call_id = r.public_call_id;
    a.outside_call_id = r.outside_call_id;
    a.created =
        nat::Instant(std::chrono::duration_cast<nat::Instant::duration>(std::chrono::nanoseconds(r.created_ns)));
    a.base = {r.base_packets_in, r.base_bytes_in, r.base_packets_out, r.base_bytes_out};
    a.offload = {found.in.packets, gre_bytes(found.in), found.out.packets, gre_bytes(found.out)};
    return a;
}

bool GreOffloadBridge::offload(const nat::Call& call) {
    const offload::CallRecord record = record_of(call);
    int error = nft_.add(record);
    if (error == EEXIST) {
        // Elements left by an ended call whose removal failed: this call's
        // translation replaces them, never the other way round.
        (void)nft_.remove(record);
        ++stale_removed_;
        error = nft_.add(record);
    }
    if (error != 0) {
        ++install_failures_;
        log_failure(failure_limiter_, 1,
                    "GRE offload of PPTP call " + std::to_string(call.id) + " failed (" + std::strerror(error) +
                        "); its GRE goes through the queue");
        return false;
    }
    ++installed_;
    ++live_;
    return true;
}

void GreOffloadBridge::apply(nat::Call& call, const offload::ElementCounters& in, const offload::ElementCounters& out,
                             nat::Instant now) {
    take_counters(call, in, true, now);
    take_counters(call, out, false, now);
}

void GreOffloadBridge::withdraw(nat::Call& call) {
    const offload::CallRecord record = record_of(call);
    // Its last figures, for the teardown log and the audit.
    offload::ElementCounters in;
    offload::ElementCounters out;
    if (nft_.read_call(record, in, out) == 0) {
        apply(call, in, out, call.last_activity);
    }
    const int error = nft_.remove(record);
    if (error != 0 && error != ENOENT) {
        ++withdraw_failures_;
        // The next poll removes what is left: an element of no live call.
        log_failure(failure_limiter_, 2,
                    "removing the GRE offload of PPTP call " + std::to_string(call.id) + " failed (" +
                        std::strerror(error) + "); retried at the next counter reading");
        return;
    }
    ++withdrawn_;
    live_ -= live_ > 0 ? 1 : 0;
}

std::size_t GreOffloadBridge::adopt_and_install(nat::CallTable& table) {
    std::vector<offload::CallRecord> keep;
    std::vector<nat::Call*> adopted_calls;
    for (const offload::OffloadedCall& found : nft_.existing_calls()) {
        nat::AdoptedCall adopted = adopted_from(found);
        // The elements are made anew below (their counters start at 0): what
        // the kernel counted so far joins the base.
        adopted.base = {
            adopted.base.packets_in + adopted.offload.packets_in, adopted.base.bytes_in + adopted.offload.bytes_in,
            adopted.base.packets_out + adopted.offload.packets_out, adopted.base.bytes_out + adopted.offload.bytes_out};
        adopted.offload = {};
        if (nat::Call* call = table.adopt_call(adopted); call != nullptr) {
            keep.push_back(record_of(*call));
            adopted_calls.push_back(call);
        }
    }
    try {
        nft_.install(keep);
    } catch (const offload::OffloadError&) {
        // Their GRE now goes to the queue, which knows them.
        for (nat::Call* call : adopted_calls) {
            call->offloaded = false;
        }
        throw;
    }
    installed_ += keep.size();
    live_ += keep.size();
    return keep.size();
}

GreOffloadBridge::GreOffloadBridge(offload::NftOffload& nft)
    : nft_(nft), reader_(std::make_unique<offload::NftOffload>(nft.config())) {
    ready_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ready_fd_ < 0) {
        throw offload::OffloadError(std::string("offload: eventfd: ") + std::strerror(errno));
    }
    reader_thread_ = std::thread([this] { reader_loop(); });
}

GreOffloadBridge::~GreOffloadBridge() {
    {
        const std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_one();
    reader_thread_.join();
    close(ready_fd_);
}

void GreOffloadBridge::reader_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        wake_.wait(lock, [this] { return stopping_ || requested_; });
        if (stopping_) {
            return;
        }
        requested_ = false;
        lock.unlock();
        std::optional<offload::CounterSnapshot> snapshot;
        std::string error;
        try {
            snapshot = reader_->read_counters();
        } catch (const offload::OffloadError& e) {
            error = e.what();
        }
        lock.lock();
        result_ = std::move(snapshot);
        result_error_ = std::move(error);
        const std::uint64_t one = 1;
        [[maybe_unused]] const auto n = write(ready_fd_, &one, sizeof(one));
    }
}

void GreOffloadBridge::start_poll(const nat::CallTable& table) {
    if (busy_) {
        return;
    }
    busy_ = true;
    {
        const std::lock_guard<std::mutex> lock(mutex_);
        requested_ = true;
        requested_serial_ = table.offload_serial();
    }
    wake_.notify_one();
}

void GreOffloadBridge::collect(nat::CallTable& table) {
    std::uint64_t value = 0;
    if (read(ready_fd_, &value, sizeof(value)) != static_cast<ssize_t>(sizeof(value))) {
        return;
    }
    std::optional<offload::CounterSnapshot> snapshot;
    std::string error;
    std::uint64_t serial = 0;
    {
        const std::lock_guard<std::mutex> lock(mutex_);
        snapshot = std::move(result_);
        result_.reset();
        error = std::move(result_error_);
        serial = requested_serial_;
    }
    busy_ = false;
    ++polls_;
    if (!snapshot) {
        ++poll_failures_;
        log_failure(failure_limiter_, 3, "reading the offload counters failed: " + error);
        return;
    }
    apply(table, *snapshot, serial);
}

void GreOffloadBridge::poll(nat::CallTable& table) {
    ++polls_;
    try {
        apply(table, nft_.read_counters(), table.offload_serial());
    } catch (const offload::OffloadError& e) {
        ++poll_failures_;
        log_failure(failure_limiter_, 3, std::string("reading the offload counters failed: ") + e.what());
    }
}

void GreOffloadBridge::refresh(nat::CallTable& table) {
    if (live_ <= kSynchronousAuditCalls) {
        poll(table);
    } else {
        start_poll(table);
    }
}

void GreOffloadBridge::apply(nat::CallTable& table, const offload::CounterSnapshot& snapshot,
                             std::uint64_t serial_limit) {
    // Only calls offloaded before the reading began: an element of the same
    // key read earlier may have been another call's.
    auto current = [serial_limit](nat::Call* call) {
        return call != nullptr && call->offloaded && call->offload_serial <= serial_limit;
    };
    const nat::Instant now = table.now();
    last_read_ = std::chrono::steady_clock::now();
    for (const offload::KeyedCounters& in : snapshot.inbound) {
        nat::Call* call = table.find_inbound(in.first, in.second, in.call_id);
        if (current(call)) {
            take_counters(*call, in.counters, true, now);
        } else if (call == nullptr && nft_.remove_inbound(in.first, in.second, in.call_id) == 0) {
            ++stale_removed_;  // of no live call: a removal that failed once
        }
    }
    for (const offload::KeyedCounters& out : snapshot.outbound) {
        nat::Call* call = table.find_outbound(out.first, out.second, out.call_id);
        if (current(call)) {
            take_counters(*call, out.counters, false, now);
        } else if (call == nullptr && nft_.remove_outbound(out.first, out.second, out.call_id) == 0) {
            ++stale_removed_;
        }
    }
}

nlohmann::json GreOffloadBridge::stats() const {
    return {{"mode", "nft"},
            {"table", "ip " + nft_.config().table},
            {"installed", installed_},
            {"install_failures", install_failures_},
            {"withdrawn", withdrawn_},
            {"withdraw_failures", withdraw_failures_},
            {"stale_removed", stale_removed_},
            {"counter_reads", polls_},
            {"counters_read_seconds_ago",
             last_read_ == std::chrono::steady_clock::time_point{}
                 ? -1.0
                 : std::chrono::duration<double>(std::chrono::steady_clock::now() - last_read_).count()},
            {"counter_read_failures", poll_failures_},
            {"netlink_transactions", nft_.transactions()}};
}

std::size_t adopt_onto_queue_path(offload::NftOffload& nft, nat::CallTable& table) {
    std::size_t adopted = 0;
    for (const offload::OffloadedCall& found : nft.existing_calls()) {
        if (nat::Call* call = table.adopt_call(adopted_from(found)); call != nullptr) {
            call->offloaded = false;
            ++adopted;
        }
    }
    (void)nft.remove_table();
    return adopted;
}

}  // namespace agent
