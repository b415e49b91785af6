#include "pptp/inet.hpp"

#include <arpa/inet.h>

#include <array>
#include <cstring>

#include "pptp/bytes.hpp"

namespace pptp {

Ipv4Parse parse_ipv4(std::span<const std::uint8_t> packet) noexcept {
    Ipv4Parse result;
    if (packet.size() < 20) {
        result.error = Ipv4Error::Truncated;
        return result;
    }
    const std::uint8_t* p = packet.data();
    if ((p[0] >> 4U) != 4) {
        result.error = Ipv4Error::NotIpv4;
        return result;
    }
    Ipv4Header& h = result.header;
    h.header_length = static_cast<std::size_t>(p[0] & 0x0FU) * 4U;
    h.total_length = load_be16(p + 2);
    if (h.header_length < 20 || h.header_length > packet.size()) {
        result.error = Ipv4Error::BadHeaderLength;
        return result;
    }
    if (h.total_length < h.header_length || h.total_length > packet.size()) {
        result.error = Ipv4Error::BadTotalLength;
        return result;
    }
    const std::uint16_t fragment = load_be16(p + 6);
    h.is_fragment = (fragment & 0x3FFFU) != 0;  // MF flag or offset
    h.protocol = p[9];
    h.source = load_be32(p + kIpv4SourceOffset);
    h.destination = load_be32(p + kIpv4DestinationOffset);
    return result;
}

std::optional<TcpHeader> parse_tcp(std::span<const std::uint8_t> segment) noexcept {
    if (segment.size() < 20) {
        return std::nullopt;
    }
    const std::uint8_t* p = segment.data();
    TcpHeader h;
    h.source_port = load_be16(p);
    h.destination_port = load_be16(p + 2);
    h.sequence = load_be32(p + 4);
    h.acknowledgement = load_be32(p + 8);
    h.header_length = static_cast<std::size_t>(p[12] >> 4U) * 4U;
    if (h.header_length < 20 || h.header_length > segment.size()) {
        return std::nullopt;
    }
    const std::uint8_t flags = p[13];
    h.fin = (flags & 0x01U) != 0;
    h.syn = (flags & 0x02U) != 0;
    h.rst = (flags & 0x04U) != 0;
    h.ack = (flags & 0x10U) != 0;
    return h;
}

namespace {
std::uint16_t fold(std::uint32_t sum) noexcept {
    while ((sum >> 16U) != 0) {
        sum = (sum & 0xFFFFU) + (sum >> 16U);
    }
    return static_cast<std::uint16_t>(sum);
}
}  // namespace

std::uint16_t ones_complement_sum(std::span<const std::uint8_t> bytes, std::uint32_t initial) noexcept {
    std::uint64_t sum = initial;
    std::size_t i = 0;
    for (; i + 1 < bytes.size(); i += 2) {
        sum += load_be16(bytes.data() + i);
    }
    if (i < bytes.size()) {
        sum += static_cast<std::uint32_t>(bytes[i]) << 8U;
    }
    while ((sum >> 16U) != 0) {
        sum = (sum & 0xFFFFU) + (sum >> 16U);
    }
    return static_cast<std::uint16_t>(sum);
}

std::uint16_t ipv4_header_checksum(std::span<const std::uint8_t> header) noexcept {
    std::uint32_t sum = ones_complement_sum(header.first(kIpv4ChecksumOffset));
    sum += ones_complement_sum(header.subspan(kIpv4ChecksumOffset + 2));
    return static_cast<std::uint16_t>(~fold(sum));
}

std::uint16_t tcp_checksum_ipv4(std::uint32_t source, std::uint32_t destination,
                                std::span<const std::uint8_t> segment) noexcept {
    std::uint32_t sum = (source >> 16U) + (source & 0xFFFFU) + (destination >> 16U) + (destination & 0xFFFFU) +
                        kIpProtoTcp + static_cast<std::uint32_t>(segment.size());
    sum = fold(sum);
    sum += ones_complement_sum(segment.first(std::min(segment.size(), kTcpChecksumOffset)));
    if (segment.size() > kTcpChecksumOffset + 2) {
        sum += ones_complement_sum(segment.subspan(kTcpChecksumOffset + 2));
    }
    return static_cast<std::uint16_t>(~fold(sum));
}

bool tcp_checksum_valid_ipv4(std::uint32_t source, std::uint32_t destination,
                             std::span<const std::uint8_t> segment) noexcept {
    if (segment.size() < 20) {
        return false;
    }
    std::uint32_t sum = (source >> 16U) + (source & 0xFFFFU) + (destination >> 16U) + (destination & 0xFFFFU) +
                        kIpProtoTcp + static_cast<std::uint32_t>(segment.size());
    sum = fold(sum) + ones_complement_sum(segment);
    return fold(sum) == 0xFFFFU;
}

void adjust_checksum(std::uint8_t* checksum_field, std::span<const std::uint8_t> old_words,
                     std::span<const std::uint8_t> new_words) noexcept {
    const std::uint16_t stored = load_be16(checksum_field);
    std::uint32_t sum = static_cast<std::uint16_t>(~stored);
    sum += static_cast<std::uint16_t>(~ones_complement_sum(old_words));
    sum += ones_complement_sum(new_words);
    store_be16(checksum_field, static_cast<std::uint16_t>(~fold(sum)));
}

bool patch_with_checksum(std::span<std::uint8_t> region, std::size_t offset, std::span<const std::uint8_t> new_bytes,
                         std::size_t checksum_offset) noexcept {
    if (offset > region.size() || new_bytes.size() > region.size() - offset || checksum_offset + 2 > region.size() ||
        new_bytes.size() > 8) {
        return false;
    }
    // Take the 16-bit-aligned window that covers the patch, so the old and new
    // word sums line up with the words the checksum was computed over.
    const std::size_t window_start = offset & ~static_cast<std::size_t>(1);
    const std::size_t window_end =
        std::min(region.size(), (offset + new_bytes.size() + 1) & ~static_cast<std::size_t>(1));
    const std::size_t window_len = window_end - window_start;
    std::array<std::uint8_t, 10> old_window{};
    std::memcpy(old_window.data(), region.data() + window_start, window_len);
    std::memcpy(region.data() + offset, new_bytes.data(), new_bytes.size());
    adjust_checksum(region.data() + checksum_offset, std::span<const std::uint8_t>(old_window.data(), window_len),
                    std::span<const std::uint8_t>(region.data() + window_start, window_len));
    return true;
}

std::string format_ipv4(std::uint32_t address) {
    std::array<char, INET_ADDRSTRLEN> text{};
    const std::uint32_t network = htonl(address);
    inet_ntop(AF_INET, &network, text.data(), text.size());
    return text.data();
}

std::optional<std::uint32_t> parse_ipv4_address(const std::string& text) {
    in_addr addr{};
    if (inet_pton(AF_INET, text.c_str(), &addr) != 1) {
        return std::nullopt;
    }
    return ntohl(addr.s_addr);
}

}  // namespace pptp
