// The fixup itself: one IPv4 packet in, a verdict out, the packet rewritten in
// place when needed. Follows PPTP control streams (TCP, any fixup port) and
// translates enhanced GRE. No I/O: the netfilter layer feeds it.
#pragma once

#include <bitset>
#include <cstdint>
#include <span>
#include <string_view>

#include "nat/call_table.hpp"
#include "nat/counters.hpp"
#include "pptp/control_message.hpp"

namespace nat {

// Relative to the outside (public) interface.
enum class Direction : std::uint8_t {
    Outbound = 0,  // inside -> outside
    Inbound = 1,   // outside -> inside
    Transit = 2,   // does not cross the outside interface: left alone
};

struct Verdict {
    bool accept = true;
    bool modified = false;
    DropReason reason = DropReason::none;
};

// Told about every drop, so the daemon can log (rate-limited) what and why.
class DropObserver {
public:
    virtual ~DropObserver() = default;
    virtual void packet_dropped(DropReason reason, std::uint32_t source, std::uint32_t destination) = 0;
};

class PacketHandler {
public:
    PacketHandler(CallTable& table, Counters& counters, DropObserver* observer = nullptr);

    void enable_port(std::uint16_t port) noexcept { ports_.set(port); }
    void disable_port(std::uint16_t port) noexcept { ports_.reset(port); }
    [[nodiscard]] bool port_enabled(std::uint16_t port) const noexcept { return ports_.test(port); }

    // `packet` starts at the IPv4 header. Rewrites happen in place and never
    // change the length.
    Verdict handle(Direction direction, std::span<std::uint8_t> packet);

private:
    struct Rewrite {
        std::size_t offset = 0;  // within the message
        std::uint16_t value = 0;
    };
    struct RegionDecision {
        DropReason drop = DropReason::none;
        std::array<Rewrite, 2> rewrites{};
        std::size_t rewrite_count = 0;
    };

    Verdict handle_control(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                           std::uint32_t source, std::uint32_t destination);
    Verdict handle_gre(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                       std::uint32_t source, std::uint32_t destination);
    // Runs the new bytes of a segment through the stream; may rewrite them.
    Verdict consume_stream(ControlConnection& conn, Direction dir, std::span<std::uint8_t> tcp_segment,
                           std::size_t payload_offset, std::uint32_t sequence);
    [[nodiscard]] bool segment_splits_call_id(const StreamCursor& cursor,
                                              std::span<const std::uint8_t> bytes) const noexcept;
    RegionDecision decide_call_ids(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                                   std::span<const std::uint8_t> prefix);
    void message_complete(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                          std::span<const std::uint8_t> prefix);
    Call* call_named_by(const ControlConnection& conn, Direction dir, const pptp::MessageSpec& spec,
                        std::span<const std::uint8_t> prefix) const;
    Verdict drop(DropReason reason, std::uint32_t source, std::uint32_t destination);

    CallTable& table_;
    Counters& counters_;
    DropObserver* observer_;
    std::bitset<65536> ports_;
};

}  // namespace nat
