#include <gtest/gtest.h>

#include "offload/nft_offload.hpp"

namespace {

offload::CallRecord sample() {
    offload::CallRecord r;
    r.inside_address = 0xC612000B;
    r.outside_address = 0xCB00710A;
    r.public_address = 0xCB007101;
    r.inside_call_id = 0xFFFE;
    r.public_call_id = 1;
    r.outside_call_id = 0x8001;
    r.inside_port = 40000;
    r.outside_port = 1723;
    r.outgoing = false;
    r.opened_from_outside = true;
    r.pns_side = 1;
    r.created_ns = 0x0102030405060708;
    r.base_packets_in = 1;
    r.base_bytes_in = 0xFFFFFFFFFFULL;
    r.base_packets_out = 3;
    r.base_bytes_out = 4;
    return r;
}

TEST(OffloadRecord, RoundTripsEveryField) {
    const auto bytes = offload::encode_record(sample());
    offload::CallRecord back;
    ASSERT_TRUE(offload::decode_record(bytes.data(), bytes.size(), back));
    EXPECT_EQ(back, sample());
    for (const std::int8_t side : {std::int8_t{-1}, std::int8_t{0}}) {
        offload::CallRecord r = sample();
        r.pns_side = side;
        const auto b = offload::encode_record(r);
        ASSERT_TRUE(offload::decode_record(b.data(), b.size(), back));
        EXPECT_EQ(back.pns_side, side);
    }
}

TEST(OffloadRecord, RefusesOtherLayouts) {
    auto bytes = offload::encode_record(sample());
    offload::CallRecord back;
    EXPECT_FALSE(offload::decode_record(bytes.data(), bytes.size() - 1, back));
    EXPECT_FALSE(offload::decode_record(nullptr, 0, back));
    bytes[2] = 2;  // another version
    EXPECT_FALSE(offload::decode_record(bytes.data(), bytes.size(), back));
}

}  // namespace
