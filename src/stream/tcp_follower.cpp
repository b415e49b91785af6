#include "stream/tcp_follower.hpp"

#include <algorithm>
#include <cstring>

#include "pptp/bytes.hpp"
#include "pptp/inet.hpp"

namespace stream {
namespace {

// Signed distance a - b in sequence space (RFC 793 arithmetic).
std::int32_t seq_diff(std::uint32_t a, std::uint32_t b) noexcept {
    return static_cast<std::int32_t>(a - b);
}

bool contains(std::uint32_t from, std::uint32_t end, std::uint32_t sequence) noexcept {
    return seq_diff(sequence, from) >= 0 && seq_diff(sequence, end) < 0;
}

std::uint8_t byte_of(std::uint16_t value, std::size_t index) noexcept {
    return static_cast<std::uint8_t>(index == 0 ? value >> 8U : value & 0xFFU);
}

}  // namespace

void Follower::acknowledged(DirectionState& d, std::uint32_t ack) noexcept {
    Unacknowledged& sent = d.sent;
    if (!d.synchronized || seq_diff(ack, sent.acknowledged) <= 0 || seq_diff(ack, d.next_sequence) > 0) {
        return;
    }
    sent.acknowledged = ack;
    // Forget acknowledged bytes beyond the history, a chunk at a time.
    const auto acked = static_cast<std::size_t>(seq_diff(ack, sent.base));
    if (acked <= 2 * kHistory) {
        return;
    }
    const std::size_t done = acked - kHistory;
    sent.bytes.erase(sent.bytes.begin(), sent.bytes.begin() + static_cast<std::ptrdiff_t>(done));
    sent.base += static_cast<std::uint32_t>(done);
    const std::uint32_t base = sent.base;
    auto first_kept =
        std::find_if(sent.field_bytes.begin(), sent.field_bytes.end(),
                     [base](const Unacknowledged::FieldByte& f) { return seq_diff(f.sequence, base) >= 0; });
    sent.field_bytes.erase(sent.field_bytes.begin(), first_kept);
}

// Writes the consumer's field decisions into the log and into every piece
// that carries the field's bytes.
class Follower::Writer final : public FieldWriter {
public:
    Writer(Follower& follower, DirectionState& direction, std::span<const std::uint8_t> bytes, std::uint32_t start)
        : follower_(follower), direction_(direction), bytes_(bytes), start_(start) {}

    void field(std::size_t offset, std::uint16_t value) override {
        field_byte(offset, byte_of(value, 0));
        field_byte(offset + 1, byte_of(value, 1));
    }

    void field_byte(std::size_t offset, std::uint8_t to) override {
        const std::uint8_t from = bytes_[offset];
        const auto at = start_ + static_cast<std::uint32_t>(offset);
        direction_.sent.field_bytes.push_back(Unacknowledged::FieldByte{at, to});
        if (from == to) {
            return;
        }
        for (Piece& piece : follower_.pieces_) {
            if (!contains(piece.sequence, piece.end, at)) {
                continue;
            }
            const std::size_t index = piece.payload_offset + static_cast<std::size_t>(seq_diff(at, piece.sequence));
            if (piece.tcp[index] == from) {
                pptp::patch_with_checksum(piece.tcp, index, std::span<const std::uint8_t>(&to, 1),
                                          pptp::kTcpChecksumOffset);
                *piece.modified = true;
            }
        }
    }

private:
    Follower& follower_;
    DirectionState& direction_;
    std::span<const std::uint8_t> bytes_;
    std::uint32_t start_;
};

Follower::Follower(HoldLimits limits, EventSink& events) : limits_(limits), events_(events) {
    pieces_.reserve(limits_.segments_per_direction + 1);
    scratch_.reserve(limits_.bytes_per_direction + 0xFFFF);
    filled_.reserve(limits_.bytes_per_direction + 0xFFFF);
}

void Follower::pick_up(Flow& flow, std::size_t side, std::uint32_t sequence) noexcept {
    DirectionState& d = flow.sides[side];
    d = DirectionState{};
    d.synchronized = true;
    d.stream_start = d.next_sequence = d.sent.base = d.sent.acknowledged = sequence;
}

Result Follower::segment(Flow& flow, std::uint64_t flow_id, std::size_t side, Segment& segment,
                         StreamConsumer& consumer, Instant now) {
    Result result;
    DirectionState& d = flow.sides[side];
    result.receiver_expects = d.synchronized ? d.next_sequence : segment.sequence;
    // The receiver's stack discards a segment with a bad checksum; so do we,
    // before any of it moves our view of the stream.
    if (!pptp::tcp_checksum_valid_ipv4(segment.source, segment.destination,
                                       std::span<const std::uint8_t>(segment.packet).subspan(segment.tcp_offset))) {
        count(Event::BadChecksum);
        result.action = Result::Action::Drop;
        result.drop_event = Event::BadChecksum;
        return result;
    }
    if (segment.ack) {
        d.last_ack = segment.acknowledgement;
        d.ack_known = true;
        acknowledged(flow.sides[1 - side], segment.acknowledgement);
    }
    if (segment.syn) {
        // Only the first SYN (or its resend) opens a direction. Another one,
        // or any once data has flowed, is no new stream: the endpoint answers
        // it with a challenge ACK and keeps its connection.
        if (d.synchronized && d.isn_known && segment.sequence + 1 == d.stream_start) {
            return result;
        }
        if (d.synchronized || flow.data_seen()) {
            count(Event::SynIgnored);
            return result;
        }
        pick_up(flow, side, segment.sequence + 1);
        d.isn_known = true;
        if (segment.ack) {
            d.last_ack = segment.acknowledgement;
            d.ack_known = true;
        }
        return result;
    }
    if (segment.rst) {
        // RFC 5961: only an RST at exactly the next expected sequence number
        // resets; anything else draws a challenge ACK from the endpoint.
        if (d.synchronized && segment.sequence == d.next_sequence) {
            result.reset_by_peer = true;
        } else {
            count(Event::ResetIgnored);
        }
        return result;
    }
    if (segment.payload_size() > 0 && d.synchronized) {
        result = take_payload(flow, flow_id, side, segment, consumer, now);
        if (result.action != Result::Action::Forward || result.reset_requested) {
            return result;
        }
    }
    if (segment.fin) {
        const auto fin_sequence = segment.sequence + static_cast<std::uint32_t>(segment.payload_size());
        if (d.synchronized && fin_sequence == d.next_sequence) {
            result.finished = true;
        } else {
            count(Event::FinIgnored);
        }
    }
    return result;
}

Follower::Resend Follower::patch_resend(DirectionState& d, Piece& piece) {
    const Unacknowledged& sent = d.sent;
    if (seq_diff(piece.end, sent.base) <= 0) {
        return Resend::Forgotten;  // acknowledged long ago: its receiver has it
    }
    if (seq_diff(piece.sequence, sent.base) < 0) {
        return Resend::Different;  // partly beyond what can be checked
    }
    const std::uint32_t to = seq_diff(piece.end, d.next_sequence) < 0 ? piece.end : d.next_sequence;
    for (std::uint32_t at = piece.sequence; seq_diff(to, at) > 0; ++at) {
        const std::size_t index = piece.payload_offset + static_cast<std::size_t>(seq_diff(at, piece.sequence));
        if (piece.tcp[index] != sent.bytes[static_cast<std::size_t>(seq_diff(at, sent.base))]) {
            return Resend::Different;
        }
    }
    for (const auto& field : sent.field_bytes) {
        if (!contains(piece.sequence, to, field.sequence)) {
            continue;
        }
        const std::size_t index =
            piece.payload_offset + static_cast<std::size_t>(seq_diff(field.sequence, piece.sequence));
        if (piece.tcp[index] != field.to) {
            pptp::patch_with_checksum(piece.tcp, index, std::span<const std::uint8_t>(&field.to, 1),
                                      pptp::kTcpChecksumOffset);
            *piece.modified = true;
        }
    }
    return Resend::Same;
}

bool Follower::gather(DirectionState& d, std::uint64_t key, std::uint32_t& run_end) {
    if (auto held = held_.find(key); held != held_.end()) {
        for (Held& h : held->second) {
            pieces_.push_back(Piece{h.sequence, h.end, std::span<std::uint8_t>(h.packet).subspan(h.tcp_offset),
                                    h.payload_offset - h.tcp_offset, &h.modified});
        }
    }
    run_end = d.next_sequence;
    for (bool grew = true; grew;) {
        grew = false;
        for (const Piece& piece : pieces_) {
            if (seq_diff(piece.sequence, run_end) <= 0 && seq_diff(piece.end, run_end) > 0) {
                run_end = piece.end;
                grew = true;
            }
        }
    }
    const auto run_length = static_cast<std::size_t>(seq_diff(run_end, d.next_sequence));
    scratch_.assign(run_length, 0);
    filled_.assign(run_length, 0);
    for (const Piece& piece : pieces_) {
        const std::uint32_t from = seq_diff(piece.sequence, d.next_sequence) > 0 ? piece.sequence : d.next_sequence;
        const std::uint32_t to = seq_diff(piece.end, run_end) < 0 ? piece.end : run_end;
        for (std::uint32_t at = from; seq_diff(to, at) > 0; ++at) {
            const auto index = static_cast<std::size_t>(seq_diff(at, d.next_sequence));
            const std::uint8_t value =
                piece.tcp[piece.payload_offset + static_cast<std::size_t>(seq_diff(at, piece.sequence))];
            if (filled_[index] != 0 && scratch_[index] != value) {
                return false;  // two copies of the same bytes disagree
            }
            scratch_[index] = value;
            filled_[index] = 1;
        }
    }
    return true;
}

bool Follower::release_taken(DirectionState& d, std::uint64_t key) {
    // Release what the stream has now taken whole; what is left may go on
    // cut at the stream position once its field wait is over.
    auto held = held_.find(key);
    if (held == held_.end()) {
        return false;
    }
    bool fin = false;
    auto& list = held->second;
    for (auto h = list.begin(); h != list.end();) {
        if (seq_diff(h->end, d.next_sequence) <= 0) {
            fin = fin || (h->fin && h->end == d.next_sequence);
            release(*h, true);
            h = list.erase(h);
        } else {
            const std::int32_t before = seq_diff(d.next_sequence, h->sequence);
            h->cut_at = before > 0 ? static_cast<std::size_t>(before) : 0;
            ++h;
        }
    }
    if (list.empty()) {
        held_.erase(held);
    }
    return fin;
}

Result Follower::take_payload(Flow& flow, std::uint64_t flow_id, std::size_t side, Segment& segment,
                              StreamConsumer& consumer, Instant now) {
    DirectionState& d = flow.sides[side];
    const std::uint64_t key = flow_id * 2 + side;
    Result result;
    result.receiver_expects = d.next_sequence;
    auto drop = [&result](Event why) {
        result.action = Result::Action::Drop;
        result.drop_event = why;
        return result;
    };
    bool current_modified = false;
    const auto size = static_cast<std::uint32_t>(segment.payload_size());
    Piece current{segment.sequence, segment.sequence + size, segment.packet.subspan(segment.tcp_offset),
                  segment.payload_offset - segment.tcp_offset, &current_modified};
    if (seq_diff(segment.sequence, d.next_sequence) < 0) {
        // A resend: what the receiver has not acknowledged must be what went
        // first, and leaves as then.
        if (d.isn_known && seq_diff(segment.sequence, d.stream_start) < 0) {
            count(Event::ResendBeyondLog);  // before the stream began
            return drop(Event::ResendBeyondLog);
        }
        const Resend resend = patch_resend(d, current);
        if (resend == Resend::Different) {
            count(Event::InconsistentResend);
            return drop(Event::InconsistentResend);
        }
        if (resend == Resend::Forgotten) {
            // Nothing of it can be checked, and its receiver has it all: it
            // goes on without its bytes (and draws the ACK it asks for).
            result.strip_payload = true;
            return result;
        }
        if (current_modified) {
            count(Event::ResendPatched);
        }
    }
    if (seq_diff(current.end, d.next_sequence) <= 0) {
        result.modified = current_modified;
        return result;  // nothing new
    }

    // The bytes readable from the stream position on: this segment and the
    // held ones that continue it.
    pieces_.clear();
    pieces_.push_back(current);
    std::uint32_t run_end = 0;
    if (!gather(d, key, run_end)) {
        release_all(key, false);
        count(Event::InconsistentResend);
        return drop(Event::InconsistentResend);
    }
    if (seq_diff(run_end, current.end) < 0) {
        // A gap before this segment: keep it until the gap fills.
        if (hold(key, segment, current.end, current_modified, 0, now)) {
            result.action = Result::Action::Held;
            return result;
        }
        count(Event::HoldOverflow);
        return drop(Event::HoldOverflow);
    }
    const std::span<const std::uint8_t> bytes(scratch_);
    if (static_cast<std::size_t>(seq_diff(d.next_sequence, d.sent.acknowledged)) + bytes.size() > kMaxUnacknowledged) {
        count(Event::WindowOverflow);
        return drop(Event::WindowOverflow);
    }
    const std::size_t take = consumer.takeable(side, bytes);
    const std::uint32_t start = d.next_sequence;
    Writer writer(*this, d, bytes, start);
    if (consumer.take(side, bytes.first(take), writer) == Take::Reset) {
        release_all(key, false);
        result.reset_requested = true;
        result.receiver_expects = start;
        return result;
    }
    d.sent.bytes.insert(d.sent.bytes.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(take));
    d.next_sequence = start + static_cast<std::uint32_t>(take);
    d.data_taken = d.data_taken || take > 0;
    result.finished = release_taken(d, key);
    if (seq_diff(current.end, d.next_sequence) <= 0) {
        result.modified = current_modified;
        return result;
    }
    // Part of this segment waits for bytes still to come.
    const std::int32_t before = seq_diff(d.next_sequence, segment.sequence);
    if (hold(key, segment, current.end, current_modified, before > 0 ? static_cast<std::size_t>(before) : 0, now)) {
        result.action = Result::Action::Held;
        return result;
    }
    count(Event::HoldOverflow);
    return drop(Event::HoldOverflow);
}

bool Follower::hold(std::uint64_t key, const Segment& segment, std::uint32_t end, bool modified, std::size_t cut_at,
                    Instant now) {
    if (deferred_ == nullptr) {
        return false;
    }
    auto& list = held_[key];
    // A resend of a segment held already replaces it.
    for (auto it = list.begin(); it != list.end(); ++it) {
        if (it->sequence == segment.sequence && it->end == end) {
            release(*it, false, Event::SegmentReplaced);
            list.erase(it);
            break;
        }
    }
    std::size_t bytes = segment.packet.size();
    for (const auto& h : list) {
        bytes += h.packet.size();
    }
    const std::uint32_t owner = segment.owner != 0 ? segment.owner : segment.source;
    const auto host = held_per_host_.find(owner);
    const std::size_t of_host = host == held_per_host_.end() ? 0 : host->second;
    if (held_total_ >= limits_.segments_total || of_host >= limits_.segments_per_host ||
        list.size() >= limits_.segments_per_direction || bytes > limits_.bytes_per_direction) {
        if (list.empty()) {
            held_.erase(key);
        }
        return false;
    }
    Held h;
    h.packet_id = segment.packet_id;
    h.sequence = segment.sequence;
    h.end = end;
    h.sender = owner;
    h.fin = segment.fin;
    h.since = now;
    h.modified = modified;
    h.cut_at = cut_at;
    h.tcp_offset = segment.tcp_offset;
    h.payload_offset = segment.payload_offset;
    h.packet.assign(segment.packet.begin(), segment.packet.end());
    list.push_back(std::move(h));
    ++held_total_;
    ++held_per_host_[owner];
    count(Event::SegmentHeld);
    return true;
}

void Follower::release(Held& h, bool accept, Event dropped_as) {
    deferred_->release(
        h.packet_id, accept,
        accept && h.modified ? std::span<const std::uint8_t>(h.packet) : std::span<const std::uint8_t>());
    --held_total_;
    if (auto host = held_per_host_.find(h.sender); host != held_per_host_.end() && --host->second == 0) {
        held_per_host_.erase(host);
    }
    count(accept ? Event::SegmentReleased : dropped_as);
}

void Follower::release_all(std::uint64_t key, bool accept) {
    auto it = held_.find(key);
    if (it == held_.end()) {
        return;
    }
    for (Held& h : it->second) {
        release(h, accept);
    }
    held_.erase(it);
}

void Follower::forget(std::uint64_t flow_id) {
    release_all(flow_id * 2, false);
    release_all(flow_id * 2 + 1, false);
}

void Follower::cut(Held& h) {
    // Only the bytes before the incomplete field go on; TCP resends the rest.
    const std::size_t length = h.payload_offset + h.cut_at;
    h.packet.resize(length);
    pptp::store_be16(h.packet.data() + 2, static_cast<std::uint16_t>(length));
    pptp::store_be16(h.packet.data() + pptp::kIpv4ChecksumOffset, 0);
    pptp::store_be16(h.packet.data() + pptp::kIpv4ChecksumOffset,
                     pptp::ipv4_header_checksum(std::span<const std::uint8_t>(h.packet).first(h.tcp_offset)));
    auto tcp = std::span<std::uint8_t>(h.packet).subspan(h.tcp_offset);
    tcp[13] = static_cast<std::uint8_t>(tcp[13] & ~0x01U);  // a FIN would now stand at the wrong place
    pptp::store_be16(tcp.data() + pptp::kTcpChecksumOffset,
                     pptp::tcp_checksum_ipv4(pptp::load_be32(h.packet.data() + pptp::kIpv4SourceOffset),
                                             pptp::load_be32(h.packet.data() + pptp::kIpv4DestinationOffset), tcp));
    h.modified = true;
}

std::size_t Follower::expire(Instant now) {
    std::size_t expired = 0;
    at_field_.clear();
    for (auto it = held_.begin(); it != held_.end();) {
        auto& list = it->second;
        for (auto h = list.begin(); h != list.end();) {
            if (now - h->since >= limits_.timeout) {
                // The rest never came: drop it and let TCP resend it whole.
                release(*h, false);
                count(Event::HoldTimeout);
                ++expired;
                h = list.erase(h);
            } else if (h->cut_at > 0 && now - h->since >= limits_.field_wait) {
                cut(*h);
                release(*h, true);
                count(Event::SegmentCut);
                h = list.erase(h);
            } else if (now - h->since >= limits_.field_wait && !h->field_offered) {
                // Nothing before it to cut: it may start at a field.
                h->field_offered = true;
                at_field_.push_back(it->first);
                ++h;
            } else {
                ++h;
            }
        }
        it = list.empty() ? held_.erase(it) : std::next(it);
    }
    return expired;
}

Take Follower::take_field_start(Flow& flow, std::uint64_t flow_id, std::size_t side, StreamConsumer& consumer) {
    DirectionState& d = flow.sides[side];
    const std::uint64_t key = flow_id * 2 + side;
    pieces_.clear();
    std::uint32_t run_end = 0;
    if (!d.synchronized || !gather(d, key, run_end) || scratch_.empty()) {
        return Take::Ok;
    }
    const std::span<const std::uint8_t> bytes(scratch_);
    Writer writer(*this, d, bytes, d.next_sequence);
    std::size_t taken = 0;
    if (consumer.take_field_start(side, bytes, writer, taken) == Take::Reset) {
        forget(flow_id);
        return Take::Reset;
    }
    if (taken == 0) {
        return Take::Ok;
    }
    d.sent.bytes.insert(d.sent.bytes.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(taken));
    d.next_sequence += static_cast<std::uint32_t>(taken);
    d.data_taken = true;
    release_taken(d, key);
    return Take::Ok;
}

}  // namespace stream
