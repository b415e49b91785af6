#include <gtest/gtest.h>

#include "daemon/ha_sync.hpp"

namespace {

constexpr std::uint32_t kInside = 0xC612000B;  // 198.18.0.11
constexpr std::uint32_t kServer = 0xCB00710A;  // 203.0.113.10
constexpr std::uint32_t kPublic = 0xCB007101;  // 203.0.113.1

TEST(HaSync, LabelHoldsTheEstablishedCallsButTheLeavingOne) {
    nat::ControlConnection conn;
    conn.pns_side = 0;
    nat::Call a;
    nat::Call b;
    nat::Call pending;
    nat::Call c;
    for (nat::Call* call : {&a, &b, &c}) {
        call->state = nat::CallState::Established;
        call->inside_known = call->outside_known = true;
    }
    a.inside_call_id = 1;
    a.public_call_id = 11;
    a.outside_call_id = 21;
    b.inside_call_id = 2;
    b.public_call_id = 12;
    b.outside_call_id = 22;
    b.outgoing = false;
    c.inside_call_id = 3;
    pending.state = nat::CallState::Requested;
    conn.calls = {&a, &pending, &b, &c};

    ha::ConnectionLabel label = agent::label_of(conn, nullptr);
    EXPECT_EQ(label.pns_side, 0);
    ASSERT_EQ(label.call_count, 2);
    EXPECT_EQ(label.calls[0], (ha::LabelledCall{1, 11, 21, true}));
    EXPECT_EQ(label.calls[1], (ha::LabelledCall{2, 12, 22, false}));

    label = agent::label_of(conn, &a);
    ASSERT_EQ(label.call_count, 2);
    EXPECT_EQ(label.calls[0].inside_call_id, 2);
    EXPECT_EQ(label.calls[1].inside_call_id, 3);
}

TEST(HaSync, ConnectionOfAnOutboundEntryIsItsOriginalTupleAndSnatSource) {
    nfq::LabelledEntry entry;
    entry.tuples = {kInside, kServer, kServer, kPublic};
    entry.original_source_port = 40000;
    entry.original_destination_port = 1723;
    entry.reply_source_port = 1723;
    entry.reply_destination_port = 61000;
    ha::ConnectionLabel label;
    label.pns_side = 0;
    const auto adopted = agent::connection_of(entry, label, std::nullopt);
    ASSERT_TRUE(adopted.has_value());
    EXPECT_EQ(adopted->connection, (nat::ConnectionKey{kInside, kServer, 40000, 1723}));
    EXPECT_EQ(adopted->public_address, kPublic);
    EXPECT_FALSE(adopted->opened_from_outside);
    // --public-address overrides what the entry says.
    EXPECT_EQ(agent::connection_of(entry, label, 0x0A000001)->public_address, 0x0A000001U);
}

TEST(HaSync, ConnectionOfAPortForwardIsItsReplySourceAndOriginalDestination) {
    // An outside PNS opened public:1723, DNATed to the inside PAC.
    nfq::LabelledEntry entry;
    entry.tuples = {kServer, kPublic, kInside, kServer};
    entry.original_source_port = 50000;
    entry.original_destination_port = 1723;
    entry.reply_source_port = 1723;
    entry.reply_destination_port = 50000;
    ha::ConnectionLabel label;
    label.opened_from_outside = true;
    label.pns_side = 1;
    const auto adopted = agent::connection_of(entry, label, std::nullopt);
    ASSERT_TRUE(adopted.has_value());
    EXPECT_EQ(adopted->connection, (nat::ConnectionKey{kInside, kServer, 1723, 50000}));
    EXPECT_EQ(adopted->public_address, kPublic);
    EXPECT_TRUE(adopted->opened_from_outside);
    EXPECT_EQ(adopted->pns_side, 1);
}

TEST(HaSync, EntryThatCannotBeAControlConnectionIsNotAdopted) {
    nfq::LabelledEntry entry;
    entry.tuples = {kInside, kServer, kServer, kPublic};
    entry.original_source_port = 0;
    entry.reply_source_port = 1723;
    EXPECT_FALSE(agent::connection_of(entry, ha::ConnectionLabel{}, std::nullopt).has_value());
}

}  // namespace
