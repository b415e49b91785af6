#include "pptp/control_message.hpp"

#include <array>

#include "pptp/bytes.hpp"

namespace pptp {
namespace {

// Index = control message type. Sizes and field offsets from RFC 2637 2.1-2.15.
constexpr std::array<MessageSpec, kMaxControlType + 1> kSpecs{{
    {"invalid", 0, Sender::Either, 0, 0},
    {"Start-Control-Connection-Request", 156, Sender::Either, 0, 0},
    {"Start-Control-Connection-Reply", 156, Sender::Either, 0, 0},
    {"Stop-Control-Connection-Request", 16, Sender::Either, 0, 0},
    {"Stop-Control-Connection-Reply", 16, Sender::Either, 0, 0},
    {"Echo-Request", 16, Sender::Either, 0, 0},
    {"Echo-Reply", 20, Sender::Either, 0, 0},
    {"Outgoing-Call-Request", 168, Sender::Pns, 12, 0},
    {"Outgoing-Call-Reply", 32, Sender::Pac, 12, 14},
    {"Incoming-Call-Request", 220, Sender::Pac, 12, 0},
    {"Incoming-Call-Reply", 24, Sender::Pns, 12, 14},
    {"Incoming-Call-Connected", 28, Sender::Pac, 0, 12},
    {"Call-Clear-Request", 16, Sender::Pns, 12, 0},
    // 2.13: "Call ID: ... assigned by the PAC to this call": the sender's own.
    {"Call-Disconnect-Notify", 148, Sender::Pac, 12, 0},
    {"WAN-Error-Notify", 40, Sender::Pac, 0, 12},
    {"Set-Link-Info", 24, Sender::Pns, 0, 12},
}};

}  // namespace

std::optional<MessageSpec> message_spec(std::uint16_t control_type) noexcept {
    if (control_type == 0 || control_type > kMaxControlType) {
        return std::nullopt;
    }
    return kSpecs[control_type];
}

std::string_view control_type_name(std::uint16_t control_type) noexcept {
    if (control_type == 0 || control_type > kMaxControlType) {
        return "unknown";
    }
    return kSpecs[control_type].name;
}

std::string_view header_error_name(HeaderError e) noexcept {
    switch (e) {
        case HeaderError::None: return "none";
        case HeaderError::BadLength: return "bad_length";
        case HeaderError::NotControl: return "not_control_message";
        case HeaderError::BadMagic: return "bad_magic_cookie";
        case HeaderError::UnknownType: return "unknown_message_type";
        case HeaderError::BadReserved: return "bad_reserved_field";
    }
    return "unknown";
}

HeaderCheck check_header(std::span<const std::uint8_t> bytes) noexcept {
    HeaderCheck result;
    if (bytes.size() < kHeaderSize) {
        result.error = HeaderError::BadLength;
        return result;
    }
    const std::uint8_t* p = bytes.data();
    const std::uint16_t length = load_be16(p);
    const std::uint16_t pptp_type = load_be16(p + 2);
    const std::uint32_t magic = load_be32(p + 4);
    const std::uint16_t control_type = load_be16(p + 8);
    const std::uint16_t reserved0 = load_be16(p + 10);

    // Magic first: it is the one field that says "this is PPTP at all".
    if (magic != kMagicCookie) {
        result.error = HeaderError::BadMagic;
    } else if (pptp_type != kControlMessage) {
        result.error = HeaderError::NotControl;
    } else if (auto spec = message_spec(control_type); !spec) {
        result.error = HeaderError::UnknownType;
    } else if (length < spec->size || length > kMaxMessageLength) {
        result.error = HeaderError::BadLength;
    } else if (reserved0 != 0) {
        result.error = HeaderError::BadReserved;
    } else {
        result.header = ControlHeader{length, control_type, *spec};
    }
    return result;
}

CallIdFields read_call_ids(const MessageSpec& spec, std::span<const std::uint8_t> msg) noexcept {
    CallIdFields fields;
    if (msg.size() < kCallIdRegionEnd) {
        return fields;
    }
    if (spec.own_call_id_offset != 0) {
        fields.own = load_be16(msg.data() + spec.own_call_id_offset);
    }
    if (spec.peer_call_id_offset != 0) {
        fields.peer = load_be16(msg.data() + spec.peer_call_id_offset);
    }
    return fields;
}

std::uint16_t read_protocol_version(std::span<const std::uint8_t> msg) noexcept {
    return msg.size() >= 14 ? load_be16(msg.data() + 12) : 0;
}

std::optional<std::uint8_t> read_result_code(std::uint16_t control_type, std::span<const std::uint8_t> msg) noexcept {
    std::size_t offset = 0;
    switch (static_cast<ControlType>(control_type)) {
        case ControlType::StartControlConnectionReply: offset = 14; break;
        case ControlType::OutgoingCallReply:
        case ControlType::IncomingCallReply: offset = 16; break;
        default: return std::nullopt;
    }
    if (msg.size() <= offset) {
        return std::nullopt;
    }
    return msg[offset];
}

}  // namespace pptp
