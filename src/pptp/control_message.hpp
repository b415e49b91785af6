// PPTP control messages (RFC 2637 section 2): header validation, the fixed size
// of every message type, and where each type carries Call IDs. Pure functions
// over bytes: no I/O, no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace pptp {

inline constexpr std::uint32_t kMagicCookie = 0x1A2B3C4DU;
inline constexpr std::uint16_t kControlMessage = 1;  // PPTP Message Type 1
inline constexpr std::size_t kHeaderSize = 12;       // length .. reserved0
// Every Call ID field of every message lies in bytes [12, 16): the smallest
// message is 16 bytes, so these bytes always exist once the header is valid.
inline constexpr std::size_t kCallIdRegionEnd = 16;
// RFC 2637 messages have fixed sizes; allow room for vendor padding but
// refuse lengths no real peer sends so a lying length cannot swallow a stream.
inline constexpr std::size_t kMaxMessageLength = 1024;
inline constexpr std::uint16_t kProtocolVersion1 = 0x0100;

enum class ControlType : std::uint16_t {
    StartControlConnectionRequest = 1,
    StartControlConnectionReply = 2,
    StopControlConnectionRequest = 3,
    StopControlConnectionReply = 4,
    EchoRequest = 5,
    EchoReply = 6,
    OutgoingCallRequest = 7,
    OutgoingCallReply = 8,
    IncomingCallRequest = 9,
    IncomingCallReply = 10,
    IncomingCallConnected = 11,
    CallClearRequest = 12,
    CallDisconnectNotify = 13,
    WanErrorNotify = 14,
    SetLinkInfo = 15,
};

inline constexpr std::uint16_t kMaxControlType = 15;

// Which peer may send a message (RFC 2637 2.1 - 2.15).
enum class Sender : std::uint8_t { Either, Pns, Pac };

struct MessageSpec {
    std::string_view name;
    std::uint16_t size;  // exact RFC 2637 size, header included
    Sender sender;
    // Offset of the sender's own "Call ID" field, or 0 if none.
    std::uint8_t own_call_id_offset;
    // Offset of the "Peer's Call ID" field (the receiver's ID), or 0 if none.
    std::uint8_t peer_call_id_offset;
};

// The spec of a control message type, or nullopt for an unknown type.
[[nodiscard]] std::optional<MessageSpec> message_spec(std::uint16_t control_type) noexcept;
[[nodiscard]] std::string_view control_type_name(std::uint16_t control_type) noexcept;

enum class HeaderError : std::uint8_t {
    None,
    BadLength,    // below the message's RFC size or above kMaxMessageLength
    NotControl,   // PPTP Message Type other than 1 (control)
    BadMagic,     // magic cookie is not 0x1A2B3C4D
    UnknownType,  // control message type outside 1..15
    BadReserved,  // Reserved0 must be 0
};

[[nodiscard]] std::string_view header_error_name(HeaderError e) noexcept;

struct ControlHeader {
    std::uint16_t length = 0;
    std::uint16_t control_type = 0;
    MessageSpec spec{};
};

struct HeaderCheck {
    HeaderError error = HeaderError::None;
    ControlHeader header{};
};

// Validates the 12-byte header. `bytes` must hold at least kHeaderSize bytes.
[[nodiscard]] HeaderCheck check_header(std::span<const std::uint8_t> bytes) noexcept;

// Typed reads of fields the fixup cares about. `msg` must hold at least the
// first kCallIdRegionEnd bytes of a message whose header passed check_header.
struct CallIdFields {
    std::optional<std::uint16_t> own;   // sender's Call ID
    std::optional<std::uint16_t> peer;  // receiver's Call ID
};
// End of the bytes that hold the message's Call IDs (14 or 16), 0 if none.
[[nodiscard]] constexpr std::size_t call_id_region_end(const MessageSpec& spec) noexcept {
    const std::size_t last =
        spec.own_call_id_offset > spec.peer_call_id_offset ? spec.own_call_id_offset : spec.peer_call_id_offset;
    return last == 0 ? 0 : last + 2;
}

[[nodiscard]] CallIdFields read_call_ids(const MessageSpec& spec, std::span<const std::uint8_t> msg) noexcept;

// Protocol Version of Start-Control-Connection-Request/Reply (offset 12).
[[nodiscard]] std::uint16_t read_protocol_version(std::span<const std::uint8_t> msg) noexcept;
// Result Code of Start-Control-Connection-Reply (offset 14),
// Outgoing-Call-Reply and Incoming-Call-Reply (offset 16). Needs the whole message.
[[nodiscard]] std::optional<std::uint8_t> read_result_code(std::uint16_t control_type,
                                                           std::span<const std::uint8_t> msg) noexcept;

// Result codes that mean "the call is up" (RFC 2637 2.8, 2.10: 1 = Connected / Accept).
inline constexpr std::uint8_t kCallResultConnected = 1;
// Start-Control-Connection-Reply result 1 = successful channel establishment.
inline constexpr std::uint8_t kStartResultOk = 1;

}  // namespace pptp
