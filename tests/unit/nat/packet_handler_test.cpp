#include "nat/packet_handler.hpp"

#include <gtest/gtest.h>

#include "support/packets.hpp"

using namespace nat;
using namespace testpkt;

namespace {

constexpr std::uint32_t kPublic = 0xCB007101;   // 203.0.113.1
constexpr std::uint32_t kServer = 0xCB00710A;   // 203.0.113.10
constexpr std::uint32_t kServer2 = 0xCB00710B;  // 203.0.113.11
constexpr std::uint32_t kClient1 = 0xC612000B;  // 198.18.0.11
constexpr std::uint32_t kClient2 = 0xC612000C;  // 198.18.0.12

struct Flow {
    std::uint32_t client;
    std::uint16_t port;
    std::uint32_t server = kServer;
    std::uint32_t out_seq = 1000;
    std::uint32_t in_seq = 50000;
};

// Records the verdicts of held packets, as the netfilter layer would send them.
class RecordedVerdicts : public DeferredVerdicts {
public:
    struct Entry {
        std::uint32_t id;
        bool accept;
        Bytes packet;  // empty: unchanged
    };
    void release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) override {
        entries.push_back(Entry{packet_id, accept, Bytes(packet.begin(), packet.end())});
    }
    std::vector<Entry> entries;
};

class PacketHandlerTest : public ::testing::Test {
protected:
    explicit PacketHandlerTest(TableConfig config = {}) {
        config.public_address = kPublic;
        table = std::make_unique<CallTable>(config, clock, counters, nullptr);
        handler = std::make_unique<PacketHandler>(*table, counters, nullptr, handler_config);
        handler->set_deferred_verdicts(&deferred);
        handler->enable_port(1723);
    }
    // fixed_public: --public-address; without it each connection's public
    // address comes from its NAT mapping (`nat`, the kernel's conntrack).
    PacketHandlerTest(TableConfig config, HandlerConfig hc, bool fixed_public = true) : handler_config(hc) {
        config.public_address = fixed_public ? kPublic : 0;
        table = std::make_unique<CallTable>(config, clock, counters, nullptr);
        handler = std::make_unique<PacketHandler>(*table, counters, nullptr, handler_config);
        handler->set_deferred_verdicts(&deferred);
        handler->enable_port(1723);
    }

    Verdict run(Direction dir, Bytes& packet, std::uint32_t id = 0) {
        const Bytes before = packet;
        const Verdict v = handler->handle(dir, packet, id == 0 ? ++next_id : id);
        EXPECT_EQ(packet.size(), before.size());
        if (v.accept && !v.modified) {
            EXPECT_EQ(packet, before) << "packet changed without being marked modified";
        }
        if (v.length != 0) {
            packet.resize(v.length);
        }
        if (v.accept && !v.held) {
            EXPECT_TRUE(ipv4_checksum_ok(packet));
            if (packet[9] == 6) {
                EXPECT_TRUE(tcp_checksum_ok(packet));
            }
        }
        return v;
    }

    // Sends control bytes from the client; returns what leaves the agent.
    Bytes out(Flow& f, const Bytes& payload, Verdict* verdict = nullptr, std::uint8_t flags = ACK | PSH) {
        Bytes p = tcp_packet(f.client, f.server, f.port, 1723, f.out_seq, flags, payload);
        const Verdict v = run(Direction::Outbound, p);
        if (verdict != nullptr) *verdict = v;
        if (v.accept) f.out_seq += static_cast<std::uint32_t>(payload.size());
        last = p;
        return tcp_payload(p);
    }
    Bytes in(Flow& f, const Bytes& payload, Verdict* verdict = nullptr, std::uint8_t flags = ACK | PSH) {
        Bytes p = tcp_packet(f.server, f.client, 1723, f.port, f.in_seq, flags, payload);
        const Verdict v = run(Direction::Inbound, p);
        if (verdict != nullptr) *verdict = v;
        if (v.accept) f.in_seq += static_cast<std::uint32_t>(payload.size());
        last = p;
        return tcp_payload(p);
    }
    // TCP open only: both streams synchronized, no PPTP message yet.
    void handshake(Flow& f) {
        Bytes syn = tcp_packet(f.client, f.server, f.port, 1723, f.out_seq - 1, SYN, {});
        ASSERT_TRUE(run(Direction::Outbound, syn).accept);
        Bytes synack = tcp_packet(f.server, f.client, 1723, f.port, f.in_seq - 1, SYN | ACK, {});
        ASSERT_TRUE(run(Direction::Inbound, synack).accept);
    }
    // TCP open and Start-Control-Connection done.
    void open(Flow& f) {
        handshake(f);
        out(f, sccrq());
        in(f, sccrp());
    }
    // Sets up a call; returns the public Call ID the server saw.
    std::uint16_t call(Flow& f, std::uint16_t inside_id, std::uint16_t server_id) {
        const Bytes sent = out(f, ocrq(inside_id));
        const std::uint16_t public_id = get16(sent, 12);
        const Bytes got = in(f, ocrp(server_id, public_id));
        EXPECT_EQ(get16(got, 14), inside_id);
        return public_id;
    }
    Verdict gre_in(std::uint32_t from, std::uint32_t to, std::uint16_t key, Bytes* result = nullptr) {
        Bytes p = gre_packet(from, to, key, Bytes(20, 0x5A));
        const Verdict v = run(Direction::Inbound, p);
        if (result != nullptr) *result = p;
        return v;
    }
    Verdict gre_out(std::uint32_t from, std::uint32_t to, std::uint16_t key, Bytes* result = nullptr) {
        Bytes p = gre_packet(from, to, key, Bytes(20, 0xA5));
        const Verdict v = run(Direction::Outbound, p);
        if (result != nullptr) *result = p;
        return v;
    }

    // The agent ended the connection: the segment left as a bare RST (no
    // byte of it) at `sequence`, and `why` was counted.
    void expect_reset(const Verdict& v, DropReason why, std::uint32_t sequence) {
        EXPECT_TRUE(v.accept);
        EXPECT_TRUE(v.modified);
        EXPECT_EQ(v.length, 40u);
        ASSERT_EQ(last.size(), 40u);
        EXPECT_EQ(last[33] & 0x04, 0x04) << "RST";
        EXPECT_EQ(get32(last, 24), sequence);
        EXPECT_EQ(counters.get(why), 1u);
    }

    // The kernel's conntrack table as the netfilter layer would read it.
    struct FakeConntrack : NatLookup {
        std::optional<NatMapping> mapping_of(const ConnectionKey& key) override {
            ++lookups;
            for (const auto& [k, m] : entries) {
                if (k == key) return m;
            }
            return std::nullopt;
        }
        std::vector<std::pair<ConnectionKey, NatMapping>> entries;
        int lookups = 0;
    } nat;
    ManualClock clock;
    Counters counters;
    Bytes last;  // the latest control segment as it left
    HandlerConfig handler_config;
    RecordedVerdicts deferred;
    std::uint32_t next_id = 0;
    std::unique_ptr<CallTable> table;
    std::unique_ptr<PacketHandler> handler;
};

TEST_F(PacketHandlerTest, OutgoingCallIsTranslatedBothWays) {
    Flow f{kClient1, 40000};
    open(f);
    const Bytes sent = out(f, ocrq(7));
    EXPECT_EQ(get16(sent, 12), 7);  // free, so kept
    const Bytes reply = in(f, ocrp(300, 7));
    EXPECT_EQ(get16(reply, 12), 300);
    EXPECT_EQ(get16(reply, 14), 7);
    EXPECT_EQ(counters.get(EventCounter::calls_built), 1u);

    Bytes g;
    ASSERT_TRUE(gre_out(kClient1, kServer, 300, &g).accept);
    EXPECT_EQ(get32(g, 12), kPublic);
    EXPECT_EQ(get32(g, 16), kServer);
    EXPECT_EQ(get16(g, 26), 300);
    ASSERT_TRUE(gre_in(kServer, kPublic, 7, &g).accept);
    EXPECT_EQ(get32(g, 16), kClient1);
    EXPECT_EQ(get16(g, 26), 7);
    EXPECT_EQ(get32(g, 12), kServer);

    const Call* c = table->find_inbound(kServer, kPublic, 7);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->packets_in, 1u);
    EXPECT_EQ(c->packets_out, 1u);
    EXPECT_EQ(c->bytes_in, 32u);
}

TEST_F(PacketHandlerTest, TwoClientsWithTheSameCallIdBothWork) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    const std::uint16_t pa = call(a, 7, 300);
    const std::uint16_t pb = call(b, 7, 301);
    EXPECT_EQ(pa, 7);
    EXPECT_NE(pb, 7);
    Bytes g;
    ASSERT_TRUE(gre_in(kServer, kPublic, pb, &g).accept);
    EXPECT_EQ(get32(g, 16), kClient2);
    EXPECT_EQ(get16(g, 26), 7);
    ASSERT_TRUE(gre_in(kServer, kPublic, pa, &g).accept);
    EXPECT_EQ(get32(g, 16), kClient1);
    EXPECT_EQ(get16(g, 26), 7);
    ASSERT_TRUE(gre_out(kClient2, kServer, 301, &g).accept);
    EXPECT_EQ(get32(g, 12), kPublic);
    // Client 1 cannot use client 2's server Call ID.
    EXPECT_FALSE(gre_out(kClient1, kServer, 301).accept);
}

TEST_F(PacketHandlerTest, GreThatMatchesNoCallIsDropped) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    EXPECT_FALSE(gre_in(kServer, kPublic, 8).accept);
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 1u);
    EXPECT_FALSE(gre_in(kServer2, kPublic, 7).accept);  // wrong outside peer
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 2u);
    EXPECT_FALSE(gre_in(kServer, kPublic + 1, 7).accept);  // to another address
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 3u);
    EXPECT_FALSE(gre_out(kClient1, kServer, 301).accept);
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 4u);
    EXPECT_TRUE(gre_in(kServer, kPublic, 7).accept);
}

TEST_F(PacketHandlerTest, NonPptpGreIsDropped) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    Bytes v0 = gre_packet(kServer, kPublic, 7, Bytes(4, 0), 0x3000);
    EXPECT_FALSE(run(Direction::Inbound, v0).accept);
    Bytes csum = gre_packet(kServer, kPublic, 7, Bytes(4, 0), 0xB001);
    EXPECT_FALSE(run(Direction::Inbound, csum).accept);
    Bytes proto = gre_packet(kServer, kPublic, 7, Bytes(4, 0), 0x3001, 0x0800);
    EXPECT_FALSE(run(Direction::Inbound, proto).accept);
    Bytes truncated = gre_packet(kServer, kPublic, 7, Bytes(4, 0));
    put16(truncated, 24, 40);  // GRE payload length lies
    put16(truncated, 10, 0);
    put16(truncated, 10, reference_checksum(truncated.data(), 20));
    EXPECT_FALSE(run(Direction::Inbound, truncated).accept);
    EXPECT_EQ(counters.get(DropReason::gre_not_version_1), 1u);
    EXPECT_EQ(counters.get(DropReason::gre_checksum_present), 1u);
    EXPECT_EQ(counters.get(DropReason::gre_not_ppp), 1u);
    EXPECT_EQ(counters.get(DropReason::gre_bad_payload_length), 1u);
}

TEST_F(PacketHandlerTest, ClearRequestAndDisconnectNotifyEndTheCall) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 7, 300);
    const std::uint16_t pb = call(b, 7, 301);
    const Bytes clear = out(b, ccrq(7));
    EXPECT_EQ(get16(clear, 12), pb);                   // the server must see the public ID
    EXPECT_TRUE(gre_in(kServer, kPublic, pb).accept);  // still clearing
    const Bytes disc = in(b, cdn(301));
    EXPECT_EQ(get16(disc, 12), 301);  // the PAC's own ID: unchanged
    EXPECT_FALSE(gre_in(kServer, kPublic, pb).accept);
    EXPECT_EQ(counters.get(EventCounter::calls_torn_down), 1u);
    EXPECT_TRUE(gre_in(kServer, kPublic, 7).accept);  // the other call is intact
}

TEST_F(PacketHandlerTest, StopControlConnectionEndsAllItsCalls) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t p1 = call(f, 1, 300);
    const std::uint16_t p2 = call(f, 2, 301);
    EXPECT_NE(p1, p2);
    EXPECT_EQ(table->call_count(), 2u);
    out(f, stop_request());
    in(f, stop_reply());
    EXPECT_EQ(table->call_count(), 0u);
    EXPECT_FALSE(gre_in(kServer, kPublic, p1).accept);
}

TEST_F(PacketHandlerTest, TcpFinAndResetEndCalls) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40001};
    open(a);
    open(b);
    call(a, 1, 300);
    call(b, 1, 301);
    out(a, {}, nullptr, ACK | FIN);
    in(b, {}, nullptr, RST);
    EXPECT_EQ(table->call_count(), 0u);
}

TEST_F(PacketHandlerTest, AfterOneSideSendsFinTheOtherMayStillFinish) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t id = call(f, 7, 300);
    in(f, {}, nullptr, ACK | FIN);  // the server closes its side first
    EXPECT_EQ(table->call_count(), 0u);
    EXPECT_FALSE(gre_in(kServer, kPublic, id).accept);
    Verdict v;
    const Bytes clear = out(f, ccrq(7), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), id);  // still the ID the server knew
    out(f, stop_request(), &v);
    EXPECT_TRUE(v.accept);
    const std::uint32_t at = f.out_seq;
    out(f, ocrq(8), &v);  // but no new call on a closing connection
    expect_reset(v, DropReason::control_out_of_state, at);
}

TEST_F(PacketHandlerTest, ReplyAfterTheClientHalfClosedStillGetsThrough) {
    Flow f{kClient1, 40000};
    handshake(f);
    out(f, sccrq());
    out(f, {}, nullptr, ACK | FIN);
    Verdict v;
    in(f, sccrp(), &v);
    EXPECT_TRUE(v.accept);
}

TEST_F(PacketHandlerTest, SeveralMessagesInOneSegment) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    call(a, 7, 300);
    handshake(b);
    const Bytes sent = out(b, concat({sccrq(), ocrq(7), echo_request(1)}));
    ASSERT_EQ(sent.size(), 156u + 168u + 16u);
    const std::uint16_t pb = get16(sent, 156 + 12);
    EXPECT_NE(pb, 7);
    EXPECT_EQ(Bytes(sent.begin(), sent.begin() + 156), sccrq());
    const Bytes got = in(b, concat({sccrp(), ocrp(301, pb), echo_reply(1)}));
    EXPECT_EQ(get16(got, 156 + 14), 7);
    Bytes g;
    ASSERT_TRUE(gre_in(kServer, kPublic, pb, &g).accept);
    EXPECT_EQ(get32(g, 16), kClient2);
}

TEST_F(PacketHandlerTest, MessageCutAcrossSegmentsOutsideTheCallIdField) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 7, 300);
    const Bytes msg = ocrq(7);
    Verdict v;
    out(b, Bytes(msg.begin(), msg.begin() + 5), &v);
    ASSERT_TRUE(v.accept);
    const Bytes second = out(b, Bytes(msg.begin() + 5, msg.begin() + 14), &v);
    ASSERT_TRUE(v.accept);
    const std::uint16_t pb = get16(second, 12 - 5);
    EXPECT_NE(pb, 7);
    out(b, Bytes(msg.begin() + 14, msg.end()), &v);
    ASSERT_TRUE(v.accept);
    const Bytes got = in(b, ocrp(301, pb));
    EXPECT_EQ(get16(got, 14), 7);
}

TEST_F(PacketHandlerTest, SegmentEndingInsideACallIdFieldIsHeldUntilTheFieldIsComplete) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 0x0707, 300);  // takes public ID 0x0707, so b's 0x0707 must change
    const Bytes msg = ocrq(0x0707);
    Bytes first =
        tcp_packet(b.client, b.server, b.port, 1723, b.out_seq, ACK | PSH, Bytes(msg.begin(), msg.begin() + 13));
    const Verdict held = run(Direction::Outbound, first, 501);
    EXPECT_TRUE(held.held);
    EXPECT_TRUE(deferred.entries.empty());
    EXPECT_EQ(table->call_count(), 1u);  // not decided yet
    Bytes second =
        tcp_packet(b.client, b.server, b.port, 1723, b.out_seq + 13, ACK | PSH, Bytes(msg.begin() + 13, msg.end()));
    const Verdict v = run(Direction::Outbound, second, 502);
    ASSERT_TRUE(v.accept);
    EXPECT_FALSE(v.held);
    ASSERT_EQ(deferred.entries.size(), 1u);
    const auto& released = deferred.entries[0];
    EXPECT_EQ(released.id, 501u);
    EXPECT_TRUE(released.accept);
    ASSERT_FALSE(released.packet.empty()) << "its Call ID byte was rewritten";
    EXPECT_TRUE(tcp_checksum_ok(released.packet));
    EXPECT_TRUE(ipv4_checksum_ok(released.packet));
    const Bytes p1 = tcp_payload(released.packet);
    const Bytes p2 = tcp_payload(second);
    const std::uint16_t public_id = static_cast<std::uint16_t>((p1[12] << 8) | p2[0]);
    EXPECT_NE(public_id, 0x0707);
    EXPECT_EQ(table->find_inbound(kServer, kPublic, public_id)->inside_address, kClient2);
    b.out_seq += static_cast<std::uint32_t>(msg.size());
    const Bytes got = in(b, ocrp(301, public_id));
    EXPECT_EQ(get16(got, 14), 0x0707);
}

TEST_F(PacketHandlerTest, AnyCutOfAnyMessageGivesTheSameStream) {
    // Every cut position of Outgoing-Call-Request and Outgoing-Call-Reply:
    // the bytes that leave equal the bytes of the uncut message, rewritten.
    for (std::size_t cut = 1; cut < 32; ++cut) {
        SCOPED_TRACE(cut);
        Flow a{kClient1, static_cast<std::uint16_t>(41000 + cut)};
        Flow b{kClient2, static_cast<std::uint16_t>(41000 + cut)};
        open(a);
        open(b);
        const std::uint16_t taken = call(a, 9, 300);
        const Bytes msg = ocrq(9);
        deferred.entries.clear();
        Bytes one = tcp_packet(b.client, b.server, b.port, 1723, b.out_seq, ACK | PSH,
                               Bytes(msg.begin(), msg.begin() + static_cast<long>(cut)));
        Bytes two = tcp_packet(b.client, b.server, b.port, 1723, b.out_seq + static_cast<std::uint32_t>(cut), ACK | PSH,
                               Bytes(msg.begin() + static_cast<long>(cut), msg.end()));
        const Verdict v1 = run(Direction::Outbound, one, 1000);
        const Verdict v2 = run(Direction::Outbound, two, 1001);
        ASSERT_TRUE(v1.accept && v2.accept && !v2.held);
        Bytes out1 = v1.held ? (deferred.entries.at(0).packet.empty() ? one : deferred.entries.at(0).packet) : one;
        Bytes stream = concat({tcp_payload(out1), tcp_payload(two)});
        ASSERT_EQ(stream.size(), msg.size());
        const std::uint16_t public_id = get16(stream, 12);
        EXPECT_NE(public_id, taken);
        Bytes expected = msg;
        put16(expected, 12, public_id);
        EXPECT_EQ(stream, expected);
        b.out_seq += static_cast<std::uint32_t>(msg.size());
        // And the reply, cut at the same place.
        const Bytes reply = ocrp(400 + static_cast<std::uint16_t>(cut), public_id);
        deferred.entries.clear();
        Bytes r1 = tcp_packet(b.server, b.client, 1723, b.port, b.in_seq, ACK | PSH,
                              Bytes(reply.begin(), reply.begin() + static_cast<long>(cut)));
        Bytes r2 = tcp_packet(b.server, b.client, 1723, b.port, b.in_seq + static_cast<std::uint32_t>(cut), ACK | PSH,
                              Bytes(reply.begin() + static_cast<long>(cut), reply.end()));
        const Verdict w1 = run(Direction::Inbound, r1, 2000);
        const Verdict w2 = run(Direction::Inbound, r2, 2001);
        ASSERT_TRUE(w1.accept && w2.accept && !w2.held);
        Bytes in1 = w1.held ? (deferred.entries.at(0).packet.empty() ? r1 : deferred.entries.at(0).packet) : r1;
        const Bytes back = concat({tcp_payload(in1), tcp_payload(r2)});
        EXPECT_EQ(get16(back, 14), 9);
        EXPECT_EQ(get16(back, 12), 400 + cut);
        b.in_seq += static_cast<std::uint32_t>(reply.size());
        EXPECT_TRUE(gre_in(kServer, kPublic, public_id).accept);
    }
}

TEST_F(PacketHandlerTest, OutOfOrderSegmentIsHeldUntilTheGapFills) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 7, 300);
    const Bytes msg = ocrq(7);
    Bytes late =
        tcp_packet(b.client, b.server, b.port, 1723, b.out_seq + 100, ACK | PSH, Bytes(msg.begin() + 100, msg.end()));
    const Verdict v1 = run(Direction::Outbound, late, 601);
    EXPECT_TRUE(v1.held);
    Bytes early =
        tcp_packet(b.client, b.server, b.port, 1723, b.out_seq, ACK | PSH, Bytes(msg.begin(), msg.begin() + 100));
    const Verdict v2 = run(Direction::Outbound, early, 602);
    EXPECT_TRUE(v2.accept);
    EXPECT_FALSE(v2.held);
    ASSERT_EQ(deferred.entries.size(), 1u);
    EXPECT_EQ(deferred.entries[0].id, 601u);
    EXPECT_TRUE(deferred.entries[0].accept);
    EXPECT_NE(get16(tcp_payload(early), 12), 7);  // rewritten in the in-order part
    EXPECT_EQ(table->call_count(), 2u);
}

TEST_F(PacketHandlerTest, HeldSegmentsTimeOutAsDrops) {
    Flow f{kClient1, 40000};
    open(f);
    Bytes ahead = tcp_packet(f.client, f.server, f.port, 1723, f.out_seq + 16, ACK | PSH, ocrq(7));
    EXPECT_TRUE(run(Direction::Outbound, ahead, 700).held);
    EXPECT_EQ(handler->held_segments(), 1u);
    clock.advance(std::chrono::milliseconds(1999));
    EXPECT_EQ(handler->expire_held(), 0u);
    clock.advance(std::chrono::milliseconds(1));
    EXPECT_EQ(handler->expire_held(), 1u);
    ASSERT_EQ(deferred.entries.size(), 1u);
    EXPECT_EQ(deferred.entries[0].id, 700u);
    EXPECT_FALSE(deferred.entries[0].accept);
    EXPECT_EQ(counters.get(DropReason::control_hold_timeout), 1u);
    EXPECT_EQ(handler->held_segments(), 0u);
}

TEST_F(PacketHandlerTest, HoldingIsBounded) {
    Flow f{kClient1, 40000};
    open(f);
    for (std::uint32_t i = 0; i < handler->config().holds.segments_per_direction; ++i) {
        Bytes p = tcp_packet(f.client, f.server, f.port, 1723, f.out_seq + 100 + i * 10, ACK | PSH, Bytes(10, 0));
        EXPECT_TRUE(run(Direction::Outbound, p).held);
    }
    Bytes one_more = tcp_packet(f.client, f.server, f.port, 1723, f.out_seq + 1000, ACK | PSH, Bytes(10, 0));
    const Verdict v = run(Direction::Outbound, one_more);
    EXPECT_FALSE(v.accept);
    EXPECT_EQ(v.reason, DropReason::control_hold_overflow);
}

TEST_F(PacketHandlerTest, RetransmissionIsRewrittenIdentically) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 7, 300);
    const std::uint32_t seq = b.out_seq;
    const Bytes first = out(b, ocrq(7));
    Bytes again = tcp_packet(b.client, b.server, b.port, 1723, seq, ACK | PSH, ocrq(7));
    const Verdict v = run(Direction::Outbound, again);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(tcp_payload(again), first);
    // A retransmission re-cut differently (starting mid-message) too.
    const Bytes msg = ocrq(7);
    Bytes tail = tcp_packet(b.client, b.server, b.port, 1723, seq + 10, ACK | PSH, Bytes(msg.begin() + 10, msg.end()));
    EXPECT_TRUE(run(Direction::Outbound, tail).accept);
    EXPECT_EQ(tcp_payload(tail), Bytes(first.begin() + 10, first.end()));
    EXPECT_EQ(table->call_count(), 2u);
}

TEST_F(PacketHandlerTest, ACallIdOfAnotherConnectionIsNeutralised) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    const std::uint16_t pa = call(a, 7, 300);
    Verdict v;
    // b names a's public Call ID to the server, and the server a's to b:
    // neither leaves as it is, and both streams go on.
    Bytes clear = out(b, ccrq(pa), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), 0);
    const Bytes wan = in(b, wen(pa), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(wan, 12), 0);
    EXPECT_EQ(counters.get(DropReason::control_unknown_call_id), 2u);
    EXPECT_EQ(counters.get(EventCounter::control_call_ids_neutralised), 2u);
    EXPECT_EQ(table->call_count(), 1u);
    EXPECT_TRUE(gre_in(kServer, kPublic, pa).accept) << "a's call is untouched";
    EXPECT_NE(call(b, 7, 301), pa);
}

TEST_F(PacketHandlerTest, IncomingCallTranslatesEveryField) {
    Flow f{kClient1, 40000};
    Flow g{kClient2, 40000};
    open(f);
    open(g);
    call(g, 9, 400);  // takes public ID 9
    const Bytes req = in(f, icrq(500));
    EXPECT_EQ(get16(req, 12), 500);
    const Bytes reply = out(f, icrp(9, 500));
    const std::uint16_t public_id = get16(reply, 12);
    EXPECT_NE(public_id, 9);
    EXPECT_EQ(get16(reply, 14), 500);
    const Bytes connected = in(f, iccn(public_id));
    EXPECT_EQ(get16(connected, 12), 9);
    const Bytes link = out(f, sli(500));
    EXPECT_EQ(get16(link, 12), 500);  // the PAC's ID: unchanged
    const Bytes error = in(f, wen(public_id));
    EXPECT_EQ(get16(error, 12), 9);
    Bytes pkt;
    ASSERT_TRUE(gre_in(kServer, kPublic, public_id, &pkt).accept);
    EXPECT_EQ(get16(pkt, 26), 9);
    EXPECT_EQ(get32(pkt, 16), kClient1);
    ASSERT_TRUE(gre_out(kClient1, kServer, 500).accept);
}

TEST_F(PacketHandlerTest, MessagesAboutAClearedCallStillTranslateButItsGreStops) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    call(a, 7, 300);
    const std::uint16_t pb = call(b, 7, 301);
    Call* cb = table->find_inbound(kServer, kPublic, pb);
    table->remove_call(*cb, TeardownReason::Cleared);
    EXPECT_FALSE(gre_in(kServer, kPublic, pb).accept);
    Verdict v;
    const Bytes clear = out(b, ccrq(7), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), pb);  // as the server knew it
    const Bytes error = in(b, wen(pb), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(error, 12), 7);
    EXPECT_EQ(counters.get(EventCounter::control_messages_of_ended_calls), 2u);
    EXPECT_EQ(table->call_count(), 1u);
}

TEST_F(PacketHandlerTest, RejectedCallIsRemoved) {
    Flow f{kClient1, 40000};
    open(f);
    const Bytes sent = out(f, ocrq(7));
    in(f, ocrp(300, get16(sent, 12), 3 /* busy */));
    EXPECT_EQ(table->call_count(), 0u);
    EXPECT_FALSE(gre_in(kServer, kPublic, 7).accept);
}

TEST_F(PacketHandlerTest, FragmentsAreDropped) {
    Bytes p = gre_packet(kServer, kPublic, 7, Bytes(8, 0));
    p[6] = 0x20;
    put16(p, 10, 0);
    put16(p, 10, reference_checksum(p.data(), 20));
    EXPECT_FALSE(run(Direction::Inbound, p).accept);
    EXPECT_EQ(counters.get(DropReason::ip_fragment), 1u);
}

TEST_F(PacketHandlerTest, TransitAndOtherPortsAreLeftAlone) {
    Bytes p = tcp_packet(kClient1, kServer, 40000, 1723, 1, ACK | PSH, ocrq(7));
    EXPECT_TRUE(run(Direction::Transit, p).accept);
    Bytes other = tcp_packet(kClient1, kServer, 40000, 1724, 1, ACK | PSH, ocrq(7));
    const Verdict v = run(Direction::Outbound, other);
    EXPECT_TRUE(v.accept);
    EXPECT_FALSE(v.modified);
    handler->enable_port(1724);
    Bytes now = tcp_packet(kClient1, kServer, 40000, 1724, 1, ACK | PSH, ocrq(7));
    EXPECT_TRUE(run(Direction::Outbound, now).accept);
    EXPECT_EQ(table->call_count(), 1u);  // picked up mid-stream on the new port
}

TEST_F(PacketHandlerTest, StreamPickedUpAfterRestart) {
    Flow f{kClient1, 40000};
    // No SYN seen: the agent started while the connection was up.
    const Bytes sent = out(f, ocrq(7));
    EXPECT_EQ(get16(sent, 12), 7);
    const Bytes got = in(f, ocrp(300, 7));
    EXPECT_EQ(get16(got, 14), 7);
    EXPECT_TRUE(gre_in(kServer, kPublic, 7).accept);
}

TEST_F(PacketHandlerTest, AStreamCarriedElsewhereIsPickedUpAgainAfterResynchronize) {
    Flow f{kClient1, 40000};
    handshake(f);
    out(f, sccrq());
    in(f, sccrp());
    out(f, ocrq(7));
    in(f, ocrp(300, 7));
    ControlConnection* conn = table->find_connection(ConnectionKey{kClient1, kServer, 40000, 1723});
    ASSERT_NE(conn, nullptr);
    // Another gateway carried 96 bytes each way meanwhile (an HA takeover):
    // without a resync the next message would wait for bytes it never sees.
    handler->resynchronize(*conn);
    f.out_seq += 96;
    f.in_seq += 96;
    EXPECT_FALSE(out(f, echo_request(5)).empty());
    EXPECT_FALSE(in(f, echo_reply(5)).empty());
    EXPECT_EQ(counters.get(EventCounter::control_streams_resynchronized), 2u);
    EXPECT_EQ(handler->held_segments(), 0u);
    // In sequence after a resync: nothing to pick up, nothing counted.
    handler->resynchronize(*conn);
    EXPECT_FALSE(out(f, echo_request(6)).empty());
    EXPECT_EQ(counters.get(EventCounter::control_streams_resynchronized), 2u);
    EXPECT_TRUE(gre_in(kServer, kPublic, 7).accept);
}

class RandomIdTest : public PacketHandlerTest {
protected:
    static TableConfig random_ids() {
        TableConfig c;
        c.call_id_allocation = CallIdAllocation::Random;
        c.random_seed = 7;
        return c;
    }
    RandomIdTest() : PacketHandlerTest(random_ids()) {}
};

TEST_F(RandomIdTest, ANagleSenderThatWaitsForItsAckInsideACallIdFieldDoesNotStall) {
    // The client sends its request's first 13 bytes (one byte into the Call
    // ID field) and the rest only once those are acknowledged, as classic
    // Nagle does; its TCP resends the unacknowledged byte alone.
    Flow f{kClient1, 40000};
    open(f);
    const Bytes request = ocrq(0x1234);
    const std::uint32_t start = f.out_seq;
    Bytes first =
        tcp_packet(f.client, f.server, f.port, 1723, start, ACK | PSH, Bytes(request.begin(), request.begin() + 13));
    ASSERT_TRUE(run(Direction::Outbound, first, 500).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    ASSERT_EQ(deferred.entries.size(), 1u);
    EXPECT_TRUE(deferred.entries[0].accept);
    EXPECT_EQ(tcp_payload(deferred.entries[0].packet), Bytes(request.begin(), request.begin() + 12))
        << "the bytes before the field go on alone";
    Bytes resend = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH, Bytes{request[12]});
    ASSERT_TRUE(run(Direction::Outbound, resend, 501).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    ASSERT_EQ(deferred.entries.size(), 2u);
    ASSERT_TRUE(deferred.entries[1].accept);
    const Bytes high = tcp_payload(deferred.entries[1].packet);
    ASSERT_EQ(high.size(), 1u);
    EXPECT_TRUE(tcp_checksum_ok(deferred.entries[1].packet));
    // Now acknowledged, the client sends the rest: the low byte follows
    // the high byte that went, and the two make the call's public Call ID.
    Bytes rest =
        tcp_packet(f.client, f.server, f.port, 1723, start + 13, ACK | PSH, Bytes(request.begin() + 13, request.end()));
    const Verdict v = run(Direction::Outbound, rest);
    ASSERT_TRUE(v.accept);
    const Bytes low = tcp_payload(rest);
    const auto sent = static_cast<std::uint16_t>(high[0] << 8 | low[0]);
    ASSERT_EQ(table->call_count(), 1u);
    const Call* call = nullptr;
    table->for_each_call([&](const Call& c) { call = &c; });
    EXPECT_EQ(call->inside_call_id, 0x1234);
    EXPECT_EQ(call->public_call_id, sent);
    EXPECT_NE(sent, 0x1234) << "random allocation rewrote it";
    EXPECT_EQ(counters.get(EventCounter::control_call_id_fields_split), 1u);
    // The server answers with the public Call ID; the client gets its own.
    f.out_seq = start + static_cast<std::uint32_t>(request.size());
    const Bytes reply = in(f, ocrp(300, sent));
    EXPECT_EQ(get16(reply, 14), 0x1234);
    Bytes gre;
    EXPECT_TRUE(gre_in(kServer, kPublic, sent, &gre).accept);
}

TEST_F(RandomIdTest, ASplitFieldThatNamesNoCallIsNeutralised) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 0x0101, 300);
    const Bytes clear = ccrq(0x0199);  // no call has this inside Call ID
    const std::uint32_t start = f.out_seq;
    Bytes head =
        tcp_packet(f.client, f.server, f.port, 1723, start, ACK | PSH, Bytes(clear.begin(), clear.begin() + 13));
    ASSERT_TRUE(run(Direction::Outbound, head, 600).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes one = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH, Bytes{clear[12]});
    ASSERT_TRUE(run(Direction::Outbound, one, 601).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    ASSERT_EQ(deferred.entries.size(), 2u);
    const std::uint8_t high = tcp_payload(deferred.entries[1].packet)[0];
    EXPECT_EQ(high, pa >> 8) << "the only call whose inside Call ID starts so";
    Bytes rest =
        tcp_packet(f.client, f.server, f.port, 1723, start + 13, ACK | PSH, Bytes(clear.begin() + 13, clear.end()));
    EXPECT_TRUE(run(Direction::Outbound, rest).accept);
    const auto sent = static_cast<std::uint16_t>(high << 8 | tcp_payload(rest)[0]);
    EXPECT_NE(sent, pa) << "it names no call: not the one whose high byte it shares";
    EXPECT_EQ(table->call_count(), 1u);
    EXPECT_EQ(table->find_connection(ConnectionKey{kClient1, kServer, 40000, 1723})->calls[0]->state,
              CallState::Established);
}

// Real peers' quirks, with the bytes they send.
TEST_F(RandomIdTest, AccelPppsDisconnectNotifyNamesThePnsCallId) {
    // accel-ppp (a PAC) fills Call-Disconnect-Notify's Call ID with the
    // PNS's Call ID (peer_call_id) instead of its own.
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 7, 300);
    Verdict v;
    const Bytes got = in(f, cdn(pa), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(got, 12), 7) << "the client gets its own Call ID";
    EXPECT_EQ(table->call_count(), 0u) << "and the call ends";
    // pptp-linux does not take that notify for its call and clears it later:
    // the ended call keeps its translation.
    const Bytes late = out(f, ccrq(7), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(late, 12), pa);
    EXPECT_EQ(counters.get(EventCounter::control_call_ids_neutralised), 0u);
}

TEST_F(RandomIdTest, PptpLinuxAnswersAPacsClearRequestWithADisconnectNotify) {
    // A PAC's Call-Clear-Request names the PNS's Call ID; pptp-linux answers
    // it with a Call-Disconnect-Notify that repeats that Call ID. Neither is
    // from the sender RFC 2637 names.
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 7, 300);
    Verdict v;
    const Bytes clear = in(f, ccrq(pa), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), 7);
    const Bytes notify = out(f, cdn(7), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(notify, 12), pa);
    EXPECT_EQ(table->call_count(), 0u);
    EXPECT_EQ(counters.get(DropReason::control_wrong_sender), 0u);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 0u);
}

TEST_F(RandomIdTest, MessagesAboutARefusedCallOrOneEndedLongAgoStillTranslate) {
    Flow f{kClient1, 40000};
    open(f);
    // Twelve calls the server refuses, more than any fixed short list keeps.
    std::vector<std::uint16_t> publics;
    for (std::uint16_t id = 1; id <= 12; ++id) {
        const Bytes sent = out(f, ocrq(id));
        publics.push_back(get16(sent, 12));
        const Bytes reply = in(f, ocrp(0, publics.back(), 3));  // result 3: busy
        EXPECT_EQ(get16(reply, 14), id);
    }
    EXPECT_EQ(table->call_count(), 0u);
    Verdict v;
    const Bytes clear = out(f, ccrq(1), &v);  // a late clear of the first
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), publics.front());
    EXPECT_EQ(counters.get(EventCounter::control_call_ids_neutralised), 0u);
}

TEST_F(RandomIdTest, ARefusalThatRepeatsAnotherCallsIdRemovesOnlyItsOwnCall) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 7, 300);
    for (const std::uint16_t refusal_id : {std::uint16_t{300}, std::uint16_t{0}}) {
        const Bytes sent = out(f, ocrq(8));
        const std::uint16_t pb = get16(sent, 12);
        Verdict v;
        const Bytes reply = in(f, ocrp(refusal_id, pb, 4), &v);  // result 4: do not accept
        EXPECT_TRUE(v.accept);
        EXPECT_EQ(get16(reply, 14), 8);
        EXPECT_EQ(table->call_count(), 1u) << refusal_id;
        EXPECT_TRUE(gre_in(kServer, kPublic, pa).accept) << "the first call lives";
        Bytes out_gre;
        EXPECT_TRUE(gre_out(kClient1, kServer, 300, &out_gre).accept) << "and keeps its GRE both ways";
    }
}

TEST_F(RandomIdTest, CallsOfAConnectionPickedUpMidStreamAreNeutralisedNotReset) {
    // The agent restarted: the connection is picked up at a message start,
    // and a message about a call from before the restart names no call.
    Flow f{kClient1, 40000};
    Verdict v;
    const Bytes clear = out(f, ccrq(4321), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(clear, 12), 0);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 0u);
    const Bytes notify = in(f, cdn(5555), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(notify, 12), 0);
    EXPECT_NE(call(f, 9, 301), 0) << "a new call on it works";
}

TEST_F(PacketHandlerTest, AConnectionPickedUpAtItsStartRequestStartsAfresh) {
    // Forgotten before its first message (the setup timeout, a restart):
    // its Start-Control-Connection-Request is a start, not a violation.
    Flow f{kClient1, 40000};
    Verdict v;
    out(f, sccrq(), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_FALSE(v.modified);
    in(f, sccrp(), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(table->find_connection(ConnectionKey{kClient1, kServer, 40000, 1723})->state,
              ConnectionState::Established);
    EXPECT_NE(call(f, 7, 300), 0);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 0u);
}

class SmallIdSpaceTest : public PacketHandlerTest {
protected:
    static TableConfig one_id() {
        TableConfig c;
        c.call_id_min = 40;
        c.call_id_max = 40;
        return c;
    }
    SmallIdSpaceTest() : PacketHandlerTest(one_id()) {}
};

TEST_F(SmallIdSpaceTest, ExhaustionRefusesTheNewCallAndKeepsTheOld) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    EXPECT_EQ(call(a, 7, 300), 40);
    Bytes p = tcp_packet(b.client, b.server, b.port, 1723, b.out_seq, ACK | PSH, ocrq(7));
    const Verdict v = run(Direction::Outbound, p);
    // The request goes on as a bare RST: the server drops the control
    // connection and the client's next resend is answered with a reset.
    ASSERT_TRUE(v.accept);
    EXPECT_EQ(v.length, 40u);
    EXPECT_EQ(p.size(), 40u);
    EXPECT_EQ(p[33] & 0x04, 0x04);
    EXPECT_TRUE(tcp_checksum_ok(p));
    EXPECT_EQ(counters.get(DropReason::call_id_space_exhausted), 1u);
    EXPECT_EQ(table->find_connection(ConnectionKey{kClient2, kServer, 40000, 1723})->state, ConnectionState::Reset);
    // The client's resend goes on without its bytes, as a bare ACK: the
    // server, reset already, answers it with an RST, so the client ends too.
    Bytes again = tcp_packet(b.client, b.server, b.port, 1723, b.out_seq, ACK | PSH, ocrq(7));
    const Verdict v2 = run(Direction::Outbound, again);
    EXPECT_TRUE(v2.accept);
    EXPECT_EQ(v2.length, 40u);
    EXPECT_EQ(again[33], 0x10) << "ACK only";
    // That RST passes on to the client untouched.
    Bytes rst = tcp_packet(b.server, b.client, 1723, b.port, b.in_seq, RST, {});
    const Verdict v3 = run(Direction::Inbound, rst);
    EXPECT_TRUE(v3.accept);
    EXPECT_FALSE(v3.modified);
    EXPECT_TRUE(gre_in(kServer, kPublic, 40).accept);
    EXPECT_EQ(table->call_count(), 1u);
}

TEST_F(PacketHandlerTest, BadMagicResetsTheConnectionWithOneRstToEachPeer) {
    Flow f{kClient1, 40000};
    open(f);
    Bytes bad = ocrq(7);
    put32(bad, 4, 0xDEADBEEF);
    Verdict v;
    const std::uint32_t client_at = f.out_seq;
    out(f, bad, &v);
    expect_reset(v, DropReason::control_bad_magic_cookie, client_at);
    // The server, not yet reset, sends something: it goes to the client as an
    // RST where the client expects the server's next byte.
    const std::uint32_t server_at = f.in_seq;
    in(f, echo_request(9), &v);
    EXPECT_TRUE(v.accept);
    ASSERT_EQ(last.size(), 40u);
    EXPECT_EQ(last[33] & 0x04, 0x04);
    EXPECT_EQ(get32(last, 24), server_at);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u);
    // Later bytes of either side never pass.
    EXPECT_TRUE(out(f, ocrq(8)).empty());
    EXPECT_TRUE(in(f, echo_request(10)).empty());
    EXPECT_EQ(table->call_count(), 0u);
}

class StrictStateTest : public PacketHandlerTest {};

TEST_F(StrictStateTest, CallRequestBeforeStartIsOutOfState) {
    Flow f{kClient1, 40000};
    handshake(f);
    Verdict v;
    const std::uint32_t at = f.out_seq;
    out(f, ocrq(7), &v);
    expect_reset(v, DropReason::control_out_of_state, at);
    EXPECT_EQ(table->call_count(), 0u);
}

TEST_F(StrictStateTest, CallRequestRightBehindStartRequestIsAccepted) {
    Flow f{kClient1, 40000};
    handshake(f);
    Verdict v;
    out(f, concat({sccrq(), ocrq(7)}), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(table->call_count(), 1u);
}

TEST_F(StrictStateTest, ReplyFromTheWrongSideIsRefused) {
    Flow f{kClient1, 40000};
    open(f);
    out(f, ocrq(7));
    Verdict v;
    const std::uint32_t at = f.out_seq;
    out(f, ocrp(7, 7), &v);  // the PNS cannot answer its own request
    expect_reset(v, DropReason::control_wrong_sender, at);
}

TEST_F(StrictStateTest, SecondReplyIsOutOfState) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    Verdict v;
    const std::uint32_t at = f.in_seq;
    in(f, ocrp(301, 7), &v);
    expect_reset(v, DropReason::control_out_of_state, at);
}

TEST_F(StrictStateTest, VersionOtherThanOneIsRefused) {
    Flow f{kClient1, 40000};
    handshake(f);
    Bytes start = sccrq();
    put16(start, 12, 0x0200);
    Verdict v;
    const std::uint32_t at = f.out_seq;
    out(f, start, &v);
    expect_reset(v, DropReason::control_bad_protocol_version, at);
}

TEST_F(StrictStateTest, ConnectedWithoutIncomingCallIsOutOfState) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t id = call(f, 7, 300);
    Verdict v;
    const std::uint32_t at = f.in_seq;
    in(f, iccn(id), &v);
    expect_reset(v, DropReason::control_out_of_state, at);
}

class AcceptPolicyTest : public PacketHandlerTest {
protected:
    static HandlerConfig accept_policy() {
        HandlerConfig c;
        c.on_violation = ViolationPolicy::Accept;
        return c;
    }
    AcceptPolicyTest() : PacketHandlerTest(TableConfig{}, accept_policy()) {}
};

TEST_F(AcceptPolicyTest, ViolationsPassTranslatedAndTheStreamGoesOn) {
    Flow a{kClient1, 40000};
    open(a);
    const std::uint16_t pa = call(a, 7, 300);
    Verdict v;
    // A second reply for the call: out of state, passed on, its Call IDs
    // still translated, nothing changed.
    const Bytes passed = in(a, ocrp(301, pa), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(get16(passed, 14), 7);
    EXPECT_EQ(counters.get(DropReason::control_out_of_state), 1u);
    EXPECT_EQ(table->find_by_outside_id(*table->find_connection(ConnectionKey{kClient1, kServer, 40000, 1723}), 301),
              nullptr);
    EXPECT_TRUE(gre_in(kServer, kPublic, pa).accept);
    const std::uint16_t pb = call(a, 8, 302);  // the stream is still followed
    EXPECT_NE(pb, pa);
}

TEST_F(AcceptPolicyTest, BrokenFramingStillResets) {
    Flow f{kClient1, 40000};
    open(f);
    Bytes bad = ocrq(7);
    put16(bad, 0, 5000);  // a length no message has
    Verdict v;
    const std::uint32_t at = f.out_seq;
    out(f, bad, &v);
    expect_reset(v, DropReason::control_bad_length, at);
}

class PerHostLimitTest : public PacketHandlerTest {
protected:
    static TableConfig two_per_host() {
        TableConfig c;
        c.max_connections_per_host = 2;
        return c;
    }
    PerHostLimitTest() : PacketHandlerTest(two_per_host()) {}
};

TEST_F(PerHostLimitTest, ExtraConnectionsOfOneHostAreRefused) {
    for (std::uint16_t port = 40000; port < 40002; ++port) {
        Bytes syn = tcp_packet(kClient1, kServer, port, 1723, 1, SYN, {});
        EXPECT_TRUE(run(Direction::Outbound, syn).accept);
    }
    Bytes third = tcp_packet(kClient1, kServer, 40002, 1723, 1, SYN, {});
    const Verdict v = run(Direction::Outbound, third);
    EXPECT_FALSE(v.accept);
    EXPECT_EQ(v.reason, DropReason::control_connection_limit);
    Bytes other_host = tcp_packet(kClient2, kServer, 40002, 1723, 1, SYN, {});
    EXPECT_TRUE(run(Direction::Outbound, other_host).accept);
}

// ===== Review tests (throwaway) =====

// Once a bug, found by an adversarial review: a second SYN before any data re-synchronises the direction at any
// sequence number; every byte the client then sends is a "resend" and goes
// out uninspected.
TEST_F(RandomIdTest, ASecondSynBeforeDataMovesNothing) {
    Flow b{kClient2, 40000};
    open(b);
    const std::uint16_t pb = call(b, 0x0201, 301);
    Flow a{kClient1, 40001};
    handshake(a);
    // A second SYN, 1000 bytes ahead (inside the server's window), before any data.
    Bytes syn2 = tcp_packet(a.client, a.server, a.port, 1723, a.out_seq - 1 + 1000, SYN, {});
    ASSERT_TRUE(run(Direction::Outbound, syn2).accept);
    // The agent is fed a start request at the new position (the server only queues it out of order).
    Bytes visible = tcp_packet(a.client, a.server, a.port, 1723, a.out_seq + 1000, ACK | PSH, sccrq());
    ASSERT_TRUE(run(Direction::Outbound, visible).accept);
    in(a, sccrp());
    // What the server reads first: bytes the agent takes for resends.
    Bytes real = tcp_packet(a.client, a.server, a.port, 1723, a.out_seq, ACK | PSH, concat({ocrq(0x0101), ccrq(pb)}));
    const Verdict v = run(Direction::Outbound, real);
    ASSERT_TRUE(v.accept);
    EXPECT_EQ(counters.get(EventCounter::tcp_syns_ignored), 1u) << "the second SYN moved nothing";
    // The stream is the one the SYN opened: its first bytes are inspected
    // (an OCRQ before any start request ends the connection), none leaks.
    const Bytes sent = tcp_payload(real);
    ASSERT_TRUE(sent.empty()) << "inspected bytes of a connection that must be reset went on";
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u);
    EXPECT_EQ(table->call_count(), 1u);
    EXPECT_NE(pb, 0);
}

// Once a bug, found by an adversarial review: a resend is checked only at logged field bytes: other bytes (framing)
// may differ, so a receiver that did not get the first copy sees messages the
// agent never inspected.
TEST_F(RandomIdTest, AResendWithOtherFramingIsDropped) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 0x0101, 300);
    ASSERT_NE(pa, 0x0101);
    const std::uint32_t seq = f.out_seq;
    out(f, concat({echo_request(1), echo_request(2)}));  // no field: nothing logged
    Bytes resend =
        tcp_packet(f.client, f.server, f.port, 1723, seq, ACK | PSH, concat({ccrq(0x0101), echo_request(2)}));
    const Verdict v = run(Direction::Outbound, resend);
    EXPECT_FALSE(v.accept && get16(tcp_payload(resend), 12) == 0x0101)
        << "inside Call ID 0x0101 of a mapped call (public " << pa << ") left untranslated";
}

// Once a bug, found by an adversarial review: fields left unrewritten (the outside peer's Call IDs) are not logged.
TEST_F(PacketHandlerTest, AResendMayNotChangeAFieldLeftAsItWas) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    const std::uint32_t seq = f.out_seq;
    out(f, sli(300));
    Bytes resend = tcp_packet(f.client, f.server, f.port, 1723, seq, ACK | PSH, sli(0xBEEF));
    const Verdict v = run(Direction::Outbound, resend);
    EXPECT_FALSE(v.accept) << "resend with other bytes in a decided field passed: " << std::hex
                           << get16(tcp_payload(resend), 12);
}

// Once a bug, found by an adversarial review: more than 32 Call ID fields in flight: the resend of the first
// segment is dropped for ever.
TEST_F(PacketHandlerTest, AResendWithManyFieldsInFlightStillGoesOn) {
    Flow f{kClient1, 40000};
    open(f);
    for (std::uint16_t i = 0; i < 33; ++i) {
        call(f, static_cast<std::uint16_t>(0x100 + i), static_cast<std::uint16_t>(500 + i));
    }
    Bytes seg1, seg2;
    for (std::uint16_t i = 0; i < 16; ++i) seg1 = concat({seg1, ccrq(static_cast<std::uint16_t>(0x100 + i))});
    for (std::uint16_t i = 16; i < 33; ++i) seg2 = concat({seg2, ccrq(static_cast<std::uint16_t>(0x100 + i))});
    const std::uint32_t seq1 = f.out_seq;
    out(f, seg1);
    out(f, seg2);
    // seg1 was lost beyond the agent: the client resends it, again and again.
    for (int attempt = 0; attempt < 3; ++attempt) {
        Bytes again = tcp_packet(f.client, f.server, f.port, 1723, seq1, ACK | PSH, seg1);
        const Verdict v = run(Direction::Outbound, again);
        EXPECT_TRUE(v.accept) << "attempt " << attempt << ": " << drop_reason_name(v.reason);
    }
}

// Once a bug, found by an adversarial review: one packet per spoofed outside address, no handshake, creates an
// Established connection that lives control_idle_timeout; the global limit
// then refuses every other user.
class SmallConnectionLimitTest : public PacketHandlerTest {
protected:
    static TableConfig cfg() {
        TableConfig c;
        c.max_connections = 4;
        return c;
    }
    SmallConnectionLimitTest() : PacketHandlerTest(cfg()) {}
};
TEST_F(SmallConnectionLimitTest, SpoofedMidStreamSegmentsDoNotLockAnyoneOut) {
    constexpr std::uint32_t kInsideServer = 0xC6120064;  // behind a port forward
    for (std::uint32_t i = 0; i < 4; ++i) {
        Bytes p = tcp_packet(0x0A000001 + i, kInsideServer, 5555, 1723, 12345, ACK | PSH, echo_request(1));
        EXPECT_TRUE(run(Direction::Inbound, p).accept);
    }
    clock.advance(std::chrono::seconds(31));
    table->expire();
    clock.advance(std::chrono::seconds(600));
    table->expire();
    Bytes syn = tcp_packet(kClient1, kServer, 40000, 1723, 1, SYN, {});
    const Verdict v = run(Direction::Outbound, syn);
    EXPECT_TRUE(v.accept) << "an inside client is refused 631 s later: " << drop_reason_name(v.reason)
                          << ", connections " << table->connection_count();
}

// Once a bug, found by an adversarial review: a split field that names no call is "neutralised" to a value that is
// another connection's public Call ID at the same server.
TEST_F(PacketHandlerTest, ANeutralisedSplitFieldNamesNoOtherConnectionsCall) {
    Flow b{kClient2, 40000};
    open(b);
    const std::uint16_t pb = call(b, 0x0100, 301);
    ASSERT_EQ(pb, 0x0100);
    Flow a{kClient1, 40000};
    open(a);
    ASSERT_EQ(call(a, 0x0105, 300), 0x0105);
    const Bytes clear = ccrq(0x0107);  // names no call
    const std::uint32_t start = a.out_seq;
    Bytes head =
        tcp_packet(a.client, a.server, a.port, 1723, start, ACK | PSH, Bytes(clear.begin(), clear.begin() + 13));
    ASSERT_TRUE(run(Direction::Outbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes one = tcp_packet(a.client, a.server, a.port, 1723, start + 12, ACK | PSH, Bytes{clear[12]});
    ASSERT_TRUE(run(Direction::Outbound, one, 901).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    ASSERT_EQ(deferred.entries.size(), 2u);
    const std::uint8_t high =
        deferred.entries[1].packet.empty() ? clear[12] : tcp_payload(deferred.entries[1].packet)[0];
    Bytes rest =
        tcp_packet(a.client, a.server, a.port, 1723, start + 13, ACK | PSH, Bytes(clear.begin() + 13, clear.end()));
    ASSERT_TRUE(run(Direction::Outbound, rest).accept);
    const auto sent = static_cast<std::uint16_t>(high << 8 | tcp_payload(rest)[0]);
    EXPECT_NE(sent, pb) << "A's Call-Clear-Request left naming B's call " << std::hex << pb;
    EXPECT_EQ(counters.get(EventCounter::control_call_ids_neutralised), 1u) << "one field neutralised";
}

// Once a bug, found by an adversarial review: two calls whose inside IDs share a high byte but whose public IDs do
// not: a strict-Nagle clear of one stalls for ever.
TEST_F(RandomIdTest, AnUndecidableSplitFieldResetsInsteadOfStalling) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t p1 = call(f, 0x0101, 300);
    const std::uint16_t p2 = call(f, 0x0102, 301);
    ASSERT_NE(p1 >> 8, p2 >> 8);
    const Bytes clear = ccrq(0x0101);
    const std::uint32_t start = f.out_seq;
    Bytes head =
        tcp_packet(f.client, f.server, f.port, 1723, start, ACK | PSH, Bytes(clear.begin(), clear.begin() + 13));
    ASSERT_TRUE(run(Direction::Outbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();  // cut: 12 bytes go
    // Its first byte alone names two calls with public Call IDs of
    // different high bytes: undecidable, so the connection is reset.
    Bytes one = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH, Bytes{clear[12]});
    ASSERT_TRUE(run(Direction::Outbound, one, 1000).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    EXPECT_EQ(counters.get(DropReason::control_call_id_undecidable), 1u);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u);
    EXPECT_EQ(table->call_count(), 0u);
    EXPECT_EQ(counters.get(DropReason::control_hold_timeout), 0u) << "no stall";
}

// Once a bug, found by an adversarial review: a call request refused in the split-field path is counted and logged
// as refused but the connection is not reset; the request passes.
class OneCallLimitTest : public PacketHandlerTest {
protected:
    static TableConfig cfg() {
        TableConfig c;
        c.max_calls_per_connection = 1;
        return c;
    }
    OneCallLimitTest() : PacketHandlerTest(cfg()) {}
};
TEST_F(OneCallLimitTest, ARefusalInTheSplitPathResets) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    const Bytes request = icrq(0x0400);  // from the outside PAC
    const std::uint32_t start = f.in_seq;
    Bytes head =
        tcp_packet(f.server, f.client, 1723, f.port, start, ACK | PSH, Bytes(request.begin(), request.begin() + 13));
    ASSERT_TRUE(run(Direction::Inbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes one = tcp_packet(f.server, f.client, 1723, f.port, start + 12, ACK | PSH, Bytes{request[12]});
    ASSERT_TRUE(run(Direction::Inbound, one, 901).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes rest =
        tcp_packet(f.server, f.client, 1723, f.port, start + 13, ACK | PSH, Bytes(request.begin() + 13, request.end()));
    const Verdict v = run(Direction::Inbound, rest);
    EXPECT_EQ(counters.get(DropReason::call_limit), 1u);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u)
        << "refusal counted, but the connection was not reset; verdict accept=" << v.accept << " length=" << v.length;
}

// Once a bug, found by an adversarial review: accel-ppp's Call-Disconnect-Notify (PNS's Call ID) split in the
// field: neutralised instead of ending the call.
TEST_F(RandomIdTest, ASplitAccelPppDisconnectNotifyEndsTheCall) {
    Flow f{kClient1, 40000};
    open(f);
    const std::uint16_t pa = call(f, 7, 300);
    ASSERT_NE(pa >> 8, 0);
    const Bytes notify = cdn(pa);
    const std::uint32_t start = f.in_seq;
    Bytes head =
        tcp_packet(f.server, f.client, 1723, f.port, start, ACK | PSH, Bytes(notify.begin(), notify.begin() + 13));
    ASSERT_TRUE(run(Direction::Inbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes one = tcp_packet(f.server, f.client, 1723, f.port, start + 12, ACK | PSH, Bytes{notify[12]});
    ASSERT_TRUE(run(Direction::Inbound, one, 901).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes rest =
        tcp_packet(f.server, f.client, 1723, f.port, start + 13, ACK | PSH, Bytes(notify.begin() + 13, notify.end()));
    ASSERT_TRUE(run(Direction::Inbound, rest).accept);
    EXPECT_EQ(table->call_count(), 0u) << "the whole-field path ends the call; split, it was neutralised ("
                                       << counters.get(EventCounter::control_call_ids_neutralised) << ")";
}

// Once a bug, found by an adversarial review: a FIN on a segment that was held (reordered) is never seen.
TEST_F(PacketHandlerTest, TheFinOfAHeldSegmentClosesWhenItGoesOn) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    const std::uint32_t seq = f.out_seq;
    Bytes second = tcp_packet(f.client, f.server, f.port, 1723, seq + 16, ACK | FIN, echo_request(2));
    ASSERT_TRUE(run(Direction::Outbound, second, 900).held);
    Bytes first = tcp_packet(f.client, f.server, f.port, 1723, seq, ACK | PSH, echo_request(1));
    ASSERT_TRUE(run(Direction::Outbound, first).accept);
    ASSERT_EQ(deferred.entries.size(), 1u);
    EXPECT_TRUE(deferred.entries[0].accept);
    EXPECT_EQ(table->find_connection(ConnectionKey{kClient1, kServer, 40000, 1723})->state, ConnectionState::Closed)
        << "the in-order FIN went on but the connection and its call stay (calls: " << table->call_count() << ")";
}

// Once a bug, found by an adversarial review: held segments count against the *sender*: outside client O1 makes
// the inside server's segments fill its per-host budget; O2's connection to
// that server can then hold nothing.
TEST_F(PacketHandlerTest, HoldsOfAServerBehindAPortForwardCountAgainstItsClients) {
    constexpr std::uint32_t kInsideServer = 0xC6120064;
    auto key_flow = [&](std::uint32_t outside, std::uint16_t port, std::uint32_t seq_base) {
        Bytes syn = tcp_packet(outside, kInsideServer, port, 1723, seq_base - 1, SYN, {});
        EXPECT_TRUE(run(Direction::Inbound, syn).accept);
        Bytes synack = tcp_packet(kInsideServer, outside, 1723, port, 90000 - 1, SYN | ACK, {});
        EXPECT_TRUE(run(Direction::Outbound, synack).accept);
    };
    const std::uint32_t kO1 = 0x0A000001, kO2 = 0x0A000002;
    for (std::uint16_t c = 0; c < 8; ++c) {
        key_flow(kO1, static_cast<std::uint16_t>(6000 + c), 1000);
        for (std::uint32_t h = 0; h < 8; ++h) {
            Bytes p = tcp_packet(kInsideServer, kO1, 1723, static_cast<std::uint16_t>(6000 + c), 90000 + 100 + h * 20,
                                 ACK | PSH, Bytes(10, 0));
            EXPECT_TRUE(run(Direction::Outbound, p).held);
        }
    }
    key_flow(kO2, 7000, 1000);
    Bytes p = tcp_packet(kInsideServer, kO2, 1723, 7000, 90000 + 100, ACK | PSH, Bytes(10, 0));
    const Verdict v = run(Direction::Outbound, p);
    EXPECT_TRUE(v.held) << "O2's connection can hold nothing: " << drop_reason_name(v.reason);
}

// Once a bug, found by an adversarial review: an ended call's public ID is free at once for another connection,
// while the first connection keeps translating to it.
TEST_F(PacketHandlerTest, AnEndedCallsReusedPublicIdIsNotNamed) {
    Flow a{kClient1, 40000};
    Flow b{kClient2, 40000};
    open(a);
    open(b);
    const Bytes sent = out(a, ocrq(5));
    ASSERT_EQ(get16(sent, 12), 5);
    in(a, ocrp(0, 5, 3));  // refused: kept as an ended call
    ASSERT_EQ(call(b, 5, 301), 5) << "B now owns public 5 at this server";
    Verdict v;
    const Bytes clear = out(a, ccrq(5), &v);
    EXPECT_NE(get16(clear, 12), 5) << "A's late clear names B's live call";
}

// Once a bug, found by an adversarial review: a split call request that cannot get a call: no reset, the 1-byte
// resend is held and dropped for ever, counted only as hold timeouts.
TEST_F(OneCallLimitTest, ARefusedSplitRequestResets) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    const Bytes request = ocrq(0x0400);
    const std::uint32_t start = f.out_seq;
    Bytes head =
        tcp_packet(f.client, f.server, f.port, 1723, start, ACK | PSH, Bytes(request.begin(), request.begin() + 13));
    ASSERT_TRUE(run(Direction::Outbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    Bytes one = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH, Bytes{request[12]});
    ASSERT_TRUE(run(Direction::Outbound, one).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    EXPECT_EQ(counters.get(DropReason::call_limit), 1u);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u)
        << "call_limit=" << counters.get(DropReason::call_limit)
        << " hold_timeouts=" << counters.get(DropReason::control_hold_timeout);
}

// Once a bug, found by an adversarial review: a strict-Nagle sender whose segment ends inside a reply's Call ID
// region (bytes 12..15): the cut leaves 2 bytes that are never taken.
TEST_F(PacketHandlerTest, AReplyCutInsideItsCallIdsResetsInsteadOfStalling) {
    Flow f{kClient1, 40000};
    open(f);
    const Bytes request = in(f, icrq(300));  // the outside PAC's incoming call
    const Bytes reply = icrp(7, 300);
    const std::uint32_t start = f.out_seq;
    Bytes head =
        tcp_packet(f.client, f.server, f.port, 1723, start, ACK | PSH, Bytes(reply.begin(), reply.begin() + 14));
    ASSERT_TRUE(run(Direction::Outbound, head, 900).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();  // cut before byte 12
    // Bytes 12..13 alone cannot be decided (the reply's two fields go
    // together): the connection is reset rather than left to stall.
    Bytes rest2 = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH,
                             Bytes(reply.begin() + 12, reply.begin() + 14));
    ASSERT_TRUE(run(Direction::Outbound, rest2, 1000).held);
    clock.advance(std::chrono::milliseconds(250));
    handler->expire_held();
    EXPECT_EQ(counters.get(DropReason::control_call_id_undecidable), 1u);
    EXPECT_EQ(counters.get(EventCounter::control_connections_reset), 1u);
    // The client's resend now goes to the server as an RST.
    Bytes again = tcp_packet(f.client, f.server, f.port, 1723, start + 12, ACK | PSH,
                             Bytes(reply.begin() + 12, reply.begin() + 14));
    const Verdict v = run(Direction::Outbound, again, 1001);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(v.length, 40u);
    EXPECT_EQ(again[33] & 0x04, 0x04);
    EXPECT_EQ(get32(again, 24), start + 12);
}

TEST_F(PacketHandlerTest, GreOfNoCallToTheGatewayItselfIsLeftToIt) {
    Flow f{kClient1, 40000};
    open(f);
    call(f, 7, 300);
    handler->set_local_addresses({kPublic, kPublic + 1});
    // Auto: only while the gateway has a GRE socket of its own.
    EXPECT_FALSE(gre_in(kServer, kPublic, 99).accept);
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 1u);
    handler->set_gateway_gre(true);
    Bytes p;
    const Verdict v = gre_in(kServer, kPublic, 99, &p);  // the gateway's own call
    EXPECT_TRUE(v.accept);
    EXPECT_FALSE(v.modified);
    EXPECT_EQ(counters.get(EventCounter::gre_to_gateway), 1u);
    EXPECT_FALSE(gre_in(kServer, kPublic + 5, 99).accept);  // not the gateway's: no call, dropped
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 2u);
    // A call's own GRE is still translated.
    EXPECT_TRUE(gre_in(kServer, kPublic, 7).modified);
    // Call ID 99 at that server is the gateway's own now: an inside call
    // asking for it gets another public one, so it cannot take that GRE.
    EXPECT_EQ(table->gateway_call_ids(), 1u);
    Flow f2{kClient2, 40001};
    open(f2);
    EXPECT_NE(call(f2, 99, 301), 99);
    EXPECT_TRUE(gre_in(kServer, kPublic, 99).accept);
    EXPECT_EQ(counters.get(EventCounter::gre_to_gateway), 2u);
    // Unused for the hold time, it is free again.
    clock.advance(table->config().gateway_call_id_hold + std::chrono::seconds(1));
    table->expire();
    EXPECT_EQ(table->gateway_call_ids(), 0u);
}

class StrictLocalGreTest : public PacketHandlerTest {
protected:
    StrictLocalGreTest()
        : PacketHandlerTest(TableConfig{}, HandlerConfig{ViolationPolicy::Reset, {}, HandlerConfig::LocalGre::Drop}) {}
};

TEST_F(StrictLocalGreTest, GreOfNoCallToTheGatewayIsDroppedWhenAskedTo) {
    handler->set_local_addresses({kPublic});
    handler->set_gateway_gre(true);
    EXPECT_FALSE(gre_in(kServer, kPublic, 99).accept);
    EXPECT_EQ(counters.get(DropReason::gre_no_matching_call), 1u);
}

class LearnedNatTest : public PacketHandlerTest {
protected:
    LearnedNatTest() : PacketHandlerTest(TableConfig{}, HandlerConfig{}, false) { handler->set_nat_lookup(&nat); }
    void map(const Flow& f, const NatMapping& m) {
        nat.entries.emplace_back(ConnectionKey{f.client, kServer, f.port, 1723}, m);
    }
    // An inside client's connection SNATed to `public_address`.
    static NatMapping snat(std::uint32_t client, std::uint32_t public_address) {
        return NatMapping{client, kServer, kServer, public_address};
    }
};

TEST_F(LearnedNatTest, EachConnectionUsesThePublicAddressTheKernelChose) {
    constexpr std::uint32_t kPoolA = kPublic;
    constexpr std::uint32_t kPoolB = kPublic + 1;
    const NatMapping a = snat(kClient1, kPoolA);
    const NatMapping b = snat(kClient2, kPoolB);
    Flow f1{kClient1, 40000};
    Flow f2{kClient2, 40000};
    map(f1, a);
    map(f2, b);
    open(f1);
    const std::uint16_t p1 = call(f1, 7, 300);
    open(f2);
    const std::uint16_t p2 = call(f2, 7, 300);
    EXPECT_EQ(nat.lookups, 2);  // once a connection, at its first data
    // Unique per (public address, outside peer): both keep Call ID 7.
    EXPECT_EQ(p1, 7);
    EXPECT_EQ(p2, 7);
    Bytes p;
    ASSERT_TRUE(gre_in(kServer, kPoolB, 7, &p).accept);
    EXPECT_EQ(get32(p, 16), kClient2);
    ASSERT_TRUE(gre_in(kServer, kPoolA, 7, &p).accept);
    EXPECT_EQ(get32(p, 16), kClient1);
    ASSERT_TRUE(gre_out(kClient2, kServer, 300, &p).accept);
    EXPECT_EQ(get32(p, 12), kPoolB);
    ASSERT_TRUE(gre_out(kClient1, kServer, 300, &p).accept);
    EXPECT_EQ(get32(p, 12), kPoolA);
}

TEST_F(LearnedNatTest, APortForwardedServerUsesTheAddressItsClientsDialled) {
    // The outside client opened it to kPublic:1723, DNATed to the inside server.
    const NatMapping forward{kServer, kPublic, kClient1, kServer};
    EXPECT_EQ(public_address_for(forward, kServer), kPublic);
    EXPECT_EQ(public_address_for(snat(kClient1, kPublic + 1), kServer), kPublic + 1);
    EXPECT_EQ(public_address_for(snat(kClient1, kPublic), kServer + 9), 0u);  // not this peer's
}

TEST_F(LearnedNatTest, ACallWhosePublicAddressIsUnknownIsRefused) {
    Flow f{kClient1, 40000};
    open(f);  // conntrack has no entry for it
    Verdict v;
    out(f, ocrq(7), &v);
    EXPECT_TRUE(v.accept);
    EXPECT_EQ(v.length, 40u);  // turned into an RST: nothing half translated leaves
    EXPECT_EQ(counters.get(DropReason::control_nat_unknown), 1u);
    EXPECT_EQ(table->call_count(), 0u);
}

}  // namespace
