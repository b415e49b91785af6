#include "pptp/inet.hpp"

#include <gtest/gtest.h>

#include <random>

#include "support/packets.hpp"

using namespace pptp;
using namespace testpkt;

namespace {

TEST(Inet, ParsesIpv4AndTcp) {
    const Bytes p = tcp_packet(0xC6120B01, 0xCB00710A, 40000, 1723, 1000, ACK | PSH, Bytes(5, 1));
    const auto ip = parse_ipv4(p);
    ASSERT_EQ(ip.error, Ipv4Error::None);
    EXPECT_EQ(ip.header.protocol, kIpProtoTcp);
    EXPECT_EQ(ip.header.source, 0xC6120B01u);
    EXPECT_FALSE(ip.header.is_fragment);
    const auto tcp = parse_tcp(std::span<const std::uint8_t>(p).subspan(20));
    ASSERT_TRUE(tcp);
    EXPECT_EQ(tcp->destination_port, 1723);
    EXPECT_EQ(tcp->sequence, 1000u);
    EXPECT_TRUE(tcp->ack);
    EXPECT_FALSE(tcp->syn);
}

TEST(Inet, RejectsBadIpv4) {
    Bytes p = tcp_packet(1, 2, 3, 4, 5, ACK, {});
    EXPECT_EQ(parse_ipv4(std::span<const std::uint8_t>(p.data(), 19)).error, Ipv4Error::Truncated);
    Bytes v6 = p;
    v6[0] = 0x65;
    EXPECT_EQ(parse_ipv4(v6).error, Ipv4Error::NotIpv4);
    Bytes ihl = p;
    ihl[0] = 0x44;
    EXPECT_EQ(parse_ipv4(ihl).error, Ipv4Error::BadHeaderLength);
    Bytes total = p;
    put16(total, 2, static_cast<std::uint16_t>(p.size() + 1));
    EXPECT_EQ(parse_ipv4(total).error, Ipv4Error::BadTotalLength);
    Bytes frag = p;
    frag[6] = 0x20;  // MF
    EXPECT_TRUE(parse_ipv4(frag).header.is_fragment);
}

TEST(Inet, FullChecksumsAgreeWithReference) {
    const Bytes p = tcp_packet(0x0A000001, 0x0A000002, 1, 2, 3, ACK, Bytes{1, 2, 3, 4, 5, 6, 7});
    EXPECT_EQ(ipv4_header_checksum(std::span<const std::uint8_t>(p).first(20)), get16(p, 10));
    EXPECT_EQ(tcp_checksum_ipv4(0x0A000001, 0x0A000002, std::span<const std::uint8_t>(p).subspan(20)), get16(p, 36));
}

TEST(Inet, IncrementalPatchKeepsChecksumValidAtAnyOffset) {
    std::mt19937 gen(42);
    auto rng = [&gen] { return static_cast<std::uint32_t>(gen()); };
    for (int round = 0; round < 500; ++round) {
        Bytes payload(1 + rng() % 60);
        for (auto& b : payload) b = static_cast<std::uint8_t>(rng());
        Bytes p = tcp_packet(rng(), rng(), 1000, 1723, rng(), ACK, payload);
        ASSERT_TRUE(tcp_checksum_ok(p));
        std::span<std::uint8_t> segment(p.data() + 20, p.size() - 20);
        const std::size_t n = 1 + rng() % 2;
        const std::size_t offset = 20 + rng() % (payload.size() - (payload.size() >= n ? n : 0) + 1);
        if (offset + n > segment.size()) continue;
        std::uint8_t value[2] = {static_cast<std::uint8_t>(rng()), static_cast<std::uint8_t>(rng())};
        ASSERT_TRUE(patch_with_checksum(segment, offset, std::span<const std::uint8_t>(value, n), kTcpChecksumOffset));
        EXPECT_EQ(segment[offset], value[0]);
        EXPECT_TRUE(tcp_checksum_ok(p)) << "round " << round << " offset " << offset;
    }
}

TEST(Inet, PatchRefusesOutOfRange) {
    Bytes b(10, 0);
    std::uint8_t v[2] = {1, 2};
    EXPECT_FALSE(patch_with_checksum(b, 9, v, 0));
    EXPECT_FALSE(patch_with_checksum(b, 0, v, 9));
}

TEST(Inet, AddressTextRoundTrip) {
    EXPECT_EQ(format_ipv4(0xCB007101), "203.0.113.1");
    EXPECT_EQ(parse_ipv4_address("198.18.0.11"), 0xC612000Bu);
    EXPECT_FALSE(parse_ipv4_address("198.18.0"));
}

}  // namespace
