// Follows each direction of a TCP connection as a byte stream and knows no
// application protocol: it decides which segments may count (checksum,
// sequence numbers as RFC 5961 has endpoints judge them), holds segments until
// what they carry can be decided, and makes resent bytes leave exactly as the
// first copy did. An inspector on top (StreamConsumer) sees each byte once, in
// order, the way Suricata's stream engine feeds its app-layer parsers. No I/O
// and no clock: the caller passes the time.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace stream {

using Instant = std::chrono::steady_clock::time_point;

// What one direction sent, as the first copy had it, and the field bytes the
// consumer decided there: a resend must carry the same bytes ("first copy
// wins", as stream normalisers have it) and leaves with the same rewrites.
// Bytes the receiver acknowledged go once more than kHistory are kept; a
// resend of bytes older than that leaves without them.
struct Unacknowledged {
    struct FieldByte {
        std::uint32_t sequence;
        std::uint8_t to;
    };
    std::uint32_t base = 0;              // sequence number of bytes[0]
    std::uint32_t acknowledged = 0;      // the receiver's ACK, base <= it <= the stream position
    std::vector<std::uint8_t> bytes;     // originals, from base to the stream position
    std::vector<FieldByte> field_bytes;  // in stream order
};

struct DirectionState {
    bool synchronized = false;        // next_sequence is known
    bool data_taken = false;          // some bytes of this direction were taken
    bool isn_known = false;           // opened by a SYN the follower saw
    std::uint32_t stream_start = 0;   // ISN + 1, or where the stream was picked up
    std::uint32_t next_sequence = 0;  // the first byte not taken yet
    std::uint32_t last_ack = 0;       // the ACK number this side sent last
    bool ack_known = false;
    Unacknowledged sent;
};

// Both directions of one connection, indexed by side (0 or 1).
struct Flow {
    std::array<DirectionState, 2> sides{};
    [[nodiscard]] bool data_seen() const noexcept { return sides[0].data_taken || sides[1].data_taken; }
};

// One TCP segment inside its IPv4 packet; rewrites happen in place.
struct Segment {
    std::span<std::uint8_t> packet;  // from the IPv4 header, the packet's total length
    std::size_t tcp_offset = 0;      // IPv4 header length
    std::size_t payload_offset = 0;  // from the packet start
    std::uint32_t source = 0;        // host byte order, as in the header
    std::uint32_t destination = 0;
    std::uint32_t sequence = 0;
    std::uint32_t acknowledgement = 0;
    bool syn = false;
    bool fin = false;
    bool rst = false;
    bool ack = false;
    std::uint32_t packet_id = 0;  // names the packet for a later verdict if it is held
    // Whose share of held segments it takes (e.g. the host that opened the
    // connection); the source address when 0.
    std::uint32_t owner = 0;
    [[nodiscard]] std::size_t payload_size() const noexcept { return packet.size() - payload_offset; }
};

// Where a consumer puts its decision about a field of the bytes it takes.
class FieldWriter {
public:
    virtual ~FieldWriter() = default;
    // The two bytes at `offset` of the bytes being taken are a field that
    // leaves as `value` (which may be what is there already).
    virtual void field(std::size_t offset, std::uint16_t value) = 0;
    // One byte of a field, decided alone (the other one is taken elsewhere).
    virtual void field_byte(std::size_t offset, std::uint8_t value) = 0;
};

enum class Take : std::uint8_t {
    Ok,     // taken
    Reset,  // the consumer wants the connection ended; nothing of it goes on
};

// The application-layer inspector, per call bound to one connection.
class StreamConsumer {
public:
    virtual ~StreamConsumer() = default;
    // How many of `bytes`, which continue `side` at its stream position, may
    // be taken now; the rest waits for more (a field is decided whole).
    [[nodiscard]] virtual std::size_t takeable(std::size_t side, std::span<const std::uint8_t> bytes) const = 0;
    virtual Take take(std::size_t side, std::span<const std::uint8_t> bytes, FieldWriter& fields) = 0;
    // The stream waits at the start of a field whose first byte alone came,
    // and the sender waits for its ACK before it sends the rest (Nagle):
    // take that byte now (`taken` = 1) if it can be decided alone, or ask
    // for a reset if the field can never be decided so (no stall).
    virtual Take take_field_start(std::size_t side, std::span<const std::uint8_t> bytes, FieldWriter& fields,
                                  std::size_t& taken) {
        static_cast<void>(side);
        static_cast<void>(bytes);
        static_cast<void>(fields);
        taken = 0;
        return Take::Ok;
    }
};

// Verdicts of held segments, sent later by the netfilter layer. A non-empty
// `packet` replaces the original.
class DeferredVerdicts {
public:
    virtual ~DeferredVerdicts() = default;
    virtual void release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) = 0;
};

enum class Event : std::uint8_t {
    SegmentHeld,
    SegmentReleased,
    HeldDropped,      // a held segment's verdict was a drop
    SegmentReplaced,  // a held segment gave way to its resend (dropped)
    SegmentCut,       // a held segment went on without its incomplete field's bytes
    WindowOverflow,   // more unacknowledged bytes than the follower keeps
    ResendPatched,
    ResetIgnored,  // an RST not at the next expected sequence number
    FinIgnored,    // a FIN not in order
    SynIgnored,    // a SYN on a connection that carries data
    BadChecksum,
    InconsistentResend,  // bytes sent again with other content
    ResendBeyondLog,     // bytes before the stream's start
    HoldOverflow,
    HoldTimeout,
};

class EventSink {
public:
    virtual ~EventSink() = default;
    virtual void stream_event(Event event) = 0;
};

struct HoldLimits {
    std::size_t segments_per_direction = 8;
    std::size_t bytes_per_direction = 16384;
    // Per sending host and in all: held segments stay queued in the kernel,
    // so together they must stay well below the queue length.
    std::size_t segments_per_host = 64;
    std::size_t segments_total = 512;
    std::chrono::milliseconds timeout{2000};
    // A segment held only for an incomplete field goes on after this, cut
    // before the field, so a sender that waits for an ACK (Nagle) sends the rest.
    std::chrono::milliseconds field_wait{200};
};

struct Result {
    enum class Action : std::uint8_t { Forward, Drop, Held };
    Action action = Action::Forward;
    bool modified = false;                  // Forward: bytes of the segment were rewritten
    Event drop_event = Event::BadChecksum;  // Drop: why
    bool reset_requested = false;           // the consumer refused the bytes: end the connection
    bool reset_by_peer = false;             // an RST at exactly the next expected sequence number
    bool strip_payload = false;             // Forward without the payload: a resend of long-acknowledged bytes
    bool finished = false;                  // an in-order FIN
    // The stream position the receiver of this segment expects next, for an
    // RST the caller may make of it.
    std::uint32_t receiver_expects = 0;
};

class Follower {
public:
    Follower(HoldLimits limits, EventSink& events);
    void set_limits(const HoldLimits& limits) noexcept { limits_ = limits; }
    [[nodiscard]] const HoldLimits& limits() const noexcept { return limits_; }
    // Without a sink nothing is held: such segments are dropped (TCP resends).
    void set_deferred_verdicts(DeferredVerdicts* sink) noexcept { deferred_ = sink; }

    // `flow_id` names the flow for its held segments; `side` is 0 or 1.
    Result segment(Flow& flow, std::uint64_t flow_id, std::size_t side, Segment& segment, StreamConsumer& consumer,
                   Instant now);
    // Starts a direction at `sequence` (a segment seen that starts a message
    // of the consumer's, on a connection whose opening went by unseen).
    static void pick_up(Flow& flow, std::size_t side, std::uint32_t sequence) noexcept;
    // Drops the held segments of a flow (it ended).
    void forget(std::uint64_t flow_id);
    // Held segments past their time: cut (field wait) or dropped (timeout).
    std::size_t expire(Instant now);
    // Flow directions (flow id * 2 + side) whose held segment starts at a
    // field and has waited its field wait: the caller offers each to
    // take_field_start() below, with its consumer.
    [[nodiscard]] const std::vector<std::uint64_t>& waiting_at_a_field() const noexcept { return at_field_; }
    // Take::Reset: the consumer wants the connection ended; its held
    // segments are dropped already.
    Take take_field_start(Flow& flow, std::uint64_t flow_id, std::size_t side, StreamConsumer& consumer);
    [[nodiscard]] std::size_t held_segments() const noexcept { return held_total_; }

private:
    struct Held {
        std::uint32_t packet_id = 0;
        std::uint32_t sequence = 0;
        std::uint32_t end = 0;
        std::uint32_t sender = 0;
        Instant since{};
        bool modified = false;
        // Bytes from the start of the payload that may go on alone (those
        // before an incomplete field); 0 when held for a gap or nothing precedes.
        std::size_t cut_at = 0;
        bool field_offered = false;  // offered to take_field_start() once
        bool fin = false;
        std::size_t tcp_offset = 0;
        std::size_t payload_offset = 0;
        std::vector<std::uint8_t> packet;
    };
    struct Piece {  // a segment the stream can read from: the current one or a held one
        std::uint32_t sequence = 0;
        std::uint32_t end = 0;
        std::span<std::uint8_t> tcp;  // TCP header and payload
        std::size_t payload_offset = 0;
        bool* modified = nullptr;
    };
    class Writer;

    Result take_payload(Flow& flow, std::uint64_t flow_id, std::size_t side, Segment& segment, StreamConsumer& consumer,
                        Instant now);
    // The held pieces of a direction from its stream position on, copied in
    // order into scratch_; false when two copies disagree.
    bool gather(DirectionState& d, std::uint64_t key, std::uint32_t& run_end);
    // True when a released segment carried the FIN that ends the stream now.
    bool release_taken(DirectionState& d, std::uint64_t key);
    static void acknowledged(DirectionState& d, std::uint32_t ack) noexcept;
    enum class Resend : std::uint8_t { Same, Different, Forgotten };
    // A resend against the first copy.
    Resend patch_resend(DirectionState& d, Piece& piece);
    bool hold(std::uint64_t key, const Segment& segment, std::uint32_t end, bool modified, std::size_t cut_at,
              Instant now);
    void release(Held& h, bool accept, Event dropped_as = Event::HeldDropped);
    void release_all(std::uint64_t key, bool accept);
    static void cut(Held& h);
    void count(Event e) { events_.stream_event(e); }

    // Unacknowledged bytes kept per direction; beyond, a segment is dropped
    // (TCP resends it once ACKs make room). A whole TCP window unscaled.
    static constexpr std::size_t kMaxUnacknowledged = 65535;
    // Acknowledged bytes kept for resends that come late.
    static constexpr std::size_t kHistory = 16384;

    HoldLimits limits_;
    EventSink& events_;
    DeferredVerdicts* deferred_ = nullptr;
    // Held segments per flow direction (flow id * 2 + side).
    std::unordered_map<std::uint64_t, std::vector<Held>> held_;
    std::unordered_map<std::uint32_t, std::size_t> held_per_host_;
    std::size_t held_total_ = 0;
    // Reused on every segment with payload, so the steady state allocates nothing.
    std::vector<Piece> pieces_;
    std::vector<std::uint8_t> scratch_;
    std::vector<std::uint8_t> filled_;
    std::vector<std::uint64_t> at_field_;
};

}  // namespace stream
