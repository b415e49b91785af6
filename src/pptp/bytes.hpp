// Big-endian loads and stores over raw packet bytes. Wire formats here are all
// network order; these helpers keep the byte order out of the parsers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pptp {

[[nodiscard]] constexpr std::uint16_t load_be16(const std::uint8_t* p) noexcept {
    return static_cast<std::uint16_t>((p[0] << 8U) | p[1]);
}

[[nodiscard]] constexpr std::uint32_t load_be32(const std::uint8_t* p) noexcept {
    return (static_cast<std::uint32_t>(p[0]) << 24U) | (static_cast<std::uint32_t>(p[1]) << 16U) |
           (static_cast<std::uint32_t>(p[2]) << 8U) | static_cast<std::uint32_t>(p[3]);
}

constexpr void store_be16(std::uint8_t* p, std::uint16_t v) noexcept {
    p[0] = static_cast<std::uint8_t>(v >> 8U);
    p[1] = static_cast<std::uint8_t>(v & 0xFFU);
}

constexpr void store_be32(std::uint8_t* p, std::uint32_t v) noexcept {
    p[0] = static_cast<std::uint8_t>(v >> 24U);
    p[1] = static_cast<std::uint8_t>((v >> 16U) & 0xFFU);
    p[2] = static_cast<std::uint8_t>((v >> 8U) & 0xFFU);
    p[3] = static_cast<std::uint8_t>(v & 0xFFU);
}

}  // namespace pptp
