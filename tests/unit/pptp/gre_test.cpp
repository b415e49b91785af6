#include "pptp/gre.hpp"

#include <gtest/gtest.h>

#include "support/packets.hpp"

using namespace pptp;
using namespace testpkt;

namespace {

Bytes gre_only(std::uint16_t flags, std::uint16_t proto, std::uint16_t call_id, const Bytes& payload) {
    Bytes p = gre_packet(1, 2, call_id, payload, flags, proto);
    return Bytes(p.begin() + 20, p.end());
}

TEST(Gre, ParsesEnhancedGreWithSequence) {
    const Bytes g = gre_only(0x3001, 0x880B, 0xABCD, Bytes(10, 0xAA));
    const auto r = parse_gre(g);
    ASSERT_EQ(r.error, GreError::None);
    EXPECT_EQ(r.header.call_id, 0xABCD);
    EXPECT_EQ(r.header.payload_length, 10);
    EXPECT_TRUE(r.header.has_sequence);
    EXPECT_FALSE(r.header.has_ack);
    EXPECT_EQ(r.header.header_length, 12u);
}

TEST(Gre, ParsesAckOnlyPacket) {
    Bytes g(12);
    put16(g, 0, 0x2081);  // K, A, version 1
    put16(g, 2, 0x880B);
    put16(g, 4, 0);
    put16(g, 6, 5);
    const auto r = parse_gre(g);
    ASSERT_EQ(r.error, GreError::None);
    EXPECT_TRUE(r.header.has_ack);
    EXPECT_EQ(r.header.header_length, 12u);
}

TEST(Gre, RejectsEachNonPptpForm) {
    EXPECT_EQ(parse_gre(gre_only(0x3000, 0x880B, 1, {1})).error, GreError::NotVersion1);
    EXPECT_EQ(parse_gre(gre_only(0x3001, 0x0800, 1, {1})).error, GreError::NotPpp);
    EXPECT_EQ(parse_gre(gre_only(0xB001, 0x880B, 1, {1})).error, GreError::ChecksumPresent);
    EXPECT_EQ(parse_gre(gre_only(0x7001, 0x880B, 1, {1})).error, GreError::RoutingPresent);
    EXPECT_EQ(parse_gre(gre_only(0x3801, 0x880B, 1, {1})).error, GreError::RoutingPresent);
    EXPECT_EQ(parse_gre(gre_only(0x1001, 0x880B, 1, {1})).error, GreError::KeyMissing);
    EXPECT_EQ(parse_gre(gre_only(0x3101, 0x880B, 1, {1})).error, GreError::BadFlags);
    EXPECT_EQ(parse_gre(gre_only(0x3009, 0x880B, 1, {1})).error, GreError::BadFlags);
}

TEST(Gre, RejectsTruncationAndLyingLength) {
    Bytes g = gre_only(0x3001, 0x880B, 1, Bytes(4, 0));
    EXPECT_EQ(parse_gre(std::span<const std::uint8_t>(g.data(), 3)).error, GreError::Truncated);
    EXPECT_EQ(parse_gre(std::span<const std::uint8_t>(g.data(), 10)).error, GreError::Truncated);
    put16(g, 4, 5);  // claims one byte more than present
    EXPECT_EQ(parse_gre(g).error, GreError::BadPayloadLength);
}

}  // namespace
