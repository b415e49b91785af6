// Enhanced GRE as PPTP uses it (RFC 2637 section 4.1): version 1, protocol
// 0x880B, Key present (payload length + Call ID), no checksum, no routing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace pptp {

inline constexpr std::uint16_t kGreProtocolPpp = 0x880B;
inline constexpr std::size_t kGreCallIdOffset = 6;
inline constexpr std::size_t kGreMinHeader = 8;

enum class GreError : std::uint8_t {
    None,
    Truncated,         // shorter than its own header
    NotVersion1,       // version field is not 1 (plain GRE, e.g. IP tunnels)
    NotPpp,            // protocol type is not 0x880B
    ChecksumPresent,   // C bit set: not allowed in PPTP GRE
    RoutingPresent,    // R bit or strict source route bit set
    KeyMissing,        // K bit clear: no Call ID
    BadFlags,          // recursion control or reserved flag bits set
    BadPayloadLength,  // payload length field larger than the bytes present
};

[[nodiscard]] std::string_view gre_error_name(GreError e) noexcept;

struct GreHeader {
    std::uint16_t payload_length = 0;
    std::uint16_t call_id = 0;
    bool has_sequence = false;
    bool has_ack = false;
    std::size_t header_length = 0;
};

struct GreParse {
    GreError error = GreError::None;
    GreHeader header{};
};

// `bytes` is the GRE header and everything after it (the IP payload).
[[nodiscard]] GreParse parse_gre(std::span<const std::uint8_t> bytes) noexcept;

}  // namespace pptp
