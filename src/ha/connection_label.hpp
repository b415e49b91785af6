// The calls of one PPTP control connection as a conntrack label (128 bits),
// for a standby gateway: conntrackd syncs the label with the connection's
// conntrack entry, and the standby's agent adopts the calls from it. The
// addresses and ports are the entry's own tuples; the label holds what the
// kernel cannot know. Pure functions over bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace ha {

inline constexpr std::size_t kLabelBytes = 16;  // conntrack's label space
using LabelBytes = std::array<std::uint8_t, kLabelBytes>;

struct LabelledCall {
    std::uint16_t inside_call_id = 0;
    std::uint16_t public_call_id = 0;
    std::uint16_t outside_call_id = 0;
    bool outgoing = true;  // Outgoing-Call-Request (else Incoming-Call-Request)
    bool operator==(const LabelledCall&) const = default;
};

struct ConnectionLabel {
    // Two calls fit; a connection with more has the rest on this gateway only.
    static constexpr std::size_t kMaxCalls = 2;
    bool opened_from_outside = false;  // the outside peer opened it (a port forward)
    // Which direction's sender is the PNS, as nat::ControlConnection::pns_side
    // (0: the inside peer, 1: the outside peer), -1 when unknown.
    std::int8_t pns_side = -1;
    std::uint8_t call_count = 0;
    std::array<LabelledCall, kMaxCalls> calls{};
    bool operator==(const ConnectionLabel&) const = default;
};

enum class LabelError : std::uint8_t { None, NotOurs, Version, Checksum, Malformed };
[[nodiscard]] std::string_view label_error_name(LabelError error) noexcept;

// Byte i, bit j of the result is conntrack label bit 8*i + j.
[[nodiscard]] LabelBytes encode_label(const ConnectionLabel& label) noexcept;

// nullopt and `error` set when the bytes are not a label of ours (another
// user's labels, all zero) or are damaged.
[[nodiscard]] std::optional<ConnectionLabel> decode_label(std::span<const std::uint8_t, kLabelBytes> bytes,
                                                          LabelError& error) noexcept;

}  // namespace ha
