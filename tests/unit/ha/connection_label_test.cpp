#include <gtest/gtest.h>

#include "ha/connection_label.hpp"

namespace {

ha::ConnectionLabel two_calls() {
    ha::ConnectionLabel label;
    label.opened_from_outside = true;
    label.pns_side = 1;
    label.call_count = 2;
    label.calls[0] = {0xFFFE, 0x0001, 0x8001, false};
    label.calls[1] = {7, 0xABCD, 0, true};
    return label;
}

std::optional<ha::ConnectionLabel> decode(const ha::LabelBytes& bytes, ha::LabelError& error) {
    return ha::decode_label(bytes, error);
}

TEST(ConnectionLabel, RoundTripsEveryField) {
    ha::LabelError error = ha::LabelError::Malformed;
    const auto back = decode(ha::encode_label(two_calls()), error);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(error, ha::LabelError::None);
    EXPECT_EQ(*back, two_calls());
    for (const std::int8_t side : {std::int8_t{-1}, std::int8_t{0}, std::int8_t{1}}) {
        for (std::uint8_t count = 0; count <= 2; ++count) {
            ha::ConnectionLabel label = two_calls();
            label.pns_side = side;
            label.call_count = count;
            label.opened_from_outside = count == 1;
            for (std::size_t i = count; i < ha::ConnectionLabel::kMaxCalls; ++i) {
                label.calls[i] = {};
            }
            const auto b = decode(ha::encode_label(label), error);
            ASSERT_TRUE(b.has_value()) << ha::label_error_name(error);
            EXPECT_EQ(*b, label);
        }
    }
}

TEST(ConnectionLabel, KeepsTheFirstTwoCallsOfMore) {
    ha::ConnectionLabel label = two_calls();
    label.call_count = 5;
    ha::LabelError error{};
    const auto back = decode(ha::encode_label(label), error);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(back->call_count, 2);
    EXPECT_EQ(back->calls, two_calls().calls);
}

TEST(ConnectionLabel, RefusesLabelsThatAreNotOurs) {
    ha::LabelError error{};
    EXPECT_FALSE(decode(ha::LabelBytes{}, error).has_value());
    EXPECT_EQ(error, ha::LabelError::NotOurs);

    ha::LabelBytes version = ha::encode_label(two_calls());
    version[1] = static_cast<std::uint8_t>((version[1] & 0x0FU) | 0x20U);
    EXPECT_FALSE(decode(version, error).has_value());
    EXPECT_EQ(error, ha::LabelError::Version);
}

TEST(ConnectionLabel, RefusesEverySingleBitFlip) {
    // Another user's label bit set on top of ours, or a damaged sync: never
    // adopted as some other call.
    const ha::LabelBytes good = ha::encode_label(two_calls());
    for (std::size_t bit = 0; bit < ha::kLabelBytes * 8; ++bit) {
        ha::LabelBytes bad = good;
        bad[bit / 8] = static_cast<std::uint8_t>(bad[bit / 8] ^ (1U << (bit % 8)));
        ha::LabelError error{};
        EXPECT_FALSE(decode(bad, error).has_value()) << "bit " << bit;
        EXPECT_NE(error, ha::LabelError::None);
    }
}

TEST(ConnectionLabel, RefusesBytesPastTheLastCall) {
    ha::ConnectionLabel one = two_calls();
    one.call_count = 1;
    one.calls[1] = {};
    ha::LabelBytes bytes = ha::encode_label(one);
    bytes[12] = 1;  // inside the unused second call
    // A label with a correct checksum but stray bytes: written by no one.
    std::uint8_t crc = 0;
    for (std::size_t i = 0; i < ha::kLabelBytes; ++i) {
        if (i == 3) {
            continue;
        }
        crc ^= bytes[i];
        for (int b = 0; b < 8; ++b) {
            crc = static_cast<std::uint8_t>((crc & 0x80U) != 0 ? (crc << 1U) ^ 0x07U : crc << 1U);
        }
    }
    bytes[3] = crc;
    ha::LabelError error{};
    EXPECT_FALSE(decode(bytes, error).has_value());
    EXPECT_EQ(error, ha::LabelError::Malformed);
}

}  // namespace
