#include "nat/packet_handler.hpp"

#include <algorithm>
#include <cstring>

#include "pptp/bytes.hpp"
#include "pptp/gre.hpp"
#include "pptp/inet.hpp"

namespace nat {
namespace {

using pptp::ControlType;

DropReason drop_reason_for(pptp::HeaderError e) noexcept {
    switch (e) {
        case pptp::HeaderError::BadLength: return DropReason::control_bad_length;
        case pptp::HeaderError::NotControl: return DropReason::control_not_control_message;
        case pptp::HeaderError::BadMagic: return DropReason::control_bad_magic_cookie;
        case pptp::HeaderError::UnknownType: return DropReason::control_unknown_message_type;
        case pptp::HeaderError::BadReserved: return DropReason::control_bad_reserved_field;
        case pptp::HeaderError::None: break;
    }
    return DropReason::none;
}

DropReason drop_reason_for(pptp::GreError e) noexcept {
    switch (e) {
        case pptp::GreError::Truncated: return DropReason::gre_truncated;
        case pptp::GreError::NotVersion1: return DropReason::gre_not_version_1;
        case pptp::GreError::NotPpp: return DropReason::gre_not_ppp;
        case pptp::GreError::ChecksumPresent: return DropReason::gre_checksum_present;
        case pptp::GreError::RoutingPresent: return DropReason::gre_routing_present;
        case pptp::GreError::KeyMissing: return DropReason::gre_key_missing;
        case pptp::GreError::BadFlags: return DropReason::gre_bad_flags;
        case pptp::GreError::BadPayloadLength: return DropReason::gre_bad_payload_length;
        case pptp::GreError::None: break;
    }
    return DropReason::none;
}

DropReason drop_reason_for(CallError e) noexcept {
    switch (e) {
        case CallError::CallLimit: return DropReason::call_limit;
        case CallError::CallIdSpaceExhausted: return DropReason::call_id_space_exhausted;
        case CallError::None: break;
    }
    return DropReason::none;
}

// Signed distance a - b in sequence space (RFC 793 arithmetic).
std::int32_t seq_diff(std::uint32_t a, std::uint32_t b) noexcept {
    return static_cast<std::int32_t>(a - b);
}

}  // namespace

PacketHandler::PacketHandler(CallTable& table, Counters& counters, DropObserver* observer, HandlerConfig config)
    : table_(table), counters_(counters), observer_(observer), config_(config) {
    segments_.reserve(config_.max_held_segments + 1);
    scratch_.reserve(config_.max_held_bytes + 0xFFFF);
}

Verdict PacketHandler::drop(DropReason reason, std::uint32_t source, std::uint32_t destination) {
    counters_.drop(reason);
    counters_.add(EventCounter::packets_dropped);
    if (observer_ != nullptr) {
        observer_->packet_dropped(reason, source, destination);
    }
    return Verdict{false, false, false, 0, reason};
}

Verdict PacketHandler::refuse_connection(std::uint32_t source, std::uint32_t destination) {
    counters_.add(EventCounter::control_connections_refused);
    return drop(DropReason::control_connection_limit, source, destination);
}

Verdict PacketHandler::handle(Direction direction, std::span<std::uint8_t> packet, std::uint32_t packet_id) {
    counters_.add(EventCounter::packets_seen);
    const pptp::Ipv4Parse ip = pptp::parse_ipv4(packet);
    if (ip.error != pptp::Ipv4Error::None) {
        return drop(DropReason::malformed_ipv4, 0, 0);
    }
    const pptp::Ipv4Header& h = ip.header;
    const bool ours = h.protocol == pptp::kIpProtoTcp || h.protocol == pptp::kIpProtoGre;
    if (direction == Direction::Transit || !ours) {
        counters_.add(EventCounter::transit_packets);
        counters_.add(EventCounter::packets_accepted);
        return Verdict{};
    }
    // Conntrack reassembles before our hooks; a fragment here cannot be
    // inspected as a whole, so it is never forwarded unchecked.
    if (h.is_fragment) {
        return drop(DropReason::ip_fragment, h.source, h.destination);
    }
    const auto l3 = packet.first(h.total_length);
    Verdict v = h.protocol == pptp::kIpProtoTcp
                    ? handle_control(direction, l3, h.header_length, h.source, h.destination, packet_id)
                    : handle_gre(direction, l3, h.header_length, h.source, h.destination);
    if (v.accept && !v.held) {
        counters_.add(EventCounter::packets_accepted);
        if (v.modified) {
            counters_.add(EventCounter::packets_rewritten);
        }
    }
    return v;
}

Verdict PacketHandler::handle_gre(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                                  std::uint32_t source, std::uint32_t destination) {
    const auto gre_bytes = packet.subspan(ip_header_length);
    const pptp::GreParse gre = pptp::parse_gre(gre_bytes);
    if (gre.error != pptp::GreError::None) {
        return drop(drop_reason_for(gre.error), source, destination);
    }
    const std::size_t l4_bytes = gre_bytes.size();
    auto ip_header = packet.first(ip_header_length);
    std::array<std::uint8_t, 4> address{};
    if (dir == Direction::Inbound) {
        counters_.add(EventCounter::gre_inbound);
        if (destination != table_.config().public_address) {
            return drop(DropReason::gre_not_to_public_address, source, destination);
        }
        Call* call = table_.find_inbound(source, gre.header.call_id);
        if (call == nullptr) {
            return drop(DropReason::gre_no_matching_call, source, destination);
        }
        // A call still waiting for its reply is fine: the server may send its
        // first GRE before its Outgoing-Call-Reply leaves (Nagle holds that
        // back behind an unacknowledged segment); it can only know the public
        // Call ID from our request.
        pptp::store_be32(address.data(), call->inside_address);
        pptp::patch_with_checksum(ip_header, pptp::kIpv4DestinationOffset, address, pptp::kIpv4ChecksumOffset);
        // PPTP GRE has no checksum (C=0), so the key is rewritten as is.
        pptp::store_be16(gre_bytes.data() + pptp::kGreCallIdOffset, call->inside_call_id);
        call->packets_in += 1;
        call->bytes_in += l4_bytes;
        call->last_activity = table_.now();
        return Verdict{true, true, false, 0, DropReason::none};
    }
    counters_.add(EventCounter::gre_outbound);
    Call* call = table_.find_outbound(source, destination, gre.header.call_id);
    if (call == nullptr) {
        return drop(DropReason::gre_no_matching_call, source, destination);
    }
    pptp::store_be32(address.data(), call->public_address);
    pptp::patch_with_checksum(ip_header, pptp::kIpv4SourceOffset, address, pptp::kIpv4ChecksumOffset);
    call->packets_out += 1;
    call->bytes_out += l4_bytes;
    call->last_activity = table_.now();
    return Verdict{true, true, false, 0, DropReason::none};
}

Verdict PacketHandler::handle_control(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                                      std::uint32_t source, std::uint32_t destination, std::uint32_t packet_id) {
    auto segment = packet.subspan(ip_header_length);
    const auto tcp = pptp::parse_tcp(segment);
    if (!tcp) {
        return drop(DropReason::malformed_tcp, source, destination);
    }
    const bool outbound = dir == Direction::Outbound;
    ConnectionKey key;
    key.inside_address = outbound ? source : destination;
    key.outside_address = outbound ? destination : source;
    key.inside_port = outbound ? tcp->source_port : tcp->destination_port;
    key.outside_port = outbound ? tcp->destination_port : tcp->source_port;
    if (!port_enabled(key.outside_port) && !port_enabled(key.inside_port)) {
        counters_.add(EventCounter::transit_packets);
        return Verdict{};
    }
    counters_.add(EventCounter::control_packets);
    const std::size_t payload_offset = tcp->header_length;
    const std::size_t payload_size = segment.size() - payload_offset;
    const auto index = static_cast<std::size_t>(dir);

    ControlConnection* conn = table_.find_connection(key);
    if (tcp->syn) {
        // A SYN from either side starts the stream of its direction; a bare
        // SYN (re)starts the whole connection.
        if (!tcp->ack || conn == nullptr) {
            conn = table_.create_connection(key);
            if (conn == nullptr) {
                return refuse_connection(source, destination);
            }
        }
        conn->streams[index] = StreamCursor{};
        conn->streams[index].synchronized = true;
        conn->streams[index].next_sequence = tcp->sequence + 1;
        conn->last_activity = table_.now();
        return Verdict{};
    }
    if (conn != nullptr && conn->state == ConnectionState::Refused) {
        return Verdict{};  // the server side was reset; let the peers find out
    }

    if (payload_size > 0) {
        // Picking up a stream we did not see open (agent restarted): only at a
        // segment that starts with a valid PPTP header, so framing is certain.
        const bool starts_message =
            payload_size >= pptp::kHeaderSize &&
            pptp::check_header(segment.subspan(payload_offset)).error == pptp::HeaderError::None;
        if (conn == nullptr && starts_message && !tcp->rst) {
            conn = table_.create_connection(key);
            if (conn == nullptr) {
                return refuse_connection(source, destination);
            }
            conn->state = ConnectionState::Established;  // its start went by unseen
        }
        if (conn != nullptr && !conn->streams[index].synchronized && starts_message) {
            conn->streams[index] = StreamCursor{};
            conn->streams[index].synchronized = true;
            conn->streams[index].next_sequence = tcp->sequence;
        }
    }
    if (conn == nullptr) {
        return Verdict{};
    }
    conn->last_activity = table_.now();

    Verdict verdict;
    if (payload_size > 0 && conn->streams[index].synchronized) {
        verdict = consume_stream(*conn, dir, packet, ip_header_length, ip_header_length + payload_offset, tcp->sequence,
                                 packet_id);
        if (!verdict.accept) {
            return drop(verdict.reason, source, destination);
        }
        if (verdict.held || conn->state == ConnectionState::Refused) {
            return verdict;
        }
    }
    if (tcp->rst || tcp->fin) {
        table_.close_connection(*conn, tcp->rst ? TeardownReason::TcpReset : TeardownReason::TcpFin);
        for (std::uint64_t d = 0; d < 2; ++d) {
            release_held(conn->id * 2 + d, false);
        }
    }
    return verdict;
}

std::size_t PacketHandler::safe_length(const StreamCursor& cursor, std::span<const std::uint8_t> bytes) {
    // Walk message boundaries without side effects. Stop before a message's
    // Call ID region (bytes 12 to 14 or 16) when the bytes end inside it: a
    // field must be decided whole, so its first byte waits for its last.
    std::size_t offset = cursor.message_offset;
    std::array<std::uint8_t, pptp::kHeaderSize> header{};
    std::memcpy(header.data(), cursor.prefix.data(), std::min<std::size_t>(offset, pptp::kHeaderSize));
    std::size_t length = cursor.message_length;
    std::size_t i = 0;
    while (i < bytes.size()) {
        if (length == 0) {
            while (offset < pptp::kHeaderSize && i < bytes.size()) {
                header[offset++] = bytes[i++];
            }
            if (offset < pptp::kHeaderSize) {
                return bytes.size();  // ends inside bytes 0..11: nothing to decide there
            }
            const auto check = pptp::check_header(header);
            if (check.error != pptp::HeaderError::None) {
                return bytes.size();  // the real pass reports the bad header
            }
            length = check.header.length;
        }
        const std::size_t take = std::min(length - offset, bytes.size() - i);
        const std::size_t end = offset + take;
        if (end < length && end > pptp::kHeaderSize && offset <= pptp::kHeaderSize) {
            const auto spec = pptp::message_spec(pptp::load_be16(header.data() + 8));
            if (spec && end < pptp::call_id_region_end(*spec)) {
                return i + (pptp::kHeaderSize - offset);
            }
        }
        i += take;
        offset = end;
        if (offset == length) {
            offset = 0;
            length = 0;
        }
    }
    return bytes.size();
}

void PacketHandler::patch_stream_byte(std::uint32_t sequence, std::uint8_t original, std::uint8_t value) {
    for (SegmentRef& seg : segments_) {
        const std::int32_t at = seq_diff(sequence, seg.sequence);
        if (at < 0 || seq_diff(sequence, seg.end) >= 0) {
            continue;
        }
        const std::size_t offset = seg.payload_offset + static_cast<std::size_t>(at);
        if (seg.tcp[offset] == original) {
            pptp::patch_with_checksum(seg.tcp, offset, std::span<const std::uint8_t>(&value, 1),
                                      pptp::kTcpChecksumOffset);
            *seg.modified = true;
        }
    }
}

void PacketHandler::patch_from_log(const StreamCursor& cursor, SegmentRef& segment) {
    // Retransmitted bytes get exactly the rewrite they got the first time.
    for (std::size_t n = 0; n < cursor.rewrite_log_used; ++n) {
        const std::uint32_t sequence = cursor.rewritten_sequence[n];
        const std::int32_t at = seq_diff(sequence, segment.sequence);
        if (at < 0 || seq_diff(sequence, segment.end) >= 0 || seq_diff(sequence, cursor.next_sequence) >= 0) {
            continue;
        }
        const std::size_t offset = segment.payload_offset + static_cast<std::size_t>(at);
        if (segment.tcp[offset] == cursor.rewritten_from[n]) {
            const std::uint8_t value = cursor.rewritten_to[n];
            pptp::patch_with_checksum(segment.tcp, offset, std::span<const std::uint8_t>(&value, 1),
                                      pptp::kTcpChecksumOffset);
            *segment.modified = true;
            counters_.add(EventCounter::control_retransmits_patched);
        }
    }
}

bool PacketHandler::hold(std::uint64_t key, std::span<const std::uint8_t> packet, std::size_t tcp_offset,
                         std::size_t payload_offset, std::uint32_t sequence, std::uint32_t end, std::uint32_t packet_id,
                         bool modified) {
    if (deferred_ == nullptr || held_total_ >= config_.max_held_total) {
        return false;
    }
    auto& list = held_[key];
    // A resend of a segment we hold replaces it.
    for (auto it = list.begin(); it != list.end(); ++it) {
        if (it->sequence == sequence && it->end == end) {
            deferred_->release(it->packet_id, false, {});
            list.erase(it);
            --held_total_;
            break;
        }
    }
    std::size_t bytes = packet.size();
    for (const auto& h : list) {
        bytes += h.packet.size();
    }
    if (list.size() >= config_.max_held_segments || bytes > config_.max_held_bytes) {
        if (list.empty()) {
            held_.erase(key);
        }
        return false;
    }
    HeldSegment h;
    h.packet_id = packet_id;
    h.sequence = sequence;
    h.end = end;
    h.since = table_.now();
    h.modified = modified;
    h.tcp_offset = tcp_offset;
    h.payload_offset = payload_offset;
    h.packet.assign(packet.begin(), packet.end());
    list.push_back(std::move(h));
    ++held_total_;
    counters_.add(EventCounter::control_segments_held);
    return true;
}

void PacketHandler::release_segment(const HeldSegment& h, bool accept) {
    deferred_->release(
        h.packet_id, accept,
        accept && h.modified ? std::span<const std::uint8_t>(h.packet) : std::span<const std::uint8_t>());
    --held_total_;
    counters_.add(accept ? EventCounter::control_segments_released : EventCounter::packets_dropped);
}

void PacketHandler::release_held(std::uint64_t key, bool accept_all) {
    auto it = held_.find(key);
    if (it == held_.end()) {
        return;
    }
    for (const auto& h : it->second) {
        release_segment(h, accept_all);
    }
    held_.erase(it);
}

std::size_t PacketHandler::expire_held() {
    const Instant now = table_.now();
    std::size_t dropped = 0;
    for (auto it = held_.begin(); it != held_.end();) {
        auto& list = it->second;
        for (auto h = list.begin(); h != list.end();) {
            if (now - h->since >= config_.hold_timeout) {
                // The rest never came: drop it and let TCP resend it whole.
                release_segment(*h, false);
                counters_.drop(DropReason::control_hold_timeout);
                ++dropped;
                h = list.erase(h);
            } else {
                ++h;
            }
        }
        it = list.empty() ? held_.erase(it) : std::next(it);
    }
    return dropped;
}

void PacketHandler::refuse(std::span<std::uint8_t> packet, std::size_t tcp_offset, Verdict& verdict) {
    // The segment goes on as a bare RST to its receiver, which tears down the
    // control connection there; the sender's next resend then draws a RST
    // back. Sequence and ack numbers stay those of the segment.
    const std::size_t tcp_header = static_cast<std::size_t>(packet[tcp_offset + 12] >> 4U) * 4U;
    const std::size_t length = tcp_offset + tcp_header;
    pptp::store_be16(packet.data() + 2, static_cast<std::uint16_t>(length));
    pptp::store_be16(packet.data() + pptp::kIpv4ChecksumOffset, 0);
    pptp::store_be16(packet.data() + pptp::kIpv4ChecksumOffset, pptp::ipv4_header_checksum(packet.first(tcp_offset)));
    auto tcp = packet.subspan(tcp_offset, tcp_header);
    tcp[13] = 0x14;  // RST + ACK
    pptp::store_be16(tcp.data() + pptp::kTcpChecksumOffset,
                     pptp::tcp_checksum_ipv4(pptp::load_be32(packet.data() + pptp::kIpv4SourceOffset),
                                             pptp::load_be32(packet.data() + pptp::kIpv4DestinationOffset), tcp));
    verdict = Verdict{true, true, false, length, DropReason::none};
}

Verdict PacketHandler::consume_stream(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet,
                                      std::size_t tcp_offset, std::size_t payload_offset, std::uint32_t sequence,
                                      std::uint32_t packet_id) {
    StreamCursor& cursor = conn.streams[static_cast<std::size_t>(dir)];
    const std::uint64_t key = conn.id * 2 + static_cast<std::uint64_t>(dir);
    bool current_modified = false;
    const auto payload_size = static_cast<std::uint32_t>(packet.size() - payload_offset);
    SegmentRef current{sequence, sequence + payload_size, packet.subspan(tcp_offset), payload_offset - tcp_offset,
                       &current_modified};
    patch_from_log(cursor, current);
    if (seq_diff(current.end, cursor.next_sequence) <= 0) {
        return Verdict{true, current_modified, false, 0, DropReason::none};  // nothing new
    }

    // The bytes we can read from the stream position on: this segment and
    // any held ones that continue it.
    segments_.clear();
    segments_.push_back(current);
    auto held = held_.find(key);
    if (held != held_.end()) {
        for (HeldSegment& h : held->second) {
            segments_.push_back(SegmentRef{h.sequence, h.end, std::span<std::uint8_t>(h.packet).subspan(h.tcp_offset),
                                           h.payload_offset - h.tcp_offset, &h.modified});
        }
    }
    std::uint32_t run_end = cursor.next_sequence;
    for (bool grew = true; grew;) {
        grew = false;
        for (const SegmentRef& seg : segments_) {
            if (seq_diff(seg.sequence, run_end) <= 0 && seq_diff(seg.end, run_end) > 0) {
                run_end = seg.end;
                grew = true;
            }
        }
    }
    if (seq_diff(run_end, current.end) < 0) {
        // A gap before this segment: keep it until the gap fills.
        if (hold(key, packet, tcp_offset, payload_offset, sequence, current.end, packet_id, current_modified)) {
            return Verdict{true, false, true, 0, DropReason::none};
        }
        return Verdict{false, false, false, 0, DropReason::control_hold_overflow};
    }
    const auto run_length = static_cast<std::size_t>(seq_diff(run_end, cursor.next_sequence));
    scratch_.resize(run_length);
    for (const SegmentRef& seg : segments_) {
        const std::uint32_t from =
            seq_diff(seg.sequence, cursor.next_sequence) > 0 ? seg.sequence : cursor.next_sequence;
        const std::uint32_t to = seq_diff(seg.end, run_end) < 0 ? seg.end : run_end;
        if (seq_diff(to, from) <= 0) {
            continue;
        }
        std::memcpy(scratch_.data() + seq_diff(from, cursor.next_sequence),
                    seg.tcp.data() + seg.payload_offset + seq_diff(from, seg.sequence),
                    static_cast<std::size_t>(seq_diff(to, from)));
    }
    const std::size_t take = safe_length(cursor, scratch_);

    const StreamCursor saved = cursor;
    const Outcome outcome =
        take_bytes(conn, dir, std::span<const std::uint8_t>(scratch_).first(take), cursor.next_sequence);
    if (outcome.refuse) {
        release_held(key, false);
        Verdict v;
        refuse(packet, tcp_offset, v);
        conn.state = ConnectionState::Refused;
        return v;
    }
    if (outcome.violation != DropReason::none && config_.on_violation == ViolationPolicy::Drop) {
        cursor = saved;
        release_held(key, false);
        return Verdict{false, false, false, 0, outcome.violation};
    }
    if (!cursor.synchronized) {
        // Framing lost (a bad header, passed on by policy): stop following
        // this direction until a segment starts with a valid header.
        release_held(key, true);
        return Verdict{true, current_modified, false, 0, DropReason::none};
    }

    // Release what the stream has now fully taken.
    held = held_.find(key);
    if (held != held_.end()) {
        auto& list = held->second;
        for (auto h = list.begin(); h != list.end();) {
            if (seq_diff(h->end, cursor.next_sequence) <= 0) {
                release_segment(*h, true);
                h = list.erase(h);
            } else {
                ++h;
            }
        }
        if (list.empty()) {
            held_.erase(held);
        }
    }
    if (seq_diff(current.end, cursor.next_sequence) <= 0) {
        return Verdict{true, current_modified, false, 0, DropReason::none};
    }
    // Part of this segment waits for bytes still to come.
    if (hold(key, packet, tcp_offset, payload_offset, sequence, current.end, packet_id, current_modified)) {
        return Verdict{true, false, true, 0, DropReason::none};
    }
    return Verdict{false, false, false, 0, DropReason::control_hold_overflow};
}

PacketHandler::Outcome PacketHandler::take_bytes(ControlConnection& conn, Direction dir,
                                                 std::span<const std::uint8_t> bytes, std::uint32_t first_sequence) {
    StreamCursor& cursor = conn.streams[static_cast<std::size_t>(dir)];
    Outcome result;
    // Notes a violation; under the drop policy it ends this pass.
    auto violated = [&](const Outcome& o, std::string_view what) {
        result.violation = o.violation;
        conn.violations += 1;
        if (config_.on_violation == ViolationPolicy::Accept) {
            counters_.drop(o.violation);  // passed on, but counted; a dropped segment is counted by its drop
        }
        if (observer_ != nullptr) {
            observer_->control_violation(conn, o.violation, what, config_.on_violation == ViolationPolicy::Drop);
        }
        cursor.message_ignored = true;
        return config_.on_violation == ViolationPolicy::Drop;
    };
    std::size_t i = 0;
    while (i < bytes.size()) {
        if (cursor.message_length == 0) {
            while (cursor.message_offset < pptp::kHeaderSize && i < bytes.size()) {
                cursor.prefix[cursor.message_offset++] = bytes[i++];
            }
            if (cursor.message_offset < pptp::kHeaderSize) {
                break;
            }
            const auto check =
                pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize));
            if (check.error != pptp::HeaderError::None) {
                Outcome bad;
                bad.violation = drop_reason_for(check.error);
                if (violated(bad, pptp::header_error_name(check.error))) {
                    return result;
                }
                cursor.synchronized = false;  // no framing to go by any more
                return result;
            }
            cursor.message_length = check.header.length;
            cursor.message_ignored = false;
            const Outcome start = check_message_start(conn, dir, check.header);
            if (start.violation != DropReason::none &&
                violated(start, pptp::control_type_name(check.header.control_type))) {
                return result;
            }
            continue;
        }
        const auto header =
            pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize)).header;
        const std::size_t start_offset = cursor.message_offset;
        const std::size_t take = std::min<std::size_t>(cursor.message_length - start_offset, bytes.size() - i);
        const std::size_t end_offset = start_offset + take;
        for (std::size_t o = start_offset; o < std::min(end_offset, StreamCursor::kPrefixSize); ++o) {
            cursor.prefix[o] = bytes[i + (o - start_offset)];
        }
        const std::size_t region_end = pptp::call_id_region_end(header.spec);
        if (!cursor.message_ignored && region_end != 0 && start_offset < region_end && end_offset >= region_end) {
            const Outcome decision = decide_call_ids(conn, dir, header, cursor.prefix);
            if (decision.refuse) {
                return decision;
            }
            if (decision.violation != DropReason::none) {
                if (violated(decision, header.spec.name)) {
                    return result;
                }
            } else {
                for (std::size_t r = 0; r < decision.rewrite_count; ++r) {
                    const Rewrite& rw = decision.rewrites[r];
                    // The region lies in these bytes: taking stops before a partial one.
                    const std::size_t at = i + (rw.offset - start_offset);
                    std::array<std::uint8_t, 2> value{};
                    pptp::store_be16(value.data(), rw.value);
                    for (std::size_t b = 0; b < 2; ++b) {
                        if (bytes[at + b] != value[b]) {
                            const std::uint32_t seq = first_sequence + static_cast<std::uint32_t>(at + b);
                            cursor.remember_rewrite(seq, bytes[at + b], value[b]);
                            patch_stream_byte(seq, bytes[at + b], value[b]);
                        }
                    }
                    counters_.add(EventCounter::control_call_ids_rewritten);
                }
            }
        }
        cursor.message_offset = static_cast<std::uint16_t>(end_offset);
        i += take;
        if (end_offset == cursor.message_length) {
            counters_.add(EventCounter::control_messages);
            conn.messages += 1;
            if (!cursor.message_ignored) {
                const Outcome done = message_complete(
                    conn, dir, header,
                    std::span<const std::uint8_t>(cursor.prefix)
                        .first(std::min<std::size_t>(cursor.message_length, StreamCursor::kPrefixSize)));
                if (done.violation != DropReason::none && violated(done, header.spec.name)) {
                    return result;
                }
            }
            cursor.message_offset = 0;
            cursor.message_length = 0;
            cursor.message_ignored = false;
        }
    }
    cursor.next_sequence = first_sequence + static_cast<std::uint32_t>(bytes.size());
    return result;
}

Call* PacketHandler::call_named_by(const ControlConnection& conn, Direction dir, const pptp::MessageSpec& spec,
                                   std::span<const std::uint8_t> prefix) const {
    const auto ids = pptp::read_call_ids(spec, prefix);
    const bool outbound = dir == Direction::Outbound;
    if (ids.own) {
        return outbound ? table_.find_by_inside_id(conn, *ids.own) : table_.find_by_outside_id(conn, *ids.own);
    }
    if (ids.peer) {
        return outbound ? table_.find_by_outside_id(conn, *ids.peer) : table_.find_by_public_id(conn, *ids.peer);
    }
    return nullptr;
}

PacketHandler::Outcome PacketHandler::check_message_start(ControlConnection& conn, Direction dir,
                                                          const pptp::ControlHeader& header) {
    Outcome o;
    const auto side = static_cast<std::int8_t>(dir);
    const ConnectionState s = conn.state;
    const bool up = s == ConnectionState::Established || s == ConnectionState::Stopping;
    const bool is_call_request = header.control_type == static_cast<std::uint16_t>(ControlType::OutgoingCallRequest) ||
                                 header.control_type == static_cast<std::uint16_t>(ControlType::IncomingCallRequest);
    if (s == ConnectionState::Closed) {
        // Half closed (one FIN) or stopped: the other side may still finish
        // its part (a reply, a stop, a clear); only new calls are refused.
        if (is_call_request) {
            o.violation = DropReason::control_out_of_state;
        }
        return o;
    }
    bool in_state = true;
    switch (static_cast<ControlType>(header.control_type)) {
        case ControlType::StartControlConnectionRequest: in_state = s == ConnectionState::TcpOnly; break;
        case ControlType::StartControlConnectionReply:
            in_state = s == ConnectionState::WaitStartReply && side != conn.start_requester;
            break;
        case ControlType::StopControlConnectionRequest: in_state = up || s == ConnectionState::WaitStartReply; break;
        case ControlType::StopControlConnectionReply: in_state = s == ConnectionState::Stopping; break;
        case ControlType::EchoRequest:
        case ControlType::EchoReply: in_state = up || s == ConnectionState::WaitStartReply; break;
        case ControlType::OutgoingCallRequest:
        case ControlType::IncomingCallRequest:
            // A requester may send its first call request right behind its
            // Start-Control-Connection-Request (pptpd accepts that).
            in_state = s == ConnectionState::Established ||
                       (s == ConnectionState::WaitStartReply && side == conn.start_requester);
            break;
        default: in_state = up; break;
    }
    if (!in_state) {
        o.violation = DropReason::control_out_of_state;
        return o;
    }
    // Set-Link-Info is PNS-to-PAC in RFC 2637, but Windows servers send it
    // too; it only names a call, so either side may.
    const pptp::Sender sender = header.spec.sender;
    if (sender != pptp::Sender::Either && header.control_type != static_cast<std::uint16_t>(ControlType::SetLinkInfo) &&
        conn.pns_side >= 0) {
        const std::int8_t expected =
            sender == pptp::Sender::Pns ? conn.pns_side : static_cast<std::int8_t>(1 - conn.pns_side);
        if (side != expected) {
            o.violation = DropReason::control_wrong_sender;
        }
    }
    return o;
}

PacketHandler::Outcome PacketHandler::decide_call_ids(ControlConnection& conn, Direction dir,
                                                      const pptp::ControlHeader& header,
                                                      std::span<const std::uint8_t> prefix) {
    Outcome d;
    const pptp::MessageSpec& spec = header.spec;
    const auto ids = pptp::read_call_ids(spec, prefix);
    const auto type = static_cast<ControlType>(header.control_type);
    const auto side = static_cast<std::int8_t>(dir);
    const bool outbound = dir == Direction::Outbound;
    const bool is_request = type == ControlType::OutgoingCallRequest || type == ControlType::IncomingCallRequest;
    const bool is_reply = type == ControlType::OutgoingCallReply || type == ControlType::IncomingCallReply;
    const bool outgoing_kind = type == ControlType::OutgoingCallRequest || type == ControlType::OutgoingCallReply;
    Call* call = nullptr;

    if (is_request) {
        // The sender announces its own Call ID for a new call.
        call = outbound ? table_.find_by_inside_id(conn, *ids.own) : table_.find_by_outside_id(conn, *ids.own);
        if (call == nullptr) {
            const CallResult r = outbound ? table_.create_call_from_inside(conn, *ids.own)
                                          : table_.create_call_from_outside(conn, *ids.own);
            if (r.call == nullptr) {
                d.refuse = true;
                d.violation = drop_reason_for(r.error);
                counters_.drop(d.violation);
                if (observer_ != nullptr) {
                    observer_->call_refused(conn, *ids.own, d.violation);
                }
                return d;
            }
            call = r.call;
            call->outgoing = outgoing_kind;
        }
        conn.pns_side = type == ControlType::OutgoingCallRequest ? side : static_cast<std::int8_t>(1 - side);
    } else if (is_reply) {
        // The answer names the requester's call by the Peer's Call ID.
        call = outbound ? table_.find_by_outside_id(conn, *ids.peer) : table_.find_by_public_id(conn, *ids.peer);
        if (call == nullptr) {
            d.violation = DropReason::control_unknown_call_id;
            return d;
        }
        if (call->outgoing != outgoing_kind || call->answered) {
            d.violation = DropReason::control_out_of_state;
            return d;
        }
        if (outbound) {
            if (const CallError e = table_.assign_inside_id(*call, *ids.own); e != CallError::None) {
                d.refuse = true;
                d.violation = drop_reason_for(e);
                counters_.drop(d.violation);
                if (observer_ != nullptr) {
                    observer_->call_refused(conn, *ids.own, d.violation);
                }
                return d;
            }
        } else {
            table_.set_outside_id(*call, *ids.own);
        }
        call->answered = true;
    } else {
        call = call_named_by(conn, dir, spec, prefix);
        if (call == nullptr) {
            // A call the agent ended itself (cleared, idle) that the peers
            // still talk about: same translation, no state.
            const bool by_own = ids.own.has_value();
            const std::uint16_t id = by_own ? *ids.own : *ids.peer;
            const auto* ended = CallTable::find_ended(conn, outbound && by_own, !outbound && !by_own, id);
            if (ended == nullptr) {
                d.violation = DropReason::control_unknown_call_id;
                return d;
            }
            counters_.add(EventCounter::control_messages_of_ended_calls);
            if (outbound && spec.own_call_id_offset != 0) {
                d.rewrites[d.rewrite_count++] = Rewrite{spec.own_call_id_offset, ended->public_call_id};
            }
            if (!outbound && spec.peer_call_id_offset != 0) {
                d.rewrites[d.rewrite_count++] = Rewrite{spec.peer_call_id_offset, ended->inside_call_id};
            }
            return d;
        }
        if (type == ControlType::IncomingCallConnected && (call->outgoing || !call->answered)) {
            d.violation = DropReason::control_out_of_state;
            return d;
        }
    }
    // The inside peer's own Call ID goes out as the public one; the Peer's
    // Call ID from outside (a public one) comes in as the inside peer's.
    if (outbound && spec.own_call_id_offset != 0) {
        d.rewrites[d.rewrite_count++] = Rewrite{spec.own_call_id_offset, call->public_call_id};
    }
    if (!outbound && spec.peer_call_id_offset != 0) {
        d.rewrites[d.rewrite_count++] = Rewrite{spec.peer_call_id_offset, call->inside_call_id};
    }
    return d;
}

PacketHandler::Outcome PacketHandler::message_complete(ControlConnection& conn, Direction dir,
                                                       const pptp::ControlHeader& header,
                                                       std::span<const std::uint8_t> prefix) {
    Outcome o;
    const auto type = static_cast<ControlType>(header.control_type);
    switch (type) {
        case ControlType::StartControlConnectionRequest:
            if (pptp::read_protocol_version(prefix) != pptp::kProtocolVersion1) {
                o.violation = DropReason::control_bad_protocol_version;
                break;
            }
            conn.state = ConnectionState::WaitStartReply;
            conn.start_requester = static_cast<std::int8_t>(dir);
            break;
        case ControlType::StartControlConnectionReply:
            if (pptp::read_protocol_version(prefix) != pptp::kProtocolVersion1) {
                o.violation = DropReason::control_bad_protocol_version;
                break;
            }
            if (pptp::read_result_code(header.control_type, prefix) == pptp::kStartResultOk) {
                conn.state = ConnectionState::Established;
            } else {
                table_.close_connection(conn, TeardownReason::StopControlConnection);
            }
            break;
        case ControlType::StopControlConnectionRequest: conn.state = ConnectionState::Stopping; break;
        case ControlType::StopControlConnectionReply:
            table_.close_connection(conn, TeardownReason::StopControlConnection);
            break;
        case ControlType::OutgoingCallReply:
        case ControlType::IncomingCallReply: {
            Call* call = call_named_by(conn, dir, header.spec, prefix);
            if (call == nullptr) {
                break;
            }
            if (pptp::read_result_code(header.control_type, prefix) == pptp::kCallResultConnected) {
                table_.mark_established(*call);
            } else {
                table_.remove_call(*call, TeardownReason::CallRejected);
            }
            break;
        }
        case ControlType::CallClearRequest:
            if (Call* call = call_named_by(conn, dir, header.spec, prefix)) {
                call->state = CallState::Clearing;
                call->last_activity = table_.now();
            }
            break;
        case ControlType::CallDisconnectNotify:
            if (Call* call = call_named_by(conn, dir, header.spec, prefix)) {
                table_.remove_call(*call, TeardownReason::CallDisconnectNotify);
            }
            break;
        default: break;
    }
    return o;
}

}  // namespace nat
