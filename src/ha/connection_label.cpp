#include "ha/connection_label.hpp"

namespace ha {
namespace {

// Layout (16 bytes):
//   0      magic
//   1      version (high nibble) | opened_from_outside (bit 0) | PNS side + 1 (bits 1-2)
//   2      call count (bits 0-1) | outgoing of call 0 (bit 4), of call 1 (bit 5)
//   3      CRC-8 of the other 15 bytes
//   4-9    call 0: inside, public, outside Call ID (big endian)
//   10-15  call 1
constexpr std::uint8_t kMagic = 0xB7;
constexpr std::uint8_t kVersion = 1;
constexpr std::size_t kChecksumByte = 3;
constexpr std::size_t kFirstCallByte = 4;
constexpr std::size_t kCallBytes = 6;

std::uint8_t crc8(std::span<const std::uint8_t, kLabelBytes> bytes) noexcept {
    std::uint8_t crc = 0;
    for (std::size_t i = 0; i < kLabelBytes; ++i) {
        if (i == kChecksumByte) {
            continue;
        }
        crc ^= bytes[i];
        for (int bit = 0; bit < 8; ++bit) {
            crc = static_cast<std::uint8_t>((crc & 0x80U) != 0 ? (crc << 1U) ^ 0x07U : crc << 1U);
        }
    }
    return crc;
}

void put16(LabelBytes& out, std::size_t at, std::uint16_t value) noexcept {
    out[at] = static_cast<std::uint8_t>(value >> 8U);
    out[at + 1] = static_cast<std::uint8_t>(value & 0xFFU);
}

std::uint16_t get16(std::span<const std::uint8_t, kLabelBytes> in, std::size_t at) noexcept {
    return static_cast<std::uint16_t>((in[at] << 8U) | in[at + 1]);
}

}  // namespace

std::string_view label_error_name(LabelError error) noexcept {
    switch (error) {
        case LabelError::None: return "none";
        case LabelError::NotOurs: return "not-ours";
        case LabelError::Version: return "unknown-version";
        case LabelError::Checksum: return "bad-checksum";
        case LabelError::Malformed: return "malformed";
    }
    return "malformed";
}

LabelBytes encode_label(const ConnectionLabel& label) noexcept {
    LabelBytes out{};
    const std::uint8_t count = label.call_count > ConnectionLabel::kMaxCalls
                                   ? static_cast<std::uint8_t>(ConnectionLabel::kMaxCalls)
                                   : label.call_count;
    const std::uint8_t pns = label.pns_side == 0 ? 1 : label.pns_side == 1 ? 2 : 0;
    out[0] = kMagic;
    out[1] = static_cast<std::uint8_t>((kVersion << 4U) | (label.opened_from_outside ? 1U : 0U) | (pns << 1U));
    out[2] = count;
    for (std::size_t i = 0; i < count; ++i) {
        const LabelledCall& call = label.calls[i];
        if (call.outgoing) {
            out[2] = static_cast<std::uint8_t>(out[2] | (0x10U << i));
        }
        const std::size_t at = kFirstCallByte + i * kCallBytes;
        put16(out, at, call.inside_call_id);
        put16(out, at + 2, call.public_call_id);
        put16(out, at + 4, call.outside_call_id);
    }
    out[kChecksumByte] = crc8(out);
    return out;
}

std::optional<ConnectionLabel> decode_label(std::span<const std::uint8_t, kLabelBytes> bytes,
                                            LabelError& error) noexcept {
    if (bytes[0] != kMagic) {
        error = LabelError::NotOurs;
        return std::nullopt;
    }
    if ((bytes[1] >> 4U) != kVersion) {
        error = LabelError::Version;
        return std::nullopt;
    }
    if (crc8(bytes) != bytes[kChecksumByte]) {
        error = LabelError::Checksum;
        return std::nullopt;
    }
    ConnectionLabel label;
    const unsigned flags = bytes[1] & 0x0FU;
    const unsigned pns = (flags >> 1U) & 0x3U;
    const unsigned count = bytes[2] & 0x3U;
    // Bits no version-1 writer sets, a PNS side of 3, more calls than fit, or
    // bytes set past the last call: not something we wrote.
    bool malformed = (flags & 0x8U) != 0 || pns == 3 || count > ConnectionLabel::kMaxCalls || (bytes[2] & 0xCCU) != 0 ||
                     (bytes[2] >> 4U) >= (1U << count);
    for (std::size_t i = kFirstCallByte + count * kCallBytes; i < kLabelBytes; ++i) {
        malformed = malformed || bytes[i] != 0;
    }
    if (malformed) {
        error = LabelError::Malformed;
        return std::nullopt;
    }
    label.opened_from_outside = (flags & 0x1U) != 0;
    label.pns_side = static_cast<std::int8_t>(static_cast<int>(pns) - 1);
    label.call_count = static_cast<std::uint8_t>(count);
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t at = kFirstCallByte + i * kCallBytes;
        label.calls[i] = {get16(bytes, at), get16(bytes, at + 2), get16(bytes, at + 4),
                          ((bytes[2] >> (4U + i)) & 1U) != 0};
    }
    error = LabelError::None;
    return label;
}

}  // namespace ha
