#include "nat/packet_handler.hpp"

#include <algorithm>

#include "pptp/bytes.hpp"
#include "pptp/gre.hpp"
#include "pptp/inet.hpp"

namespace nat {
namespace {

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

DropReason drop_reason_for(stream::Event e) noexcept {
    switch (e) {
        case stream::Event::BadChecksum: return DropReason::control_bad_tcp_checksum;
        case stream::Event::InconsistentResend: return DropReason::control_inconsistent_resend;
        case stream::Event::ResendBeyondLog: return DropReason::control_resend_beyond_log;
        case stream::Event::WindowOverflow: return DropReason::control_window_overflow;
        default: return DropReason::control_hold_overflow;
    }
}

constexpr std::uint8_t kTcpRst = 0x04;

TeardownReason refusal_reason(DropReason why) noexcept {
    const bool refusal = why == DropReason::call_limit || why == DropReason::call_limit_per_host ||
                         why == DropReason::call_id_space_exhausted || why == DropReason::control_nat_unknown;
    return refusal ? TeardownReason::CallRefused : TeardownReason::ProtocolViolation;
}
constexpr std::uint8_t kTcpAck = 0x10;

}  // namespace

std::size_t strip_segment(std::span<std::uint8_t> packet, std::size_t tcp_offset, std::uint8_t flags,
                          std::uint32_t sequence) noexcept {
    const std::size_t tcp_header = static_cast<std::size_t>(packet[tcp_offset + 12] >> 4U) * 4U;
    const std::size_t length = tcp_offset + tcp_header;
    pptp::store_be16(packet.data() + 2, static_cast<std::uint16_t>(length));
    pptp::store_be16(packet.data() + pptp::kIpv4ChecksumOffset, 0);
    pptp::store_be16(packet.data() + pptp::kIpv4ChecksumOffset, pptp::ipv4_header_checksum(packet.first(tcp_offset)));
    auto tcp = packet.subspan(tcp_offset, tcp_header);
    pptp::store_be32(tcp.data() + 4, sequence);
    tcp[13] = flags;
    pptp::store_be16(tcp.data() + pptp::kTcpChecksumOffset,
                     pptp::tcp_checksum_ipv4(pptp::load_be32(packet.data() + pptp::kIpv4SourceOffset),
                                             pptp::load_be32(packet.data() + pptp::kIpv4DestinationOffset), tcp));
    return length;
}

std::uint32_t public_address_for(const NatMapping& nat, std::uint32_t outside_peer) noexcept {
    if (nat.original_source == outside_peer) {
        return nat.original_destination;
    }
    if (nat.reply_source == outside_peer) {
        return nat.reply_destination;
    }
    return 0;
}

void PacketHandler::learn_public_address(ControlConnection& conn) {
    // Asked once a connection carries data: its SYN was queued before the
    // kernel's NAT decided (SNAT comes after FORWARD) and confirmed the entry.
    if (conn.public_address != 0 || table_.config().public_address != 0 || nat_lookup_ == nullptr) {
        return;
    }
    if (const auto mapping = nat_lookup_->mapping_of(conn.key)) {
        conn.public_address = public_address_for(*mapping, conn.key.outside_address);
    }
}

void PacketHandler::set_local_addresses(std::vector<std::uint32_t> addresses) {
    std::sort(addresses.begin(), addresses.end());
    addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
    local_addresses_ = std::move(addresses);
}

bool PacketHandler::is_local(std::uint32_t address) const noexcept {
    return std::binary_search(local_addresses_.begin(), local_addresses_.end(), address);
}

PacketHandler::PacketHandler(CallTable& table, Counters& counters, DropObserver* observer, HandlerConfig config)
    : table_(table),
      counters_(counters),
      observer_(observer),
      config_(config),
      inspector_(table, counters, observer, config_.on_violation),
      follower_(config.holds, *this) {}

void PacketHandler::set_config(const HandlerConfig& config) noexcept {
    config_ = config;  // the inspector reads the policy from here
    follower_.set_limits(config.holds);
}

void PacketHandler::stream_event(stream::Event event) {
    switch (event) {
        case stream::Event::SegmentHeld: counters_.add(EventCounter::control_segments_held); break;
        case stream::Event::SegmentReleased: counters_.add(EventCounter::control_segments_released); break;
        case stream::Event::SegmentCut: counters_.add(EventCounter::control_segments_cut); break;
        case stream::Event::HeldDropped: counters_.add(EventCounter::packets_dropped); break;
        case stream::Event::SegmentReplaced:
            counters_.add(EventCounter::packets_dropped);
            counters_.add(EventCounter::control_segments_replaced);
            break;
        case stream::Event::ResendPatched: counters_.add(EventCounter::control_retransmits_patched); break;
        case stream::Event::ResetIgnored: counters_.add(EventCounter::tcp_resets_ignored); break;
        case stream::Event::FinIgnored: counters_.add(EventCounter::tcp_fins_ignored); break;
        case stream::Event::SynIgnored: counters_.add(EventCounter::tcp_syns_ignored); break;
        case stream::Event::HoldTimeout: counters_.drop(DropReason::control_hold_timeout); break;
        // Counted by the drop that follows.
        case stream::Event::BadChecksum:
        case stream::Event::InconsistentResend:
        case stream::Event::ResendBeyondLog:
        case stream::Event::WindowOverflow:
        case stream::Event::HoldOverflow: break;
    }
}

std::size_t PacketHandler::expire_held() {
    const std::size_t expired = follower_.expire(table_.now());
    // Segments that wait at the start of a Call ID field whose sender waits
    // for their ACK: let the inspector take the field's first byte alone.
    for (const std::uint64_t key : follower_.waiting_at_a_field()) {
        if (ControlConnection* conn = table_.find_connection(key / 2); conn != nullptr) {
            auto consumer = inspector_.bind(*conn);
            if (follower_.take_field_start(conn->tcp, conn->id, key % 2, consumer) == stream::Take::Reset) {
                // No segment to make an RST of: the next one of each peer is.
                enter_reset(*conn, refusal_reason(inspector_.reset_reason()));
            }
        }
    }
    return expired;
}

void PacketHandler::resynchronize(ControlConnection& conn) {
    follower_.forget(conn.id);
    conn.resync_pending = {true, true};
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
        Call* call = table_.find_inbound(source, destination, gre.header.call_id);
        if (call == nullptr) {
            const bool pass = config_.local_gre == HandlerConfig::LocalGre::Pass ||
                              (config_.local_gre == HandlerConfig::LocalGre::Auto && gateway_gre_);
            if (pass && is_local(destination)) {
                // The gateway's own PPTP: the kernel's, and its input rules'.
                // Its Call ID stays out of our allocator while in use.
                counters_.add(EventCounter::gre_to_gateway);
                table_.note_gateway_call_id(destination, source, gre.header.call_id);
                return Verdict{};
            }
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
    const std::size_t payload_size = segment.size() - tcp->header_length;
    const auto index = static_cast<std::size_t>(dir);
    const bool starts_message =
        payload_size > 0 && ControlInspector::starts_message(segment.subspan(tcp->header_length));

    ControlConnection* conn = table_.find_connection(key);
    if (tcp->syn && !tcp->ack && conn != nullptr &&
        (conn->state == ConnectionState::Closed || conn->state == ConnectionState::Reset)) {
        // The 4-tuple is used again once the old connection is over.
        follower_.forget(conn->id);
        table_.remove_connection(*conn, TeardownReason::ConnectionReplaced);
        conn = nullptr;
    }
    if (conn == nullptr) {
        // A connection starts with a SYN; one whose opening went by unseen
        // (the agent restarted) is picked up at a segment that starts a message.
        const bool opening = tcp->syn && !tcp->ack;
        if (!opening && !(starts_message && !tcp->rst)) {
            if (payload_size == 0) {
                return Verdict{};  // a bare ACK or RST of a connection long gone
            }
            // Bytes of a stream that cannot be framed: end it cleanly.
            conn = table_.create_connection(key, !outbound);
            if (conn == nullptr) {
                return refuse_connection(source, destination);
            }
            counters_.drop(DropReason::control_unframed_stream);
            return start_reset(*conn, dir, packet, ip_header_length, tcp->sequence, TeardownReason::ProtocolViolation);
        }
        // Who opened it: the sender of a SYN; for a picked-up stream, the side
        // whose port is not the fixup port.
        const bool from_outside = opening ? !outbound : !port_enabled(key.outside_port);
        conn = table_.create_connection(key, from_outside);
        if (conn == nullptr) {
            return refuse_connection(source, destination);
        }
        if (!opening) {
            conn->picked_up = true;
            // Its start went by unseen, unless this is the start itself (a
            // connection forgotten before its first message).
            const auto type = pptp::load_be16(segment.data() + tcp->header_length + 8);
            conn->state = type == static_cast<std::uint16_t>(pptp::ControlType::StartControlConnectionRequest)
                              ? ConnectionState::TcpOnly
                              : ConnectionState::Established;
        }
    }
    conn->last_activity = table_.now();
    if (payload_size > 0 && !tcp->syn) {
        learn_public_address(*conn);
    }
    if (conn->state == ConnectionState::Reset) {
        return reset_segment(*conn, dir, packet, ip_header_length, *tcp);
    }
    if (payload_size > 0 && !tcp->syn && conn->resync_pending[index]) {
        conn->resync_pending[index] = false;
        if (conn->tcp.sides[index].synchronized && tcp->sequence != conn->tcp.sides[index].next_sequence &&
            starts_message) {
            conn->tcp.sides[index].synchronized = false;  // picked up again just below
            counters_.add(EventCounter::control_streams_resynchronized);
        }
    }
    if (payload_size > 0 && !tcp->syn && !conn->tcp.sides[index].synchronized) {
        if (!starts_message) {
            counters_.drop(DropReason::control_unframed_stream);
            return start_reset(*conn, dir, packet, ip_header_length, tcp->sequence, TeardownReason::ProtocolViolation);
        }
        stream::Follower::pick_up(conn->tcp, index, tcp->sequence);
        conn->framing[index] = MessageCursor{};
    }

    stream::Segment seg;
    seg.packet = packet;
    seg.tcp_offset = ip_header_length;
    seg.payload_offset = ip_header_length + tcp->header_length;
    seg.source = source;
    seg.destination = destination;
    seg.sequence = tcp->sequence;
    seg.acknowledgement = tcp->acknowledgement;
    seg.syn = tcp->syn;
    seg.fin = tcp->fin;
    seg.rst = tcp->rst;
    seg.ack = tcp->ack;
    seg.packet_id = packet_id;
    seg.owner = conn->initiator_address;  // a server behind a port forward holds in its clients' shares
    auto consumer = inspector_.bind(*conn);
    const stream::Result r = follower_.segment(conn->tcp, conn->id, index, seg, consumer, table_.now());
    if (r.action == stream::Result::Action::Drop) {
        return drop(drop_reason_for(r.drop_event), source, destination);
    }
    if (r.action == stream::Result::Action::Held) {
        return Verdict{true, false, true, 0, DropReason::none};
    }
    if (r.reset_requested) {
        return start_reset(*conn, dir, packet, ip_header_length, r.receiver_expects,
                           refusal_reason(inspector_.reset_reason()));
    }
    if (r.strip_payload) {
        const std::size_t length = strip_segment(packet, ip_header_length, kTcpAck, tcp->sequence);
        return Verdict{true, true, false, length, DropReason::none};
    }
    if (r.reset_by_peer || r.finished) {
        table_.close_connection(*conn, r.reset_by_peer ? TeardownReason::TcpReset : TeardownReason::TcpFin);
        if (r.reset_by_peer) {
            follower_.forget(conn->id);
        }
    }
    return Verdict{true, r.modified, false, 0, DropReason::none};
}

void PacketHandler::enter_reset(ControlConnection& conn, TeardownReason reason) {
    table_.close_connection(conn, reason);
    follower_.forget(conn.id);
    conn.state = ConnectionState::Reset;
    conn.reset_sent = {};
    counters_.add(EventCounter::control_connections_reset);
}

Verdict PacketHandler::start_reset(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet,
                                   std::size_t tcp_offset, std::uint32_t sequence, TeardownReason reason) {
    enter_reset(conn, reason);
    conn.reset_sent[1 - static_cast<std::size_t>(dir)] = true;
    // Nothing of the segment goes on: it becomes an RST at exactly the
    // sequence number its receiver expects, which RFC 5961 stacks take.
    const std::size_t length = strip_segment(packet, tcp_offset, kTcpRst | kTcpAck, sequence);
    return Verdict{true, true, false, length, DropReason::none};
}

Verdict PacketHandler::reset_segment(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet,
                                     std::size_t tcp_offset, const pptp::TcpHeader& tcp) {
    if (tcp.rst) {
        return Verdict{};  // a peer's own RST: let it reach the other
    }
    const auto sender = static_cast<std::size_t>(dir);
    const std::size_t receiver = 1 - sender;
    const stream::DirectionState& from = conn.tcp.sides[sender];
    if (!conn.reset_sent[receiver]) {
        // The first segment towards this side: an RST where it expects the
        // sender's next byte.
        conn.reset_sent[receiver] = true;
        const std::uint32_t sequence = from.synchronized ? from.next_sequence : tcp.sequence;
        const std::size_t length = strip_segment(packet, tcp_offset, kTcpRst | kTcpAck, sequence);
        return Verdict{true, true, false, length, DropReason::none};
    }
    const std::size_t payload = packet.size() - tcp_offset - tcp.header_length;
    if (payload == 0 && !tcp.fin && !tcp.syn) {
        return Verdict{};
    }
    // The receiver was reset already: the sender's resend goes on without its
    // bytes, and the receiver's stack, which has no connection any more,
    // answers it with an RST, so the sender ends too.
    const std::size_t length = strip_segment(packet, tcp_offset, kTcpAck, tcp.sequence);
    return Verdict{true, true, false, length, DropReason::none};
}

}  // namespace nat
