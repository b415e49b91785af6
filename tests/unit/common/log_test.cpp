#include "common/log.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

std::string id_of(std::string_view id) {
    const logging::MessageId mid = logging::message_id(id);
    return {mid.data()};
}

TEST(MessageId, PrefixThenTheIdZeroPaddedToTwelveDigits) {
    EXPECT_EQ(id_of("302017"), "7c1e4a0b9d2f4c38a5e6000000302017");
    EXPECT_EQ(id_of("400010"), "7c1e4a0b9d2f4c38a5e6000000400010");
    EXPECT_EQ(id_of("1"), "7c1e4a0b9d2f4c38a5e6000000000001");
    EXPECT_EQ(id_of("123456789012"), "7c1e4a0b9d2f4c38a5e6123456789012");
    EXPECT_EQ(id_of("302017").substr(0, 20), logging::kMessageIdPrefix);
}

TEST(MessageId, ThirtyTwoLowercaseHexDigitsAsJournalctlWants) {
    for (const char* id : {"302017", "302018", "302019", "400001", "500001", "7"}) {
        const std::string mid = id_of(id);
        ASSERT_EQ(mid.size(), 32U) << id;
        for (const char c : mid) {
            EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << id << ": " << mid;
        }
    }
}

TEST(MessageId, NoneForAnEmptyOverlongOrNonDecimalId) {
    for (const char* id : {"", "1234567890123", "30201x", "-1", " 302017", "abc"}) {
        const logging::MessageId mid = logging::message_id(id);
        for (const char c : mid) {
            EXPECT_EQ(c, 0) << '"' << id << '"';
        }
    }
}

TEST(JournalStream, MatchesOnlyItsOwnDeviceAndInode) {
    EXPECT_TRUE(logging::journal_stream_matches("8:123456", 8, 123456));
    EXPECT_TRUE(logging::journal_stream_matches("0:1", 0, 1));
    EXPECT_TRUE(logging::journal_stream_matches("18446744073709551615:2", UINT64_MAX, 2));
    EXPECT_FALSE(logging::journal_stream_matches("8:123456", 8, 123457));
    EXPECT_FALSE(logging::journal_stream_matches("9:123456", 8, 123456));
}

TEST(JournalStream, MalformedValuesNeverMatch) {
    for (const char* value : {"", ":", "8:", ":123", "8", "8:123:4", "8:12x", "x8:12", " 8:12", "8:12 ", "-8:12",
                              "18446744073709551616:1"}) {
        EXPECT_FALSE(logging::journal_stream_matches(value, 8, 12)) << '"' << value << '"';
    }
}

}  // namespace
