// --ha-sync connlabel: each control connection's calls ride in a label on
// its own conntrack entry, which conntrackd syncs to the standby gateway
// with the entry itself (no protocol of ours). The active gateway's agent
// writes the label as calls are built and torn down; the standby's agent,
// once conntrackd has committed the entries into its kernel, adopts the
// calls from it (at start and on "pptp-fixupctl ha adopt").
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "common/log.hpp"
#include "ha/connection_label.hpp"
#include "nat/call_table.hpp"
#include "nat/packet_handler.hpp"
#include "nfq/conntrack.hpp"

namespace agent {

// The label a connection's live calls make (the first kMaxCalls established
// ones, without `leaving`).
[[nodiscard]] ha::ConnectionLabel label_of(const nat::ControlConnection& conn, const nat::Call* leaving);

// What one labelled conntrack entry says about its connection, or nullopt
// when its tuples cannot be a control connection of this label.
[[nodiscard]] std::optional<nat::AdoptedCall> connection_of(const nfq::LabelledEntry& entry,
                                                            const ha::ConnectionLabel& label,
                                                            std::optional<std::uint32_t> public_address);

struct AdoptionReport {
    std::uint64_t entries = 0;          // labelled TCP entries seen
    std::uint64_t adopted = 0;          // calls taken into the table
    std::uint64_t already_known = 0;    // calls the table had (this agent wrote them)
    std::uint64_t conflicts = 0;        // Call IDs taken by another call, or a limit reached
    std::uint64_t ended_elsewhere = 0;  // calls here that a known connection's label no longer names
    std::uint64_t resynchronized = 0;   // known connections whose streams are picked up again
    std::uint64_t invalid_labels = 0;   // labels that are not ours or are damaged
    bool dump_failed = false;
    bool kernel_filter = false;  // the kernel sent only the fixup ports' entries
    int error = 0;               // errno of a failed dump
};

class HaLabelSync final : public nat::TableObserver {
public:
    // Opens its own ctnetlink socket; throws nfq::ConntrackError.
    HaLabelSync();

    void call_built(const nat::Call& call) override;
    // A shutdown leaves the label as it is: the calls go on elsewhere (the
    // offload, the standby).
    void call_torn_down(const nat::Call& call, nat::TeardownReason reason) override;

    // Adopts the calls of every labelled control connection in the
    // conntrack table; those the table takes go on the queue path and are
    // then offered to the offload. `public_address`: --public-address.
    // A label is the truth about a connection this agent knows already (it
    // was active before, the other gateway carried the connection since):
    // its established calls that the label no longer names are torn down
    // (when the label has room for them), and its streams are picked up
    // again where they are now.
    // Only connections opened to one of `ports` (the fixup ports) are read.
    AdoptionReport adopt(nat::CallTable& table, nat::PacketHandler& handler, std::span<const std::uint16_t> ports,
                         std::optional<std::uint32_t> public_address);

    [[nodiscard]] nlohmann::json stats() const;

private:
    void write(const nat::ControlConnection& conn, const nat::Call* leaving);

    nfq::ConntrackTable conntrack_;
    std::uint64_t labels_written_ = 0;
    std::uint64_t label_write_failures_ = 0;
    std::uint64_t calls_not_synced_ = 0;  // beyond kMaxCalls on one connection, when written
    int last_write_error_ = 0;
    std::uint64_t adoption_runs_ = 0;
    AdoptionReport adopted_total_;
    logging::RateLimiter failure_limiter_{std::chrono::seconds(60), 1};
};

}  // namespace agent
