// The fixup itself: one IPv4 packet in, a verdict out, the packet rewritten in
// place when needed. Follows PPTP control connections as byte streams (any
// message boundary, retransmissions, out-of-order segments) and translates
// enhanced GRE. No I/O: the netfilter layer feeds it and carries out the
// verdicts, including those of segments it held back earlier.
#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

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
    // The packet was copied and held back; its verdict comes later through
    // DeferredVerdicts. Nothing is to be sent for it now.
    bool held = false;
    // New packet length when modified and shortened (a refusal turns a
    // segment into a bare RST); 0 = unchanged.
    std::size_t length = 0;
    DropReason reason = DropReason::none;
};

// What to do with a control message that breaks the protocol (bad header,
// out of state, wrong sender, Call ID of no call, bad version).
enum class ViolationPolicy : std::uint8_t {
    Drop,    // drop the segment that carries it (default)
    Accept,  // forward it unchanged (never rewritten); keep following the stream
};

struct HandlerConfig {
    ViolationPolicy on_violation = ViolationPolicy::Drop;
    // Segments held back per direction of a connection, waiting for the rest
    // of a Call ID field or for a gap before them to fill; and their bytes.
    std::size_t max_held_segments = 8;
    std::size_t max_held_bytes = 16384;
    // Across all connections.
    std::size_t max_held_total = 4096;
    std::chrono::milliseconds hold_timeout{2000};
};

// Verdicts of packets that were held: the netfilter layer sends them. A
// non-empty `packet` replaces the original (it was rewritten).
class DeferredVerdicts {
public:
    virtual ~DeferredVerdicts() = default;
    virtual void release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) = 0;
};

// Told about every drop and protocol violation, so the daemon can log them
// (rate-limited) with the connection they belong to.
class DropObserver {
public:
    virtual ~DropObserver() = default;
    virtual void packet_dropped(DropReason reason, std::uint32_t source, std::uint32_t destination) = 0;
    virtual void control_violation(const ControlConnection& conn, DropReason reason, std::string_view message,
                                   bool dropped) = 0;
    virtual void call_refused(const ControlConnection& conn, std::uint16_t call_id, DropReason reason) = 0;
};

class PacketHandler {
public:
    PacketHandler(CallTable& table, Counters& counters, DropObserver* observer = nullptr, HandlerConfig config = {});

    void enable_port(std::uint16_t port) noexcept { ports_.set(port); }
    void disable_port(std::uint16_t port) noexcept { ports_.reset(port); }
    [[nodiscard]] bool port_enabled(std::uint16_t port) const noexcept { return ports_.test(port); }
    void set_config(const HandlerConfig& config) noexcept { config_ = config; }
    [[nodiscard]] const HandlerConfig& config() const noexcept { return config_; }
    // Without a sink nothing is held: segments that would be are dropped
    // (TCP resends them).
    void set_deferred_verdicts(DeferredVerdicts* sink) noexcept { deferred_ = sink; }

    // `packet` starts at the IPv4 header; `packet_id` names it for a later
    // verdict if it is held. Rewrites happen in place.
    Verdict handle(Direction direction, std::span<std::uint8_t> packet, std::uint32_t packet_id = 0);

    // Drops held segments older than the hold timeout. Call about once a second.
    std::size_t expire_held();
    [[nodiscard]] std::size_t held_segments() const noexcept { return held_total_; }

private:
    struct HeldSegment {
        std::uint32_t packet_id = 0;
        std::uint32_t sequence = 0;  // of the first payload byte
        std::uint32_t end = 0;       // one past the last payload byte
        Instant since{};
        bool modified = false;
        std::size_t tcp_offset = 0;
        std::size_t payload_offset = 0;  // from the packet start
        std::vector<std::uint8_t> packet;
    };
    // A segment the stream can read bytes from: the current packet or a held one.
    struct SegmentRef {
        std::uint32_t sequence = 0;
        std::uint32_t end = 0;
        std::span<std::uint8_t> tcp;  // TCP header + payload
        std::size_t payload_offset = 0;
        bool* modified = nullptr;
    };
    struct Rewrite {
        std::size_t offset = 0;  // within the message
        std::uint16_t value = 0;
    };
    struct Outcome {
        DropReason violation = DropReason::none;
        bool refuse = false;  // the call cannot be given a public ID
        std::array<Rewrite, 2> rewrites{};
        std::size_t rewrite_count = 0;
    };

    Verdict handle_control(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                           std::uint32_t source, std::uint32_t destination, std::uint32_t packet_id);
    Verdict handle_gre(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                       std::uint32_t source, std::uint32_t destination);
    Verdict consume_stream(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet,
                           std::size_t tcp_offset, std::size_t payload_offset, std::uint32_t sequence,
                           std::uint32_t packet_id);
    // Bytes of `bytes` (which continue the stream at the cursor) that can be
    // taken now without stopping inside a message's Call ID region.
    [[nodiscard]] static std::size_t safe_length(const StreamCursor& cursor, std::span<const std::uint8_t> bytes);
    // Runs bytes through the message framing; returns the violation that stopped it.
    Outcome take_bytes(ControlConnection& conn, Direction dir, std::span<const std::uint8_t> bytes,
                       std::uint32_t first_sequence);
    void patch_stream_byte(std::uint32_t sequence, std::uint8_t original, std::uint8_t value);
    void patch_from_log(const StreamCursor& cursor, SegmentRef& segment);

    Outcome check_message_start(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header);
    Outcome decide_call_ids(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                            std::span<const std::uint8_t> prefix);
    Outcome message_complete(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                             std::span<const std::uint8_t> prefix);
    Call* call_named_by(const ControlConnection& conn, Direction dir, const pptp::MessageSpec& spec,
                        std::span<const std::uint8_t> prefix) const;

    bool hold(std::uint64_t key, std::span<const std::uint8_t> packet, std::size_t tcp_offset,
              std::size_t payload_offset, std::uint32_t sequence, std::uint32_t end, std::uint32_t packet_id,
              bool modified);
    // Sends a held segment's verdict and forgets it from the count.
    void release_segment(const HeldSegment& h, bool accept);
    void release_held(std::uint64_t key, bool accept_all);
    void refuse(std::span<std::uint8_t> packet, std::size_t tcp_offset, Verdict& verdict);
    Verdict drop(DropReason reason, std::uint32_t source, std::uint32_t destination);
    Verdict refuse_connection(std::uint32_t source, std::uint32_t destination);  // a connection limit

    CallTable& table_;
    Counters& counters_;
    DropObserver* observer_;
    HandlerConfig config_;
    DeferredVerdicts* deferred_ = nullptr;
    std::bitset<65536> ports_;
    // Held segments per (connection id, direction).
    std::unordered_map<std::uint64_t, std::vector<HeldSegment>> held_;
    std::size_t held_total_ = 0;
    // Reused on every control segment, so the steady state allocates nothing.
    std::vector<SegmentRef> segments_;
    std::vector<std::uint8_t> scratch_;
};

}  // namespace nat
