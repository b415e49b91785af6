#include "pptp/control_message.hpp"

#include <gtest/gtest.h>

#include "support/packets.hpp"

using namespace pptp;
using namespace testpkt;

namespace {

struct Expected {
    std::uint16_t type;
    std::uint16_t size;
    std::uint8_t own;
    std::uint8_t peer;
    Sender sender;
};

// Straight from RFC 2637 sections 2.1-2.15.
constexpr Expected kRfc[] = {
    {1, 156, 0, 0, Sender::Either}, {2, 156, 0, 0, Sender::Either}, {3, 16, 0, 0, Sender::Either},
    {4, 16, 0, 0, Sender::Either},  {5, 16, 0, 0, Sender::Either},  {6, 20, 0, 0, Sender::Either},
    {7, 168, 12, 0, Sender::Pns},   {8, 32, 12, 14, Sender::Pac},   {9, 220, 12, 0, Sender::Pac},
    {10, 24, 12, 14, Sender::Pns},  {11, 28, 0, 12, Sender::Pac},   {12, 16, 12, 0, Sender::Pns},
    {13, 148, 12, 0, Sender::Pac},  {14, 40, 0, 12, Sender::Pac},   {15, 24, 0, 12, Sender::Pns},
};

TEST(ControlMessage, SpecTableMatchesRfc2637) {
    for (const auto& e : kRfc) {
        SCOPED_TRACE(e.type);
        const auto spec = message_spec(e.type);
        ASSERT_TRUE(spec);
        EXPECT_EQ(spec->size, e.size);
        EXPECT_EQ(spec->own_call_id_offset, e.own);
        EXPECT_EQ(spec->peer_call_id_offset, e.peer);
        EXPECT_EQ(spec->sender, e.sender);
        EXPECT_NE(control_type_name(e.type), "unknown");
    }
    EXPECT_FALSE(message_spec(0));
    EXPECT_FALSE(message_spec(16));
}

TEST(ControlMessage, EveryBuilderMessagePassesHeaderCheck) {
    for (const Bytes& m : {sccrq(), sccrp(), stop_request(), stop_reply(), echo_request(1), echo_reply(1), ocrq(1),
                           ocrp(1, 2), icrq(1), icrp(1, 2), iccn(1), ccrq(1), cdn(1), wen(1), sli(1)}) {
        const auto check = check_header(m);
        EXPECT_EQ(check.error, HeaderError::None) << header_error_name(check.error);
        EXPECT_EQ(check.header.length, m.size());
        EXPECT_EQ(check.header.spec.size, m.size());
    }
}

TEST(ControlMessage, RejectsBadMagic) {
    Bytes m = ocrq(7);
    put32(m, 4, 0x1A2B3C4E);
    EXPECT_EQ(check_header(m).error, HeaderError::BadMagic);
}

TEST(ControlMessage, RejectsManagementMessageType) {
    Bytes m = ocrq(7);
    put16(m, 2, 2);
    EXPECT_EQ(check_header(m).error, HeaderError::NotControl);
}

TEST(ControlMessage, RejectsUnknownControlType) {
    Bytes m = ocrq(7);
    put16(m, 8, 16);
    EXPECT_EQ(check_header(m).error, HeaderError::UnknownType);
    put16(m, 8, 0);
    EXPECT_EQ(check_header(m).error, HeaderError::UnknownType);
}

TEST(ControlMessage, RejectsLengthBelowMessageSizeOrAboveLimit) {
    Bytes m = ocrq(7);
    put16(m, 0, 167);
    EXPECT_EQ(check_header(m).error, HeaderError::BadLength);
    put16(m, 0, 11);
    EXPECT_EQ(check_header(m).error, HeaderError::BadLength);
    put16(m, 0, static_cast<std::uint16_t>(kMaxMessageLength + 1));
    EXPECT_EQ(check_header(m).error, HeaderError::BadLength);
    put16(m, 0, 200);  // padded beyond the RFC size: tolerated
    EXPECT_EQ(check_header(m).error, HeaderError::None);
}

TEST(ControlMessage, RejectsNonZeroReserved0) {
    Bytes m = ccrq(7);
    put16(m, 10, 1);
    EXPECT_EQ(check_header(m).error, HeaderError::BadReserved);
}

TEST(ControlMessage, ShortInputIsBadLength) {
    Bytes m = ocrq(7);
    EXPECT_EQ(check_header(std::span<const std::uint8_t>(m.data(), 11)).error, HeaderError::BadLength);
}

TEST(ControlMessage, ReadsCallIdsByRole) {
    const auto reply = ocrp(0x1234, 0xBEEF);
    const auto ids = read_call_ids(*message_spec(8), reply);
    EXPECT_EQ(ids.own, 0x1234);
    EXPECT_EQ(ids.peer, 0xBEEF);
    const auto connected = iccn(0x4242);
    const auto ids2 = read_call_ids(*message_spec(11), connected);
    EXPECT_FALSE(ids2.own);
    EXPECT_EQ(ids2.peer, 0x4242);
    const auto disconnect = cdn(0x0909);
    EXPECT_EQ(read_call_ids(*message_spec(13), disconnect).own, 0x0909);
}

TEST(ControlMessage, ReadsResultCodesAndVersion) {
    EXPECT_EQ(read_result_code(2, sccrp(1)), 1);
    EXPECT_EQ(read_result_code(8, ocrp(1, 2, 3)), 3);
    EXPECT_EQ(read_result_code(10, icrp(1, 2, 2)), 2);
    EXPECT_FALSE(read_result_code(7, ocrq(1)));
    EXPECT_EQ(read_protocol_version(sccrq()), kProtocolVersion1);
}

}  // namespace
