// The TCP follower alone, with a toy protocol and hostile segment sequences.
#include "stream/tcp_follower.hpp"

#include <gtest/gtest.h>

#include "support/packets.hpp"

using namespace stream;
using namespace testpkt;

namespace {

constexpr std::uint32_t kA = 0xC612000B;  // 198.18.0.11
constexpr std::uint32_t kB = 0xCB00710A;  // 203.0.113.10
constexpr std::uint32_t kC = 0xC612000C;  // another sender

// Records of 4 bytes; bytes 2-3 are a field that leaves as its value + 1
// (0x0101 stays as it is).
// A record whose first byte is 0xEE is refused (the consumer resets).
class RecordConsumer : public StreamConsumer {
public:
    std::size_t takeable(std::size_t, std::span<const std::uint8_t> bytes) const override {
        std::size_t at = offset_;
        for (std::size_t i = 0; i < bytes.size(); ++i, at = (at + 1) % 4) {
            if (at == 2 && i + 1 == bytes.size()) {
                return i;  // the field's second byte is missing
            }
        }
        return bytes.size();
    }
    Take take(std::size_t, std::span<const std::uint8_t> bytes, FieldWriter& fields) override {
        for (std::size_t i = 0; i < bytes.size(); ++i, offset_ = (offset_ + 1) % 4) {
            taken.push_back(bytes[i]);
            if (offset_ == 0 && bytes[i] == 0xEE) {
                return Take::Reset;
            }
            if (offset_ == 2) {
                const auto value = static_cast<std::uint16_t>((bytes[i] << 8) | bytes[i + 1]);
                fields.field(i, value == 0x0101 ? value : static_cast<std::uint16_t>(value + 1));
            }
        }
        return Take::Ok;
    }
    Bytes taken;

private:
    std::size_t offset_ = 0;
};

class Recorder : public DeferredVerdicts, public EventSink {
public:
    struct Entry {
        std::uint32_t id;
        bool accept;
        Bytes packet;
    };
    void release(std::uint32_t id, bool accept, std::span<const std::uint8_t> packet) override {
        released.push_back(Entry{id, accept, Bytes(packet.begin(), packet.end())});
    }
    void stream_event(Event e) override { ++events[static_cast<std::size_t>(e)]; }
    [[nodiscard]] int count(Event e) const { return events[static_cast<std::size_t>(e)]; }
    std::vector<Entry> released;
    std::array<int, 32> events{};
};

class FollowerTest : public ::testing::Test {
protected:
    FollowerTest() : follower(limits(), recorder) {
        follower.set_deferred_verdicts(&recorder);
        Follower::pick_up(flow, 0, 1000);
        Follower::pick_up(flow, 1, 5000);
    }
    static HoldLimits limits() {
        HoldLimits l;
        l.segments_per_host = 3;
        l.segments_total = 4;
        return l;
    }
    // A segment view of a test packet (IPv4 header of 20 bytes).
    static Segment view(Bytes& packet, std::uint32_t id = 0) {
        Segment s;
        s.packet = packet;
        s.tcp_offset = 20;
        s.payload_offset = 20 + static_cast<std::size_t>(packet[32] >> 4U) * 4U;
        s.source = get32(packet, 12);
        s.destination = get32(packet, 16);
        s.sequence = get32(packet, 24);
        s.acknowledgement = get32(packet, 28);
        s.fin = (packet[33] & FIN) != 0;
        s.syn = (packet[33] & SYN) != 0;
        s.rst = (packet[33] & RST) != 0;
        s.ack = (packet[33] & ACK) != 0;
        s.packet_id = id;
        return s;
    }
    Result send(Bytes& packet, std::uint32_t id = 0) {
        Segment s = view(packet, id);
        return follower.segment(flow, 1, 0, s, consumer, now);
    }
    Bytes data(std::uint32_t seq, const Bytes& payload, std::uint8_t flags = ACK | PSH, std::uint32_t from = kA) {
        return tcp_packet(from, kB, 40000, 1723, seq, flags, payload);
    }

    Recorder recorder;
    RecordConsumer consumer;
    Follower follower;
    Flow flow;
    Instant now{std::chrono::hours(1)};
};

TEST_F(FollowerTest, FieldsAreRewrittenAndResendsLeaveTheSame) {
    Bytes p = data(1000, {1, 2, 0, 7});
    Result r = send(p);
    ASSERT_EQ(r.action, Result::Action::Forward);
    EXPECT_TRUE(r.modified);
    EXPECT_EQ(tcp_payload(p), (Bytes{1, 2, 0, 8}));
    EXPECT_TRUE(tcp_checksum_ok(p));
    Bytes again = data(1000, {1, 2, 0, 7});
    r = send(again);
    EXPECT_EQ(r.action, Result::Action::Forward);
    EXPECT_EQ(tcp_payload(again), (Bytes{1, 2, 0, 8}));
    EXPECT_EQ(recorder.count(Event::ResendPatched), 1);
    EXPECT_EQ(consumer.taken.size(), 4u) << "each byte is taken once";
}

TEST_F(FollowerTest, ABadChecksumMovesNothing) {
    Bytes bad = data(1000, {1, 2, 0, 7});
    bad[40] ^= 0xFF;  // payload changed, checksum not
    Result r = send(bad);
    EXPECT_EQ(r.action, Result::Action::Drop);
    EXPECT_EQ(r.drop_event, Event::BadChecksum);
    EXPECT_TRUE(consumer.taken.empty());
    // The same range with other content is new, not a conflicting resend.
    Bytes good = data(1000, {3, 4, 0, 9});
    EXPECT_EQ(send(good).action, Result::Action::Forward);
    EXPECT_EQ(tcp_payload(good), (Bytes{3, 4, 0, 10}));
}

TEST_F(FollowerTest, AResendWithOtherBytesInAFieldIsDropped) {
    Bytes first = data(1000, {1, 2, 0, 7});
    send(first);
    Bytes evasion = data(1000, {1, 2, 0x15, 0xB3});  // the same bytes, another Call ID
    const Result r = send(evasion);
    EXPECT_EQ(r.action, Result::Action::Drop);
    EXPECT_EQ(r.drop_event, Event::InconsistentResend);
}

TEST_F(FollowerTest, AFieldLeftUnchangedIsProtectedToo) {
    // The consumer decided the field and kept its value: a resend with
    // another value there must not pass as it is.
    Bytes first = data(1000, {1, 2, 1, 1});
    EXPECT_FALSE(send(first).modified);
    Bytes other = data(1000, {1, 2, 0x12, 0x34});
    EXPECT_EQ(send(other).action, Result::Action::Drop);
}

TEST_F(FollowerTest, EveryUnacknowledgedByteIsCheckedAndAcknowledgedOnesAreForgotten) {
    // Many fields in flight: a resend of the first still leaves as it did.
    std::uint32_t seq = 1000;
    for (std::size_t n = 0; n < 100; ++n) {
        Bytes p = data(seq, {1, 2, 0, 7});
        ASSERT_EQ(send(p).action, Result::Action::Forward);
        seq += 4;
    }
    Bytes oldest = data(1000, {1, 2, 0, 7});
    EXPECT_EQ(send(oldest).action, Result::Action::Forward);
    EXPECT_EQ(tcp_payload(oldest), (Bytes{1, 2, 0, 8}));
    // Not a field, but other bytes than the first copy: dropped.
    Bytes reframed = data(1004, {9, 9, 0, 7});
    EXPECT_EQ(send(reframed).drop_event, Event::InconsistentResend);
    // Acknowledged bytes are still checked for a while...
    Bytes ack = tcp_packet(kB, kA, 1723, 40000, 5000, ACK, {}, seq);
    Segment s = view(ack);
    follower.segment(flow, 1, 1, s, consumer, now);
    EXPECT_EQ(flow.sides[0].sent.acknowledged, seq);
    Bytes late = data(1004, {9, 9, 9, 9});
    EXPECT_EQ(send(late).drop_event, Event::InconsistentResend);
}

TEST_F(FollowerTest, BytesAcknowledgedLongAgoAreForgottenAndTheirResendGoesOnEmpty) {
    std::uint32_t seq = 1000;
    const Bytes chunk(1000, 0x11);  // no field: the toy protocol's bytes 2-3 of each record
    for (int n = 0; n < 40; ++n) {
        Bytes p = data(seq, chunk);
        ASSERT_EQ(send(p).action, Result::Action::Forward);
        seq += 1000;
    }
    Bytes ack = tcp_packet(kB, kA, 1723, 40000, 5000, ACK, {}, seq);
    Segment s = view(ack);
    follower.segment(flow, 1, 1, s, consumer, now);
    EXPECT_LE(flow.sides[0].sent.bytes.size(), 2U * 16384U) << "bounded";
    Bytes ancient = data(1000, Bytes(1000, 0x22));
    const Result r = send(ancient);
    EXPECT_EQ(r.action, Result::Action::Forward);
    EXPECT_TRUE(r.strip_payload) << "nothing of it can be checked any more: it goes on without its bytes";
}

TEST_F(FollowerTest, ASegmentBeforeTheStreamsStartIsDropped) {
    Flow opened;
    Bytes syn = data(777, {}, SYN);
    Segment s = view(syn);
    follower.segment(opened, 3, 0, s, consumer, now);
    Bytes before = data(700, {1, 2, 0, 7});
    Segment b = view(before);
    const Result r = follower.segment(opened, 3, 0, b, consumer, now);
    EXPECT_EQ(r.action, Result::Action::Drop);
    EXPECT_EQ(r.drop_event, Event::ResendBeyondLog);
}

TEST_F(FollowerTest, OverlappingCopiesThatDisagreeAreDropped) {
    Bytes later = data(1004, {5, 6, 0, 1});  // a gap before it: held
    EXPECT_EQ(send(later, 11).action, Result::Action::Held);
    Bytes bridge = data(1000, {1, 2, 0, 7, 9, 9});  // fills the gap, but disagrees at 1004-1005
    const Result r = send(bridge, 12);
    EXPECT_EQ(r.action, Result::Action::Drop);
    EXPECT_EQ(r.drop_event, Event::InconsistentResend);
    ASSERT_EQ(recorder.released.size(), 1u);
    EXPECT_FALSE(recorder.released[0].accept);
    EXPECT_EQ(follower.held_segments(), 0u);
}

TEST_F(FollowerTest, OnlyAnRstAtTheNextSequenceNumberResets) {
    Bytes p = data(1000, {1, 2, 0, 7});
    send(p);
    for (const std::uint32_t seq : {1003U, 1005U, 2004U, 1004U - 70000U}) {
        Bytes rst = data(seq, {}, RST);
        const Result r = send(rst);
        EXPECT_FALSE(r.reset_by_peer) << seq;
        EXPECT_EQ(r.action, Result::Action::Forward) << "the endpoint answers it with a challenge ACK";
    }
    EXPECT_EQ(recorder.count(Event::ResetIgnored), 4);
    Bytes exact = data(1004, {}, RST);
    EXPECT_TRUE(send(exact).reset_by_peer);
}

TEST_F(FollowerTest, OnlyAFinInOrderFinishes) {
    Bytes ahead = data(1500, {}, ACK | FIN);
    EXPECT_FALSE(send(ahead).finished);
    Bytes with_data = data(1000, {1, 2, 0, 7}, ACK | FIN);
    EXPECT_TRUE(send(with_data).finished);
}

TEST_F(FollowerTest, ASynOnAConnectionWithDataChangesNothing) {
    Bytes p = data(1000, {1, 2, 0, 7});
    send(p);
    Bytes syn = data(777, {}, SYN);
    send(syn);
    Bytes synack = tcp_packet(kB, kA, 1723, 40000, 888, SYN | ACK, {});
    Segment s = view(synack);
    follower.segment(flow, 1, 1, s, consumer, now);
    EXPECT_EQ(recorder.count(Event::SynIgnored), 2);
    EXPECT_EQ(flow.sides[0].next_sequence, 1004u);
    EXPECT_EQ(flow.sides[1].next_sequence, 5000u);
    Bytes next = data(1004, {1, 2, 0, 1});
    EXPECT_EQ(send(next).action, Result::Action::Forward);
}

TEST_F(FollowerTest, ASegmentCutInAFieldGoesOnCutAfterTheFieldWait) {
    // A sender that waits for the ACK of its first part before it sends the
    // rest (Nagle) must not stall: the bytes before the field go on alone.
    Bytes first = data(1000, {1, 2, 0, 7, 1, 2, 0});
    EXPECT_EQ(send(first, 21).action, Result::Action::Held);
    now += std::chrono::milliseconds(100);
    follower.expire(now);
    EXPECT_TRUE(recorder.released.empty());
    now += std::chrono::milliseconds(150);
    follower.expire(now);
    ASSERT_EQ(recorder.released.size(), 1u);
    EXPECT_TRUE(recorder.released[0].accept);
    const Bytes& cut = recorder.released[0].packet;
    EXPECT_EQ(tcp_payload(cut), (Bytes{1, 2, 0, 8, 1, 2}));
    EXPECT_TRUE(ipv4_checksum_ok(cut));
    EXPECT_TRUE(tcp_checksum_ok(cut));
    EXPECT_EQ(recorder.count(Event::SegmentCut), 1);
    // The sender resends from the field on, with the rest.
    Bytes rest = data(1006, {0, 7});
    EXPECT_EQ(send(rest).action, Result::Action::Forward);
    EXPECT_EQ(tcp_payload(rest), (Bytes{0, 8}));
}

TEST_F(FollowerTest, ARefusalAsksForAResetAtTheReceiversPosition) {
    Bytes p = data(1000, {1, 2, 0, 7, 0xEE, 0, 0, 0});
    const Result r = send(p);
    EXPECT_TRUE(r.reset_requested);
    EXPECT_EQ(r.receiver_expects, 1000u);
}

TEST_F(FollowerTest, HoldsAreSharedPerHostAndBoundedInAll) {
    // Three gaps of host A are held, the fourth is not (its share is 3) ...
    for (std::uint32_t i = 0; i < 3; ++i) {
        Bytes p = data(1100 + i * 10, {1, 1, 1, 1});
        EXPECT_EQ(send(p, 30 + i).action, Result::Action::Held);
    }
    Bytes fourth = data(1200, {1, 1, 1, 1});
    EXPECT_EQ(send(fourth).action, Result::Action::Drop);
    // ... while another host still gets a hold, until the total (4) is reached.
    Flow other;
    Follower::pick_up(other, 0, 9000);
    auto from_c = [&](std::uint32_t seq, std::uint32_t id) {
        Bytes p = tcp_packet(kC, kB, 40001, 1723, seq, ACK, {1, 1, 1, 1});
        Segment s = view(p, id);
        return follower.segment(other, 2, 0, s, consumer, now).action;
    };
    EXPECT_EQ(from_c(9100, 40), Result::Action::Held);
    EXPECT_EQ(from_c(9200, 41), Result::Action::Drop);
    EXPECT_EQ(follower.held_segments(), 4u);
    follower.forget(1);
    EXPECT_EQ(follower.held_segments(), 1u);
}

}  // namespace
