#include "nat/control_inspector.hpp"

#include <algorithm>
#include <cstring>
#include <optional>

#include "pptp/bytes.hpp"

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

DropReason drop_reason_for(CallError e) noexcept {
    switch (e) {
        case CallError::CallLimit: return DropReason::call_limit;
        case CallError::HostCallLimit: return DropReason::call_limit_per_host;
        case CallError::CallIdSpaceExhausted: return DropReason::call_id_space_exhausted;
        case CallError::NatUnknown: return DropReason::control_nat_unknown;
        case CallError::None: break;
    }
    return DropReason::none;
}

bool is(const pptp::ControlHeader& header, ControlType type) noexcept {
    return header.control_type == static_cast<std::uint16_t>(type);
}

}  // namespace

ControlInspector::ControlInspector(CallTable& table, Counters& counters, DropObserver* observer,
                                   const ViolationPolicy& policy)
    : table_(table), counters_(counters), observer_(observer), policy_(policy) {}

bool ControlInspector::starts_message(std::span<const std::uint8_t> payload) noexcept {
    return payload.size() >= pptp::kHeaderSize && pptp::check_header(payload).error == pptp::HeaderError::None;
}

std::size_t ControlInspector::Binding::takeable(std::size_t side, std::span<const std::uint8_t> bytes) const {
    return ControlInspector::takeable(conn_.framing[side], bytes);
}

stream::Take ControlInspector::Binding::take(std::size_t side, std::span<const std::uint8_t> bytes,
                                             stream::FieldWriter& fields) {
    return inspector_.take(conn_, static_cast<Direction>(side), bytes, fields);
}

stream::Take ControlInspector::Binding::take_field_start(std::size_t side, std::span<const std::uint8_t> bytes,
                                                         stream::FieldWriter& fields, std::size_t& taken) {
    return inspector_.take_field_start(conn_, static_cast<Direction>(side), bytes, fields, taken);
}

std::size_t ControlInspector::takeable(const MessageCursor& cursor, std::span<const std::uint8_t> bytes) {
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

stream::Take ControlInspector::reset(ControlConnection& conn, DropReason reason, std::string_view what) {
    reset_reason_ = reason;
    conn.violations += 1;
    counters_.drop(reason);
    if (observer_ != nullptr) {
        observer_->control_violation(conn, reason, what, true);
    }
    return stream::Take::Reset;
}

stream::Take ControlInspector::take(ControlConnection& conn, Direction dir, std::span<const std::uint8_t> bytes,
                                    stream::FieldWriter& fields) {
    MessageCursor& cursor = conn.framing[static_cast<std::size_t>(dir)];
    // A violation of a well-framed message: the policy decides.
    auto violated = [&](DropReason reason, std::string_view what) {
        if (policy_ == ViolationPolicy::Reset) {
            return true;
        }
        conn.violations += 1;
        counters_.drop(reason);  // passed on, but counted
        if (observer_ != nullptr) {
            observer_->control_violation(conn, reason, what, false);
        }
        cursor.message_ignored = true;
        return false;
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
                // No framing to go by any more: nothing after this can be inspected.
                return reset(conn, drop_reason_for(check.error), pptp::header_error_name(check.error));
            }
            cursor.message_length = check.header.length;
            cursor.message_ignored = false;
            cursor.message_call = 0;
            const Outcome start = check_message_start(conn, dir, check.header);
            if (start.violation != DropReason::none &&
                violated(start.violation, pptp::control_type_name(check.header.control_type))) {
                return reset(conn, start.violation, pptp::control_type_name(check.header.control_type));
            }
            continue;
        }
        const auto header =
            pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize)).header;
        const std::size_t start_offset = cursor.message_offset;
        const std::size_t take = std::min<std::size_t>(cursor.message_length - start_offset, bytes.size() - i);
        const std::size_t end_offset = start_offset + take;
        for (std::size_t o = start_offset; o < std::min(end_offset, MessageCursor::kPrefixSize); ++o) {
            cursor.prefix[o] = bytes[i + (o - start_offset)];
        }
        const std::size_t region_end = pptp::call_id_region_end(header.spec);
        if (cursor.split && start_offset < region_end && end_offset >= region_end) {
            cursor.prefix[start_offset] = bytes[i];
            const Outcome done = finish_split_field(conn, dir, header, i, fields);
            if (done.refuse) {
                return stream::Take::Reset;  // refused() counted it
            }
            if (done.violation != DropReason::none && violated(done.violation, header.spec.name)) {
                return reset(conn, done.violation, header.spec.name);
            }
        } else if (region_end != 0 && start_offset < region_end && end_offset >= region_end) {
            Outcome decision = cursor.message_ignored ? translate_fields(conn, dir, header, cursor.prefix)
                                                      : decide_call_ids(conn, dir, header, cursor.prefix);
            if (decision.refuse) {
                return stream::Take::Reset;  // refused() counted it
            }
            if (decision.violation != DropReason::none && violated(decision.violation, header.spec.name)) {
                return reset(conn, decision.violation, header.spec.name);
            }
            if (decision.violation != DropReason::none) {
                decision = translate_fields(conn, dir, header, cursor.prefix);
            }
            cursor.message_ignored = cursor.message_ignored || decision.ignore;
            cursor.message_call = decision.call;
            for (std::size_t r = 0; r < decision.rewrite_count; ++r) {
                // The region lies in these bytes: taking stops before a partial one.
                fields.field(i + (decision.rewrites[r].offset - start_offset), decision.rewrites[r].value);
                counters_.add(EventCounter::control_call_ids_rewritten);
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
                        .first(std::min<std::size_t>(cursor.message_length, MessageCursor::kPrefixSize)),
                    cursor.message_call);
                if (done.violation != DropReason::none && violated(done.violation, header.spec.name)) {
                    return reset(conn, done.violation, header.spec.name);
                }
            }
            cursor.message_offset = 0;
            cursor.message_length = 0;
            cursor.message_ignored = false;
            cursor.message_call = 0;
            cursor.split = false;
        }
    }
    return stream::Take::Ok;
}

stream::Take ControlInspector::take_field_start(ControlConnection& conn, Direction dir,
                                                std::span<const std::uint8_t> bytes, stream::FieldWriter& fields,
                                                std::size_t& taken) {
    taken = 0;
    MessageCursor& cursor = conn.framing[static_cast<std::size_t>(dir)];
    if (bytes.empty()) {
        return stream::Take::Ok;
    }
    // Whatever cannot be decided byte by byte ends the connection: the sender
    // waits for an ACK that would never come.
    auto undecidable = [&](std::string_view what) {
        return reset(conn, DropReason::control_call_id_undecidable, what);
    };
    if (cursor.message_length == 0 || cursor.message_offset != pptp::kHeaderSize || cursor.split ||
        cursor.message_ignored) {
        return undecidable("segment cut in a Call ID field");
    }
    const auto header =
        pptp::check_header(std::span<const std::uint8_t>(cursor.prefix).first(pptp::kHeaderSize)).header;
    if (pptp::call_id_region_end(header.spec) != pptp::kHeaderSize + 2) {
        return undecidable(header.spec.name);  // two fields (the replies): decided whole only
    }
    const bool outbound = dir == Direction::Outbound;
    const bool own = header.spec.own_call_id_offset == pptp::kHeaderSize;
    const std::uint8_t high = bytes[0];
    std::uint8_t sent = high;
    if (is(header, ControlType::OutgoingCallRequest) || is(header, ControlType::IncomingCallRequest)) {
        if (outbound) {
            // A new call: its public Call ID's high byte is decided now.
            const CallResult r = table_.create_call_from_inside_by_high_byte(conn, high);
            if (r.call == nullptr) {
                refused(conn, static_cast<std::uint16_t>(high << 8U), r.error);
                return stream::Take::Reset;
            }
            r.call->outgoing = is(header, ControlType::OutgoingCallRequest);
            conn.pns_side = is(header, ControlType::OutgoingCallRequest) ? 0 : 1;
            cursor.message_call = r.call->id;
            sent = static_cast<std::uint8_t>(r.call->public_call_id >> 8U);
        }
    } else {
        // Every call the value may name must translate to the same high
        // byte; none at all is neutralised (to 0). Call-Clear-Request and
        // Call-Disconnect-Notify may name either side's Call ID.
        const bool either_id =
            is(header, ControlType::CallClearRequest) || is(header, ControlType::CallDisconnectNotify);
        const bool inside_space = outbound == own;
        std::optional<std::uint8_t> agreed;
        bool ambiguous = false;
        auto consider = [&](std::uint16_t from, std::uint16_t to) {
            if ((from >> 8U) != high) {
                return;
            }
            const auto to_high = static_cast<std::uint8_t>(to >> 8U);
            ambiguous = ambiguous || (agreed && *agreed != to_high);
            agreed = to_high;
        };
        auto consider_space = [&](bool inside_value) {
            for (const Call* call : conn.calls) {
                if (inside_value && call->inside_known) {
                    outbound ? consider(call->inside_call_id, call->public_call_id)
                             : consider(call->public_call_id, call->inside_call_id);
                } else if (!inside_value && call->outside_known) {
                    consider(call->outside_call_id, call->outside_call_id);
                }
            }
            for (const auto& ended : conn.ended_calls) {
                if (inside_value) {
                    outbound ? consider(ended.inside_call_id, ended.public_call_id)
                             : consider(ended.public_call_id, ended.inside_call_id);
                } else if (ended.outside_known) {
                    consider(ended.outside_call_id, ended.outside_call_id);
                }
            }
        };
        // As for a whole field: the sender's own Call ID first, the
        // receiver's only if that names nothing.
        consider_space(inside_space);
        if (either_id && !agreed) {
            consider_space(!inside_space);
        }
        if (ambiguous) {
            return undecidable(header.spec.name);
        }
        sent = agreed.value_or(0);
    }
    fields.field_byte(0, sent);
    cursor.prefix[pptp::kHeaderSize] = high;
    cursor.message_offset = pptp::kHeaderSize + 1;
    cursor.split = true;
    cursor.split_sent = sent;
    counters_.add(EventCounter::control_call_id_fields_split);
    taken = 1;
    return stream::Take::Ok;
}

std::uint16_t ControlInspector::unused_value(const ControlConnection& conn, Direction dir, std::uint8_t high) const {
    const bool outbound = dir == Direction::Outbound;
    for (std::uint32_t low = 0; low < 256; ++low) {
        const auto value = static_cast<std::uint16_t>(static_cast<std::uint32_t>(high) << 8U | low);
        const bool named =
            outbound
                ? (table_.find_inbound(conn.key.outside_address, table_.public_address_of(conn), value) != nullptr ||
                   CallTable::find_ended(conn, false, true, value) != nullptr)
                : (table_.find_by_inside_id(conn, value) != nullptr ||
                   CallTable::find_ended(conn, true, false, value) != nullptr);
        if (!named && !(outbound && value == 0)) {
            return value;
        }
    }
    return static_cast<std::uint16_t>(static_cast<std::uint32_t>(high) << 8U);
}

ControlInspector::Outcome ControlInspector::finish_split_field(ControlConnection& conn, Direction dir,
                                                               const pptp::ControlHeader& header, std::size_t at,
                                                               stream::FieldWriter& fields) {
    MessageCursor& cursor = conn.framing[static_cast<std::size_t>(dir)];
    const std::uint16_t original = pptp::load_be16(cursor.prefix.data() + pptp::kHeaderSize);
    std::uint16_t value = original;
    Outcome d;
    if (Call* reserved = cursor.message_call == 0 ? nullptr : table_.find_call(cursor.message_call)) {
        table_.complete_inside_id(*reserved, original);  // the request's new call
        value = reserved->public_call_id;
        d.call = reserved->id;
    } else {
        d = decide_call_ids(conn, dir, header, cursor.prefix);
        if (d.refuse || (d.violation != DropReason::none && policy_ == ViolationPolicy::Reset)) {
            return d;  // the caller resets
        }
        if (d.violation != DropReason::none) {
            d = translate_fields(conn, dir, header, cursor.prefix);  // passed on by policy
            cursor.message_ignored = true;
        }
        cursor.message_ignored = cursor.message_ignored || d.ignore;
        if (d.rewrite_count > 0) {
            value = d.rewrites[0].value;
        }
    }
    cursor.message_call = d.call;
    if ((value >> 8U) != cursor.split_sent) {
        // What went first does not lead to this call: make the whole name
        // no call at all.
        const bool counted = value == 0;  // translate_fields neutralised it already
        value = unused_value(conn, dir, cursor.split_sent);
        cursor.message_ignored = true;
        if (!counted) {
            counters_.add(EventCounter::control_call_ids_neutralised);
        }
    }
    fields.field_byte(at, static_cast<std::uint8_t>(value & 0xFFU));
    counters_.add(EventCounter::control_call_ids_rewritten);
    Outcome ok;
    ok.call = d.call;
    return ok;
}

ControlInspector::Outcome ControlInspector::check_message_start(ControlConnection& conn, Direction dir,
                                                                const pptp::ControlHeader& header) {
    Outcome o;
    const auto side = static_cast<std::int8_t>(dir);
    const ConnectionState s = conn.state;
    const bool up = s == ConnectionState::Established || s == ConnectionState::Stopping;
    const bool is_call_request =
        is(header, ControlType::OutgoingCallRequest) || is(header, ControlType::IncomingCallRequest);
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
    // Messages that only name a call may come from either side: Windows
    // servers send Set-Link-Info, PACs send Call-Clear-Request (pptp-linux
    // answers it with a Call-Disconnect-Notify).
    const bool names_a_call = is(header, ControlType::SetLinkInfo) || is(header, ControlType::CallClearRequest) ||
                              is(header, ControlType::CallDisconnectNotify);
    const pptp::Sender sender = header.spec.sender;
    if (sender != pptp::Sender::Either && !names_a_call && conn.pns_side >= 0) {
        const std::int8_t expected =
            sender == pptp::Sender::Pns ? conn.pns_side : static_cast<std::int8_t>(1 - conn.pns_side);
        if (side != expected) {
            o.violation = DropReason::control_wrong_sender;
        }
    }
    return o;
}

ControlInspector::Outcome ControlInspector::refused(ControlConnection& conn, std::uint16_t call_id, CallError error) {
    Outcome d;
    d.refuse = true;
    d.violation = drop_reason_for(error);
    reset_reason_ = d.violation;
    counters_.drop(d.violation);
    if (observer_ != nullptr) {
        observer_->call_refused(conn, call_id, d.violation);
    }
    return d;
}

ControlInspector::Outcome ControlInspector::decide_call_ids(ControlConnection& conn, Direction dir,
                                                            const pptp::ControlHeader& header,
                                                            std::span<const std::uint8_t> prefix) {
    const pptp::MessageSpec& spec = header.spec;
    const auto ids = pptp::read_call_ids(spec, prefix);
    const auto side = static_cast<std::int8_t>(dir);
    const bool outbound = dir == Direction::Outbound;
    const bool is_request =
        is(header, ControlType::OutgoingCallRequest) || is(header, ControlType::IncomingCallRequest);
    const bool is_reply = is(header, ControlType::OutgoingCallReply) || is(header, ControlType::IncomingCallReply);
    const bool outgoing_kind =
        is(header, ControlType::OutgoingCallRequest) || is(header, ControlType::OutgoingCallReply);

    if (is_request) {
        // The sender announces its own Call ID for a new call.
        Call* call = outbound ? table_.find_by_inside_id(conn, *ids.own) : table_.find_by_outside_id(conn, *ids.own);
        if (call == nullptr) {
            const CallResult r = outbound ? table_.create_call_from_inside(conn, *ids.own)
                                          : table_.create_call_from_outside(conn, *ids.own);
            if (r.call == nullptr) {
                return refused(conn, *ids.own, r.error);
            }
            call = r.call;
            call->outgoing = outgoing_kind;
        }
        conn.pns_side = is(header, ControlType::OutgoingCallRequest) ? side : static_cast<std::int8_t>(1 - side);
        Outcome d;
        d.call = call->id;
        if (outbound) {
            d.rewrite(spec.own_call_id_offset, call->public_call_id);
        }
        return d;
    }
    if (is_reply) {
        // The answer names the requester's call by the Peer's Call ID; its
        // own Call ID is only taken if it answers a call that waits for it.
        Call* call = outbound ? table_.find_by_outside_id(conn, *ids.peer) : table_.find_by_public_id(conn, *ids.peer);
        if (call == nullptr) {
            return translate_fields(conn, dir, header, prefix);  // about a call that ended, or none
        }
        if (call->outgoing != outgoing_kind || call->answered) {
            Outcome d;
            d.violation = DropReason::control_out_of_state;
            return d;
        }
        if (outbound) {
            if (const CallError e = table_.assign_inside_id(*call, *ids.own); e != CallError::None) {
                return refused(conn, *ids.own, e);
            }
        } else {
            table_.set_outside_id(*call, *ids.own);
        }
        call->answered = true;
        Outcome d;
        d.call = call->id;
        if (outbound) {
            d.rewrite(spec.own_call_id_offset, call->public_call_id);
        } else {
            d.rewrite(spec.peer_call_id_offset, call->inside_call_id);
        }
        return d;
    }
    Outcome d = translate_fields(conn, dir, header, prefix);
    if (is(header, ControlType::IncomingCallConnected) && d.call != 0) {
        const Call* call = table_.find_call(d.call);
        if (call != nullptr && (call->outgoing || !call->answered)) {
            d = Outcome{};
            d.violation = DropReason::control_out_of_state;
        }
    }
    return d;
}

ControlInspector::Outcome ControlInspector::translate_fields(ControlConnection& conn, Direction dir,
                                                             const pptp::ControlHeader& header,
                                                             std::span<const std::uint8_t> prefix) {
    Outcome d;
    const pptp::MessageSpec& spec = header.spec;
    const auto ids = pptp::read_call_ids(spec, prefix);
    const bool outbound = dir == Direction::Outbound;
    // Call-Clear-Request and Call-Disconnect-Notify carry one Call ID: the
    // sender's by RFC 2637, but accel-ppp puts the PNS's in its
    // Call-Disconnect-Notify, and a PAC's Call-Clear-Request to pptp-linux
    // carries the PNS's. So their field is tried as the receiver's too.
    const bool either_id = is(header, ControlType::CallClearRequest) || is(header, ControlType::CallDisconnectNotify);
    // A field: the sender's own Call ID (offset own) or the receiver's (peer).
    // Inside IDs leave as public ones, public ones come in as inside ones;
    // outside IDs are never translated.
    auto decide = [&](std::size_t offset, std::uint16_t value, bool senders) {
        const bool inside_value = outbound == senders;  // the value is in the inside peer's ID space
        Call* call = nullptr;
        if (inside_value) {
            call = outbound ? table_.find_by_inside_id(conn, value) : table_.find_by_public_id(conn, value);
        } else {
            call = table_.find_by_outside_id(conn, value);
        }
        if (call != nullptr) {
            d.call = call->id;
            if (inside_value) {
                d.rewrite(offset, outbound ? call->public_call_id : call->inside_call_id);
            }
            return true;
        }
        // A call that ended while the peers may still talk about it.
        const auto* ended = inside_value ? CallTable::find_ended(conn, outbound, !outbound, value)
                                         : CallTable::find_ended(conn, false, false, value);
        // Its public Call ID may have gone to another call at that peer since:
        // then it names that call, not this one.
        const bool reused = ended != nullptr && outbound && inside_value &&
                            table_.find_inbound(conn.key.outside_address, table_.public_address_of(conn),
                                                ended->public_call_id) != nullptr;
        if (ended != nullptr && !reused) {
            counters_.add(EventCounter::control_messages_of_ended_calls);
            d.ignore = true;  // no call to change
            if (inside_value) {
                d.rewrite(offset, outbound ? ended->public_call_id : ended->inside_call_id);
            }
            return true;
        }
        return false;
    };
    auto neutralise = [&](std::size_t offset) {
        // It names no call of this connection: it must not reach the other
        // side as it is (another user's public Call ID, say). Public Call IDs
        // are never 0, so 0 names no call there.
        d.ignore = true;
        d.rewrite(offset, 0);
        counters_.drop(DropReason::control_unknown_call_id);
        counters_.add(EventCounter::control_call_ids_neutralised);
        conn.violations += 1;
        if (observer_ != nullptr) {
            observer_->control_violation(conn, DropReason::control_unknown_call_id, spec.name, false);
        }
    };
    if (ids.own) {
        if (!decide(spec.own_call_id_offset, *ids.own, true) &&
            !(either_id && decide(spec.own_call_id_offset, *ids.own, false))) {
            neutralise(spec.own_call_id_offset);
        }
    }
    if (ids.peer && !decide(spec.peer_call_id_offset, *ids.peer, false)) {
        neutralise(spec.peer_call_id_offset);
    }
    return d;
}

ControlInspector::Outcome ControlInspector::message_complete(ControlConnection& conn, Direction dir,
                                                             const pptp::ControlHeader& header,
                                                             std::span<const std::uint8_t> prefix,
                                                             std::uint64_t call_serial) {
    Outcome o;
    Call* call = call_serial == 0 ? nullptr : table_.find_call(call_serial);
    switch (static_cast<ControlType>(header.control_type)) {
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
        case ControlType::IncomingCallReply:
            // The call its request named, never one its own Call ID repeats.
            if (call != nullptr) {
                if (pptp::read_result_code(header.control_type, prefix) == pptp::kCallResultConnected) {
                    table_.mark_established(*call);
                } else {
                    table_.remove_call(*call, TeardownReason::CallRejected);
                }
            }
            break;
        case ControlType::CallClearRequest:
            if (call != nullptr) {
                call->state = CallState::Clearing;
                call->last_activity = table_.now();
            }
            break;
        case ControlType::CallDisconnectNotify:
            if (call != nullptr) {
                table_.remove_call(*call, TeardownReason::CallDisconnectNotify);
            }
            break;
        default: break;
    }
    return o;
}

}  // namespace nat
