#include "nat/call_table.hpp"

#include <gtest/gtest.h>

#include <set>
#include <vector>

using namespace nat;

namespace {

constexpr std::uint32_t kPublic = 0xCB007101;   // 203.0.113.1
constexpr std::uint32_t kServerA = 0xCB00710A;  // 203.0.113.10
constexpr std::uint32_t kServerB = 0xCB00710B;
constexpr std::uint32_t kClient1 = 0xC612000B;  // 198.18.0.11
constexpr std::uint32_t kClient2 = 0xC612000C;

class RecordingObserver : public TableObserver {
public:
    void call_built(const Call&) override { ++built; }
    void call_torn_down(const Call&, TeardownReason r) override {
        ++torn_down;
        last_reason = r;
    }
    int built = 0;
    int torn_down = 0;
    TeardownReason last_reason = TeardownReason::Shutdown;
};

class CallTableTest : public ::testing::Test {
protected:
    CallTable make(TableConfig config = {}) {
        config.public_address = kPublic;
        return CallTable(config, clock, counters, &observer);
    }
    ManualClock clock;
    Counters counters;
    RecordingObserver observer;
};

ConnectionKey key(std::uint32_t inside, std::uint32_t outside, std::uint16_t port = 40000) {
    return ConnectionKey{inside, outside, port, 1723};
}

TEST_F(CallTableTest, KeepsTheInsideCallIdWhenFree) {
    CallTable table = make();
    auto* conn = table.create_connection(key(kClient1, kServerA));
    const auto r = table.create_call_from_inside(*conn, 7);
    ASSERT_NE(r.call, nullptr);
    EXPECT_EQ(r.call->public_call_id, 7);
    EXPECT_EQ(r.call->public_address, kPublic);
    EXPECT_EQ(table.find_by_inside_id(*conn, 7), r.call);
    EXPECT_EQ(table.find_by_public_id(*conn, 7), r.call);
}

TEST_F(CallTableTest, RandomAllocationRewritesAndSpreadsPublicIds) {
    TableConfig config;
    config.call_id_allocation = CallIdAllocation::Random;
    config.random_seed = 42;
    CallTable table = make(config);
    std::set<std::uint16_t> seen;
    int kept_inside_id = 0;
    for (std::uint16_t i = 0; i < 64; ++i) {
        auto* conn = table.create_connection(key(kClient1, kServerA, static_cast<std::uint16_t>(40000 + i)));
        ASSERT_NE(conn, nullptr);
        const auto r = table.create_call_from_inside(*conn, 7);
        ASSERT_NE(r.call, nullptr);
        kept_inside_id += r.call->public_call_id == 7 ? 1 : 0;
        seen.insert(r.call->public_call_id);
        EXPECT_EQ(table.find_inbound(kServerA, kPublic, r.call->public_call_id), r.call);
    }
    EXPECT_EQ(seen.size(), 64u) << "public Call IDs stay unique per outside peer";
    EXPECT_LE(kept_inside_id, 1) << "random does not keep the inside Call ID";
    // Neither sequential nor clustered: spread over the 16-bit space.
    EXPECT_GT(*seen.rbegin() - *seen.begin(), 30000);
}

TEST_F(CallTableTest, RandomAllocationFindsTheLastFreeId) {
    TableConfig config;
    config.call_id_allocation = CallIdAllocation::Random;
    config.call_id_min = 100;
    config.call_id_max = 103;
    CallTable table = make(config);
    std::set<std::uint16_t> seen;
    for (std::uint16_t i = 0; i < 4; ++i) {
        auto* conn = table.create_connection(key(kClient1 + i, kServerA));
        const auto r = table.create_call_from_inside(*conn, 5);
        ASSERT_NE(r.call, nullptr);
        seen.insert(r.call->public_call_id);
    }
    EXPECT_EQ(seen, (std::set<std::uint16_t>{100, 101, 102, 103}));
    auto* full = table.create_connection(key(kClient2 + 9, kServerA));
    EXPECT_EQ(table.create_call_from_inside(*full, 5).error, CallError::CallIdSpaceExhausted);
}

TEST_F(CallTableTest, SameInsideIdFromTwoClientsGetsTwoPublicIds) {
    CallTable table = make();
    auto* c1 = table.create_connection(key(kClient1, kServerA));
    auto* c2 = table.create_connection(key(kClient2, kServerA));
    auto* a = table.create_call_from_inside(*c1, 7).call;
    auto* b = table.create_call_from_inside(*c2, 7).call;
    ASSERT_TRUE(a && b);
    EXPECT_NE(a->public_call_id, b->public_call_id);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, a->public_call_id), a);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, b->public_call_id), b);
}

TEST_F(CallTableTest, PublicIdsAreUniquePerOutsidePeerOnly) {
    CallTable table = make();
    auto* c1 = table.create_connection(key(kClient1, kServerA));
    auto* c2 = table.create_connection(key(kClient2, kServerB));
    auto* a = table.create_call_from_inside(*c1, 7).call;
    auto* b = table.create_call_from_inside(*c2, 7).call;
    EXPECT_EQ(a->public_call_id, 7);
    EXPECT_EQ(b->public_call_id, 7);  // different outside peer: no clash
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, 7), a);
    EXPECT_EQ(table.find_inbound(kServerB, kPublic, 7), b);
}

TEST_F(CallTableTest, ManyCallsAllUnique) {
    CallTable table = make();
    std::set<std::uint16_t> seen;
    for (std::uint16_t port = 1; port <= 300; ++port) {
        auto* conn = table.create_connection(key(kClient1 + port, kServerA, port));
        auto* call = table.create_call_from_inside(*conn, 1).call;
        ASSERT_NE(call, nullptr);
        EXPECT_TRUE(seen.insert(call->public_call_id).second);
    }
    EXPECT_EQ(table.call_count(), 300u);
}

TEST_F(CallTableTest, ExhaustionIsReportedAndFreedIdsAreReused) {
    TableConfig config;
    config.call_id_min = 100;
    config.call_id_max = 102;
    CallTable table = make(config);
    std::vector<Call*> calls;
    for (std::uint16_t i = 0; i < 3; ++i) {
        auto* conn = table.create_connection(key(kClient1 + i, kServerA));
        const auto r = table.create_call_from_inside(*conn, 5);
        ASSERT_NE(r.call, nullptr);
        EXPECT_GE(r.call->public_call_id, 100);
        EXPECT_LE(r.call->public_call_id, 102);
        calls.push_back(r.call);
    }
    auto* extra = table.create_connection(key(kClient2 + 50, kServerA));
    const auto refused = table.create_call_from_inside(*extra, 5);
    EXPECT_EQ(refused.call, nullptr);
    EXPECT_EQ(refused.error, CallError::CallIdSpaceExhausted);
    EXPECT_EQ(extra->calls.size(), 0u);
    // Another outside peer has its own space.
    auto* other = table.create_connection(key(kClient2, kServerB));
    EXPECT_NE(table.create_call_from_inside(*other, 5).call, nullptr);
    // Freeing one makes room again.
    const std::uint16_t freed = calls[1]->public_call_id;
    table.remove_call(*calls[1], TeardownReason::CallDisconnectNotify);
    const auto again = table.create_call_from_inside(*extra, 5);
    ASSERT_NE(again.call, nullptr);
    EXPECT_EQ(again.call->public_call_id, freed);
}

TEST_F(CallTableTest, CallLimitsApply) {
    TableConfig config;
    config.max_calls = 2;
    config.max_calls_per_connection = 1;
    CallTable table = make(config);
    auto* c1 = table.create_connection(key(kClient1, kServerA));
    EXPECT_NE(table.create_call_from_inside(*c1, 1).call, nullptr);
    EXPECT_EQ(table.create_call_from_inside(*c1, 2).error, CallError::CallLimit);
    auto* c2 = table.create_connection(key(kClient2, kServerA));
    EXPECT_NE(table.create_call_from_inside(*c2, 1).call, nullptr);
    auto* c3 = table.create_connection(key(kClient2 + 1, kServerA));
    EXPECT_EQ(table.create_call_from_inside(*c3, 1).error, CallError::CallLimit);
}

TEST_F(CallTableTest, ConnectionLimitApplies) {
    TableConfig config;
    config.max_connections = 1;
    CallTable table = make(config);
    EXPECT_NE(table.create_connection(key(kClient1, kServerA)), nullptr);
    EXPECT_EQ(table.create_connection(key(kClient2, kServerA)), nullptr);
}

TEST_F(CallTableTest, OutboundLookupNeedsBothIds) {
    CallTable table = make();
    auto* conn = table.create_connection(key(kClient1, kServerA));
    auto* call = table.create_call_from_inside(*conn, 7).call;
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 300), nullptr);
    table.set_outside_id(*call, 300);
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 300), call);
    EXPECT_EQ(table.find_outbound(kClient2, kServerA, 300), nullptr);
    EXPECT_EQ(table.find_outbound(kClient1, kServerB, 300), nullptr);
}

TEST_F(CallTableTest, OutsideInitiatedCallGetsPublicIdWhenInsideAnswers) {
    CallTable table = make();
    auto* conn = table.create_connection(key(kClient1, kServerA));
    auto* call = table.create_call_from_outside(*conn, 55).call;
    ASSERT_NE(call, nullptr);
    EXPECT_FALSE(call->inside_known);
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 55), nullptr);
    EXPECT_EQ(table.assign_inside_id(*call, 9), CallError::None);
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 55), call);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, call->public_call_id), call);
}

TEST_F(CallTableTest, ExpiresIdleCallsByState) {
    TableConfig config;
    config.call_unreplied_timeout = Seconds(600);
    config.call_setup_timeout = Seconds(120);
    CallTable table = make(config);
    auto* conn = table.create_connection(key(kClient1, kServerA));
    conn->state = ConnectionState::Established;
    auto* established = table.create_call_from_inside(*conn, 1).call;
    table.set_outside_id(*established, 10);
    table.mark_established(*established);
    table.create_call_from_inside(*conn, 2);  // never answered
    clock.advance(std::chrono::seconds(119));
    EXPECT_EQ(table.expire(), 0u);
    clock.advance(std::chrono::seconds(1));
    EXPECT_EQ(table.expire(), 1u);  // the unanswered one
    EXPECT_EQ(table.call_count(), 1u);
    clock.advance(std::chrono::seconds(479));
    established->last_activity = clock.now();  // GRE keeps it alive
    conn->last_activity = clock.now();
    clock.advance(std::chrono::seconds(599));
    EXPECT_EQ(table.expire(), 0u);
    clock.advance(std::chrono::seconds(1));
    EXPECT_EQ(table.expire(), 1u);
    EXPECT_EQ(observer.last_reason, TeardownReason::IdleTimeout);
    EXPECT_EQ(counters.get(EventCounter::calls_expired), 2u);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, 1), nullptr);
}

TEST_F(CallTableTest, CallsWithGreBothWaysLastHoursOthersMinutes) {
    CallTable table = make();  // the defaults: the kernel helper's 5 hours and 10 minutes
    auto* conn = table.create_connection(key(kClient1, kServerA));
    conn->state = ConnectionState::Established;
    auto establish = [&](std::uint16_t id) {
        Call* call = table.create_call_from_inside(*conn, id).call;
        table.set_outside_id(*call, static_cast<std::uint16_t>(id + 100));
        table.mark_established(*call);
        return call;
    };
    Call* both = establish(1);
    both->packets_in = 3;
    both->packets_out = 3;
    Call* one_way = establish(2);
    one_way->packets_out = 3;
    clock.advance(std::chrono::seconds(600));
    conn->last_activity = clock.now();
    EXPECT_EQ(table.expire(), 1u);
    EXPECT_EQ(table.find_call(both->id), both);
    clock.advance(std::chrono::seconds(18000 - 601));
    conn->last_activity = clock.now();
    EXPECT_EQ(table.expire(), 0u);
    clock.advance(std::chrono::seconds(1));
    conn->last_activity = clock.now();
    EXPECT_EQ(table.expire(), 1u);
    EXPECT_EQ(table.call_count(), 0u);
}

TEST_F(CallTableTest, ConnectionsThatNeverStartAreForgottenSoon) {
    CallTable table = make();
    auto* silent = table.create_connection(key(kClient1, kServerA, 40000));
    auto* started = table.create_connection(key(kClient1, kServerA, 40001));
    started->state = ConnectionState::Established;
    clock.advance(std::chrono::seconds(29));
    silent->last_activity = clock.now();  // activity does not extend the opening
    table.expire();
    EXPECT_EQ(table.connection_count(), 2u);
    clock.advance(std::chrono::seconds(1));
    table.expire();
    EXPECT_EQ(table.connection_count(), 1u);
    EXPECT_NE(table.find_connection(key(kClient1, kServerA, 40001)), nullptr);
}

TEST_F(CallTableTest, LimitsPerHostCountTheHostThatOpened) {
    TableConfig config;
    config.max_connections_per_host = 2;
    config.max_calls_per_host = 3;
    CallTable table = make(config);
    // A server behind a port forward: connections opened by outside hosts
    // count against each of them, not against the server.
    for (std::uint32_t client = 0; client < 5; ++client) {
        for (std::uint16_t port = 0; port < 2; ++port) {
            EXPECT_NE(table.create_connection(key(kClient1, kServerA + client, static_cast<std::uint16_t>(5000 + port)),
                                              /*opened_from_outside=*/true),
                      nullptr);
        }
        EXPECT_EQ(table.create_connection(key(kClient1, kServerA + client, 5002), true), nullptr);
    }
    // Calls: at most three for one opening host, over all its connections.
    auto* c1 = table.create_connection(key(kClient2, kServerA, 40000));
    auto* c2 = table.create_connection(key(kClient2, kServerB, 40001));
    EXPECT_NE(table.create_call_from_inside(*c1, 1).call, nullptr);
    EXPECT_NE(table.create_call_from_inside(*c1, 2).call, nullptr);
    EXPECT_NE(table.create_call_from_inside(*c2, 3).call, nullptr);
    const auto refused = table.create_call_from_inside(*c2, 4);
    EXPECT_EQ(refused.call, nullptr);
    EXPECT_EQ(refused.error, CallError::HostCallLimit);
    table.remove_call(*c1->calls.front(), TeardownReason::Cleared);
    EXPECT_NE(table.create_call_from_inside(*c2, 4).call, nullptr);
}

TEST_F(CallTableTest, AReplyRepeatingAnotherCallsIdDoesNotTakeItsGre) {
    CallTable table = make();
    auto* conn = table.create_connection(key(kClient1, kServerA));
    Call* first = table.create_call_from_inside(*conn, 1).call;
    table.set_outside_id(*first, 0);
    Call* second = table.create_call_from_inside(*conn, 2).call;
    table.set_outside_id(*second, 0);  // a refusal that says Call ID 0 too
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 0), first);
    table.remove_call(*second, TeardownReason::CallRejected);
    EXPECT_EQ(table.find_outbound(kClient1, kServerA, 0), first);
}

TEST_F(CallTableTest, ClosedConnectionsLingerThenGo) {
    CallTable table = make();
    auto* conn = table.create_connection(key(kClient1, kServerA));
    auto* call = table.create_call_from_inside(*conn, 1).call;
    table.set_outside_id(*call, 10);
    table.mark_established(*call);
    table.close_connection(*conn, TeardownReason::TcpFin);
    EXPECT_EQ(table.call_count(), 0u);
    EXPECT_EQ(observer.torn_down, 1);
    EXPECT_EQ(observer.last_reason, TeardownReason::TcpFin);
    EXPECT_EQ(table.connection_count(), 1u);
    clock.advance(table.config().closing_linger);
    table.expire();
    EXPECT_EQ(table.connection_count(), 0u);
}

TEST_F(CallTableTest, ClearAllTearsDownEverything) {
    CallTable table = make();
    for (std::uint16_t i = 0; i < 5; ++i) {
        auto* conn = table.create_connection(key(kClient1 + i, kServerA));
        auto* call = table.create_call_from_inside(*conn, 1).call;
        table.set_outside_id(*call, static_cast<std::uint16_t>(100 + i));
        table.mark_established(*call);
    }
    EXPECT_EQ(observer.built, 5);
    table.clear_all(TeardownReason::Shutdown);
    EXPECT_EQ(table.call_count(), 0u);
    EXPECT_EQ(table.connection_count(), 0u);
    EXPECT_EQ(observer.torn_down, 5);
}

// Records what the table hands to the offload; can refuse.
class FakeOffload : public CallOffload {
public:
    bool offload(const Call& call) override {
        offered.push_back(call.id);
        return accept;
    }
    void withdraw(Call& call) override { withdrawn.push_back(call.id); }
    bool accept = true;
    std::vector<std::uint64_t> offered;
    std::vector<std::uint64_t> withdrawn;
};

Call* established_call(CallTable& table, ControlConnection& conn, std::uint16_t inside, std::uint16_t outside) {
    Call* call = table.create_call_from_inside(conn, inside).call;
    table.set_outside_id(*call, outside);
    table.mark_established(*call);
    return call;
}

TEST_F(CallTableTest, EstablishedCallsGoToTheOffloadAndLeaveItWhenTheyEnd) {
    CallTable table = make();
    FakeOffload offload;
    table.set_offload(&offload);
    auto* conn = table.create_connection(key(kClient1, kServerA));
    Call* call = table.create_call_from_inside(*conn, 7).call;
    table.set_outside_id(*call, 70);
    call->packets_in = 3;                  // GRE before the reply, through the queue
    EXPECT_TRUE(offload.offered.empty());  // not established yet
    table.mark_established(*call);
    ASSERT_EQ(offload.offered, std::vector<std::uint64_t>{call->id});
    EXPECT_TRUE(call->offloaded);
    EXPECT_EQ(call->offload_base.packets_in, 3u);
    EXPECT_EQ(counters.get(EventCounter::calls_offloaded), 1u);
    const std::uint64_t id = call->id;
    table.remove_call(*call, TeardownReason::CallDisconnectNotify);
    EXPECT_EQ(offload.withdrawn, std::vector<std::uint64_t>{id});
}

TEST_F(CallTableTest, ARefusedOffloadLeavesTheCallOnTheQueuePath) {
    CallTable table = make();
    FakeOffload offload;
    offload.accept = false;
    table.set_offload(&offload);
    auto* conn = table.create_connection(key(kClient1, kServerA));
    Call* call = established_call(table, *conn, 7, 70);
    EXPECT_FALSE(call->offloaded);
    EXPECT_EQ(counters.get(EventCounter::calls_offload_failed), 1u);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, call->public_call_id), call);
    table.remove_call(*call, TeardownReason::Cleared);
    EXPECT_TRUE(offload.withdrawn.empty());  // nothing to withdraw
}

TEST_F(CallTableTest, ACallWithoutItsOwnGreKeyIsNotOffloaded) {
    CallTable table = make();
    FakeOffload offload;
    table.set_offload(&offload);
    auto* conn = table.create_connection(key(kClient1, kServerA));
    Call* first = established_call(table, *conn, 1, 0);
    Call* second = established_call(table, *conn, 2, 0);  // repeats the first's outside Call ID
    EXPECT_TRUE(first->offloaded);
    EXPECT_FALSE(second->offloaded);
    EXPECT_EQ(offload.offered, std::vector<std::uint64_t>{first->id});
}

TEST_F(CallTableTest, WithoutTheOffloadAShutdownLeavesOffloadedCallsInPlace) {
    CallTable table = make();
    FakeOffload offload;
    table.set_offload(&offload);
    auto* conn = table.create_connection(key(kClient1, kServerA));
    (void)established_call(table, *conn, 1, 10);
    table.set_offload(nullptr);
    table.clear_all(TeardownReason::Shutdown);
    EXPECT_TRUE(offload.withdrawn.empty());
    EXPECT_EQ(table.call_count(), 0u);
}

AdoptedCall adopted(std::uint32_t inside, std::uint16_t port, std::uint16_t inside_id, std::uint16_t public_id,
                    std::uint16_t outside_id) {
    AdoptedCall a;
    a.connection = key(inside, kServerA, port);
    a.public_address = kPublic;
    a.inside_call_id = inside_id;
    a.public_call_id = public_id;
    a.outside_call_id = outside_id;
    a.pns_side = 0;
    a.base = {5, 500, 6, 600};
    a.offload = {10, 1000, 20, 2000};
    return a;
}

TEST_F(CallTableTest, AdoptedCallsTranslateAsTheyDidAndCountOn) {
    CallTable table = make();
    FakeOffload offload;
    table.set_offload(&offload);
    // Two clients, the same inside Call ID, different public ones.
    Call* a = table.adopt_call(adopted(kClient1, 40000, 7, 7, 100));
    Call* b = table.adopt_call(adopted(kClient2, 40001, 7, 8, 101));
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_TRUE(offload.offered.empty());  // already in the kernel
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, 7), a);
    EXPECT_EQ(table.find_inbound(kServerA, kPublic, 8), b);
    EXPECT_EQ(table.find_outbound(kClient2, kServerA, 101), b);
    EXPECT_EQ(a->state, CallState::Established);
    EXPECT_TRUE(a->offloaded);
    EXPECT_EQ(a->packets_in, 15u);
    EXPECT_EQ(a->bytes_out, 2600u);
    ControlConnection* conn = table.find_connection(key(kClient1, kServerA, 40000));
    ASSERT_NE(conn, nullptr);
    EXPECT_EQ(conn->state, ConnectionState::Established);
    EXPECT_FALSE(conn->picked_up);  // the normal idle timeout, not the setup one
    EXPECT_EQ(table.find_by_inside_id(*conn, 7), a);
    EXPECT_EQ(counters.get(EventCounter::calls_adopted), 2u);
    // A new call cannot take an adopted call's public Call ID.
    auto* other = table.create_connection(key(kClient2, kServerA, 40002));
    EXPECT_NE(table.create_call_from_inside(*other, 8).call->public_call_id, 8);
    // And it ends as any call: withdrawn from the kernel.
    const std::uint64_t id = a->id;
    table.close_connection(*conn, TeardownReason::TcpFin);
    EXPECT_EQ(offload.withdrawn, std::vector<std::uint64_t>{id});
}

TEST_F(CallTableTest, AnAdoptedCallThatConflictsIsRefused) {
    CallTable table = make();
    ASSERT_NE(table.adopt_call(adopted(kClient1, 40000, 7, 7, 100)), nullptr);
    EXPECT_EQ(table.adopt_call(adopted(kClient2, 40001, 9, 7, 101)), nullptr);  // public Call ID taken
    EXPECT_EQ(table.adopt_call(adopted(kClient1, 40000, 9, 9, 100)), nullptr);  // outbound key taken
    EXPECT_EQ(table.call_count(), 1u);
}

}  // namespace
