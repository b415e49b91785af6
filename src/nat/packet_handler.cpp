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

bool has_call_id_field(const pptp::MessageSpec& spec) noexcept {
    return pptp::call_id_region_end(spec) != 0;
}

// Signed distance a - b in sequence space (RFC 793 arithmetic).
std::int32_t seq_diff(std::uint32_t a, std::uint32_t b) noexcept {
    return static_cast<std::int32_t>(a - b);
}

}  // namespace

PacketHandler::PacketHandler(CallTable& table, Counters& counters, DropObserver* observer)
    : table_(table), counters_(counters), observer_(observer) {}

Verdict PacketHandler::drop(DropReason reason, std::uint32_t source, std::uint32_t destination) {
    counters_.drop(reason);
    counters_.add(EventCounter::packets_dropped);
    if (observer_ != nullptr) {
        observer_->packet_dropped(reason, source, destination);
    }
    return Verdict{false, false, reason};
}

Verdict PacketHandler::handle(Direction direction, std::span<std::uint8_t> packet) {
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
                    ? handle_control(direction, l3, h.header_length, h.source, h.destination)
                    : handle_gre(direction, l3, h.header_length, h.source, h.destination);
    if (v.accept) {
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
        if (!call->outside_known) {
            return drop(DropReason::gre_call_not_established, source, destination);
        }
        pptp::store_be32(address.data(), call->inside_address);
        pptp::patch_with_checksum(ip_header, pptp::kIpv4DestinationOffset, address, pptp::kIpv4ChecksumOffset);
        // PPTP GRE has no checksum (C=0), so the key is rewritten as is.
        pptp::store_be16(gre_bytes.data() + pptp::kGreCallIdOffset, call->inside_call_id);
        call->packets_in += 1;
        call->bytes_in += l4_bytes;
        call->last_activity = table_.now();
        return Verdict{true, true, DropReason::none};
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
    return Verdict{true, true, DropReason::none};
}

Verdict PacketHandler::handle_control(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                                      std::uint32_t source, std::uint32_t destination) {
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
                return drop(DropReason::control_connection_limit, source, destination);
            }
        }
        conn->streams[index] = StreamCursor{};
        conn->streams[index].synchronized = true;
        conn->streams[index].next_sequence = tcp->sequence + 1;
        conn->last_activity = table_.now();
        return Verdict{};
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
                return drop(DropReason::control_connection_limit, source, destination);
            }
        }
        if (conn != nullptr && !conn->streams[index].synchronized && starts_message) {
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
        verdict = consume_stream(*conn, dir, segment, payload_offset, tcp->sequence);
        if (!verdict.accept) {
            return drop(verdict.reason, source, destination);
        }
    }
    if (tcp->rst) {
        table_.close_connection(*conn, TeardownReason::TcpReset);
    } else if (tcp->fin) {
        table_.close_connection(*conn, TeardownReason::TcpFin);
    }
    return verdict;
}

bool PacketHandler::segment_splits_call_id(const StreamCursor& cursor,
                                           std::span<const std::uint8_t> bytes) const noexcept {
    // Walk message boundaries without side effects. A segment that ends inside
    // a message's Call ID region (bytes 12 to 14 or 16) cannot be rewritten
    // consistently: part of a field would already be on its way.
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
                return false;  // ends inside bytes 0..11: nothing to rewrite there
            }
            const auto check = pptp::check_header(header);
            if (check.error != pptp::HeaderError::None) {
                return false;  // the real pass reports the bad header
            }
            length = check.header.length;
        }
        const std::size_t take = std::min(length - offset, bytes.size() - i);
        const std::size_t end = offset + take;
        if (end < length && end > pptp::kHeaderSize) {
            const auto spec = pptp::message_spec(pptp::load_be16(header.data() + 8));
            if (spec && end < pptp::call_id_region_end(*spec)) {
                return true;
            }
        }
        i += take;
        offset = end;
        if (offset == length) {
            offset = 0;
            length = 0;
        }
    }
    return false;
}

Verdict PacketHandler::consume_stream(ControlConnection& conn, Direction dir, std::span<std::uint8_t> tcp_segment,
                                      std::size_t payload_offset, std::uint32_t sequence) {
    StreamCursor& cursor = conn.streams[static_cast<std::size_t>(dir)];
    auto payload = tcp_segment.subspan(payload_offset);
    Verdict verdict;
    const std::int32_t lead = seq_diff(cursor.next_sequence, sequence);
    if (lead < 0) {
        // A gap: bytes before this segment are missing. Dropping it is safe,
        // TCP sends it again once the gap is filled.
        return Verdict{false, false, DropReason::control_out_of_order_segment};
    }
    const std::size_t old_bytes = std::min<std::size_t>(static_cast<std::size_t>(lead), payload.size());
    // Retransmitted bytes get exactly the rewrite they got the first time.
    for (std::size_t n = 0; n < cursor.rewrite_log_used; ++n) {
        const auto& entry = cursor.rewrite_log[n];
        const std::int32_t at = seq_diff(entry.sequence, sequence);
        if (at >= 0 && static_cast<std::size_t>(at) < old_bytes &&
            payload[static_cast<std::size_t>(at)] == entry.original) {
            const std::uint8_t value = entry.rewritten;
            pptp::patch_with_checksum(tcp_segment, payload_offset + static_cast<std::size_t>(at),
                                      std::span<const std::uint8_t>(&value, 1), pptp::kTcpChecksumOffset);
            verdict.modified = true;
            counters_.add(EventCounter::control_retransmits_patched);
        }
    }
    auto fresh = payload.subspan(old_bytes);
    if (fresh.empty()) {
        return verdict;
    }
    if (segment_splits_call_id(cursor, fresh)) {
        return Verdict{false, false, DropReason::control_split_call_id_field};
    }

    const StreamCursor saved = cursor;  // restored if this segment is dropped
    const std::uint32_t fresh_sequence = sequence + static_cast<std::uint32_t>(old_bytes);
    std::size_t i = 0;
    while (i < fresh.size()) {
        if (cursor.message_length == 0) {
            while (cursor.message_offset < pptp::kHeaderSize && i < fresh.size()) {
                cursor.prefix[cursor.message_offset++] = fresh[i++];
            }
            if (cursor.message_offset < pptp::kHeaderSize) {
                break;
            }
            const auto check =
                pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize));
            if (check.error != pptp::HeaderError::None) {
                cursor = saved;
                return Verdict{false, false, drop_reason_for(check.error)};
            }
            cursor.message_length = check.header.length;
            continue;
        }
        const auto header =
            pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize)).header;
        const std::size_t start_offset = cursor.message_offset;
        const std::size_t take = std::min<std::size_t>(cursor.message_length - start_offset, fresh.size() - i);
        const std::size_t end_offset = start_offset + take;
        for (std::size_t o = start_offset; o < std::min(end_offset, StreamCursor::kPrefixSize); ++o) {
            cursor.prefix[o] = fresh[i + (o - start_offset)];
        }
        const std::size_t region_end = pptp::call_id_region_end(header.spec);
        if (region_end != 0 && start_offset < region_end && end_offset >= region_end) {
            const RegionDecision decision = decide_call_ids(conn, dir, header, cursor.prefix);
            if (decision.drop != DropReason::none) {
                cursor = saved;
                return Verdict{false, false, decision.drop};
            }
            for (std::size_t r = 0; r < decision.rewrite_count; ++r) {
                const Rewrite& rw = decision.rewrites[r];
                // Not split (checked above), so the field lies in this segment.
                const std::size_t at = i + (rw.offset - start_offset);
                std::array<std::uint8_t, 2> value{};
                pptp::store_be16(value.data(), rw.value);
                for (std::size_t b = 0; b < 2; ++b) {
                    if (fresh[at + b] != value[b]) {
                        cursor.remember_rewrite(fresh_sequence + static_cast<std::uint32_t>(at + b), fresh[at + b],
                                                value[b]);
                    }
                }
                pptp::patch_with_checksum(tcp_segment, payload_offset + old_bytes + at, value,
                                          pptp::kTcpChecksumOffset);
                verdict.modified = true;
                counters_.add(EventCounter::control_call_ids_rewritten);
            }
        }
        cursor.message_offset = static_cast<std::uint16_t>(end_offset);
        i += take;
        if (end_offset == cursor.message_length) {
            counters_.add(EventCounter::control_messages);
            conn.messages += 1;
            message_complete(conn, dir, header,
                             std::span<const std::uint8_t>(cursor.prefix)
                                 .first(std::min<std::size_t>(cursor.message_length, StreamCursor::kPrefixSize)));
            cursor.message_offset = 0;
            cursor.message_length = 0;
        }
    }
    cursor.next_sequence = sequence + static_cast<std::uint32_t>(payload.size());
    return verdict;
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

PacketHandler::RegionDecision PacketHandler::decide_call_ids(ControlConnection& conn, Direction dir,
                                                             const pptp::ControlHeader& header,
                                                             std::span<const std::uint8_t> prefix) {
    RegionDecision d;
    const pptp::MessageSpec& spec = header.spec;
    if (!has_call_id_field(spec)) {
        return d;
    }
    const auto ids = pptp::read_call_ids(spec, prefix);
    const auto type = static_cast<ControlType>(header.control_type);
    Call* call = nullptr;

    if (dir == Direction::Outbound) {
        // The inside peer sends: its own Call ID goes out as the public one;
        // the Peer's Call ID is the outside peer's and passes unchanged.
        switch (type) {
            case ControlType::OutgoingCallRequest:
            case ControlType::IncomingCallRequest: {
                call = table_.find_by_inside_id(conn, *ids.own);
                if (call == nullptr) {
                    const CallResult r = table_.create_call_from_inside(conn, *ids.own);
                    if (r.call == nullptr) {
                        d.drop = drop_reason_for(r.error);
                        return d;
                    }
                    call = r.call;
                }
                break;
            }
            case ControlType::OutgoingCallReply:
            case ControlType::IncomingCallReply: {
                call = table_.find_by_outside_id(conn, *ids.peer);
                if (call == nullptr) {
                    d.drop = DropReason::control_unknown_call_id;
                    return d;
                }
                if (const CallError e = table_.assign_inside_id(*call, *ids.own); e != CallError::None) {
                    d.drop = drop_reason_for(e);
                    return d;
                }
                break;
            }
            default:
                call = call_named_by(conn, dir, spec, prefix);
                if (call == nullptr) {
                    d.drop = DropReason::control_unknown_call_id;
                    return d;
                }
                break;
        }
        if (spec.own_call_id_offset != 0) {
            d.rewrites[d.rewrite_count++] = Rewrite{spec.own_call_id_offset, call->public_call_id};
        }
        return d;
    }

    // The outside peer sends: its own Call ID is kept; the Peer's Call ID is
    // the public one and goes in as the inside peer's.
    switch (type) {
        case ControlType::OutgoingCallRequest:
        case ControlType::IncomingCallRequest: {
            call = table_.find_by_outside_id(conn, *ids.own);
            if (call == nullptr) {
                const CallResult r = table_.create_call_from_outside(conn, *ids.own);
                if (r.call == nullptr) {
                    d.drop = drop_reason_for(r.error);
                }
            }
            return d;
        }
        case ControlType::OutgoingCallReply:
        case ControlType::IncomingCallReply:
            call = table_.find_by_public_id(conn, *ids.peer);
            if (call == nullptr) {
                d.drop = DropReason::control_unknown_call_id;
                return d;
            }
            table_.set_outside_id(*call, *ids.own);
            break;
        default:
            call = call_named_by(conn, dir, spec, prefix);
            if (call == nullptr) {
                d.drop = DropReason::control_unknown_call_id;
                return d;
            }
            break;
    }
    if (spec.peer_call_id_offset != 0) {
        d.rewrites[d.rewrite_count++] = Rewrite{spec.peer_call_id_offset, call->inside_call_id};
    }
    return d;
}

void PacketHandler::message_complete(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                                     std::span<const std::uint8_t> prefix) {
    const auto type = static_cast<ControlType>(header.control_type);
    switch (type) {
        case ControlType::StartControlConnectionRequest:
            if (conn.state == ConnectionState::TcpOnly) {
                conn.state = ConnectionState::WaitStartReply;
            }
            break;
        case ControlType::StartControlConnectionReply:
            if (pptp::read_result_code(header.control_type, prefix) == pptp::kStartResultOk) {
                conn.state = ConnectionState::Established;
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
}

}  // namespace nat
