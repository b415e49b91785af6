#include "pptp/gre.hpp"

#include "pptp/bytes.hpp"

namespace pptp {
namespace {
constexpr std::uint16_t kFlagChecksum = 0x8000;
constexpr std::uint16_t kFlagRouting = 0x4000;
constexpr std::uint16_t kFlagKey = 0x2000;
constexpr std::uint16_t kFlagSequence = 0x1000;
constexpr std::uint16_t kFlagStrictRoute = 0x0800;
constexpr std::uint16_t kRecursionMask = 0x0700;
constexpr std::uint16_t kFlagAck = 0x0080;
constexpr std::uint16_t kReservedFlagsMask = 0x0078;
constexpr std::uint16_t kVersionMask = 0x0007;
}  // namespace

std::string_view gre_error_name(GreError e) noexcept {
    switch (e) {
        case GreError::None: return "none";
        case GreError::Truncated: return "gre_truncated";
        case GreError::NotVersion1: return "gre_not_version_1";
        case GreError::NotPpp: return "gre_not_ppp";
        case GreError::ChecksumPresent: return "gre_checksum_present";
        case GreError::RoutingPresent: return "gre_routing_present";
        case GreError::KeyMissing: return "gre_key_missing";
        case GreError::BadFlags: return "gre_bad_flags";
        case GreError::BadPayloadLength: return "gre_bad_payload_length";
    }
    return "unknown";
}

GreParse parse_gre(std::span<const std::uint8_t> bytes) noexcept {
    GreParse result;
    if (bytes.size() < 4) {
        result.error = GreError::Truncated;
        return result;
    }
    const std::uint16_t flags = load_be16(bytes.data());
    const std::uint16_t protocol = load_be16(bytes.data() + 2);
    if ((flags & kVersionMask) != 1) {
        result.error = GreError::NotVersion1;
    } else if (protocol != kGreProtocolPpp) {
        result.error = GreError::NotPpp;
    } else if ((flags & kFlagChecksum) != 0) {
        result.error = GreError::ChecksumPresent;
    } else if ((flags & (kFlagRouting | kFlagStrictRoute)) != 0) {
        result.error = GreError::RoutingPresent;
    } else if ((flags & kFlagKey) == 0) {
        result.error = GreError::KeyMissing;
    } else if ((flags & (kRecursionMask | kReservedFlagsMask)) != 0) {
        result.error = GreError::BadFlags;
    }
    if (result.error != GreError::None) {
        return result;
    }
    GreHeader& h = result.header;
    h.has_sequence = (flags & kFlagSequence) != 0;
    h.has_ack = (flags & kFlagAck) != 0;
    h.header_length = kGreMinHeader + (h.has_sequence ? 4U : 0U) + (h.has_ack ? 4U : 0U);
    if (bytes.size() < h.header_length) {
        result.error = GreError::Truncated;
        return result;
    }
    h.payload_length = load_be16(bytes.data() + 4);
    h.call_id = load_be16(bytes.data() + kGreCallIdOffset);
    if (h.payload_length > bytes.size() - h.header_length) {
        result.error = GreError::BadPayloadLength;
    }
    return result;
}

}  // namespace pptp
