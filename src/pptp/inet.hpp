// IPv4 and TCP header views and Internet checksums (RFC 791, 793, 1071, 1624).
// Pure functions over bytes; they never read past the span they are given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace pptp {

inline constexpr std::uint8_t kIpProtoTcp = 6;
inline constexpr std::uint8_t kIpProtoGre = 47;

struct Ipv4Header {
    std::size_t header_length = 0;
    std::size_t total_length = 0;
    std::uint8_t protocol = 0;
    std::uint32_t source = 0;       // host byte order
    std::uint32_t destination = 0;  // host byte order
    bool is_fragment = false;       // MF set or fragment offset non-zero
};

enum class Ipv4Error : std::uint8_t { None, Truncated, NotIpv4, BadHeaderLength, BadTotalLength };

struct Ipv4Parse {
    Ipv4Error error = Ipv4Error::None;
    Ipv4Header header{};
};

[[nodiscard]] Ipv4Parse parse_ipv4(std::span<const std::uint8_t> packet) noexcept;

struct TcpHeader {
    std::uint16_t source_port = 0;
    std::uint16_t destination_port = 0;
    std::uint32_t sequence = 0;
    std::uint32_t acknowledgement = 0;  // meaningful when `ack`
    std::size_t header_length = 0;
    bool syn = false;
    bool fin = false;
    bool rst = false;
    bool ack = false;
};

inline constexpr std::size_t kTcpChecksumOffset = 16;
inline constexpr std::size_t kIpv4ChecksumOffset = 10;
inline constexpr std::size_t kIpv4SourceOffset = 12;
inline constexpr std::size_t kIpv4DestinationOffset = 16;

// `segment` is the TCP header and payload.
[[nodiscard]] std::optional<TcpHeader> parse_tcp(std::span<const std::uint8_t> segment) noexcept;

// One's-complement sum of `bytes` folded to 16 bits (not inverted).
[[nodiscard]] std::uint16_t ones_complement_sum(std::span<const std::uint8_t> bytes,
                                                std::uint32_t initial = 0) noexcept;
// Full IPv4 header checksum as it belongs in the header (checksum field taken as zero).
[[nodiscard]] std::uint16_t ipv4_header_checksum(std::span<const std::uint8_t> header) noexcept;
// True when the TCP checksum of `segment` (header and payload) is right for
// these addresses: what the receiver's stack checks before it takes a byte.
[[nodiscard]] bool tcp_checksum_valid_ipv4(std::uint32_t source, std::uint32_t destination,
                                           std::span<const std::uint8_t> segment) noexcept;
// Full TCP checksum with the IPv4 pseudo header (checksum field taken as zero).
[[nodiscard]] std::uint16_t tcp_checksum_ipv4(std::uint32_t source, std::uint32_t destination,
                                              std::span<const std::uint8_t> segment) noexcept;

// Overwrites bytes of `region` at `offset` and updates the 16-bit checksum stored
// at `checksum_offset` of the same region incrementally (RFC 1624, eqn. 3).
// Word alignment is relative to the region start, as in the checksum itself.
// Odd offsets are fine. Returns false (and changes nothing) if out of range.
bool patch_with_checksum(std::span<std::uint8_t> region, std::size_t offset, std::span<const std::uint8_t> new_bytes,
                         std::size_t checksum_offset) noexcept;

// Same, when the checksum lives in another buffer (the IPv4 header checksum is
// in the same region; the TCP pseudo header includes addresses in the IP header).
void adjust_checksum(std::uint8_t* checksum_field, std::span<const std::uint8_t> old_words,
                     std::span<const std::uint8_t> new_words) noexcept;

[[nodiscard]] std::string format_ipv4(std::uint32_t address);
[[nodiscard]] std::optional<std::uint32_t> parse_ipv4_address(const std::string& text);

}  // namespace pptp
