// libFuzzer target: the control stream reassembler. The input gives the byte
// stream of each direction of one control connection and a list of cuts
// (segments, in any order, overlapping, repeated); every segment goes
// through the packet handler. Checked: forwarded segments keep their length
// (or are cut short, or become bare RSTs/ACKs) and valid checksums; bytes
// change only inside Call ID fields of messages framed from the original
// stream; a stream position always leaves the same way; no Call ID field of
// a mapped call leaves unrewritten; held segments stay bounded.
#include <fuzzer/FuzzedDataProvider.h>

#include <map>

#include "harness.hpp"
#include "pptp/bytes.hpp"
#include "pptp/control_message.hpp"

using namespace fuzzing;

namespace {

// Positions (stream offsets) that lie in a Call ID field of a message, framing
// the stream from `from` (its start, or where the agent picked it up) as the
// agent does.
std::vector<bool> call_id_positions(const Bytes& stream, std::size_t from = 0) {
    std::vector<bool> allowed(stream.size(), false);
    std::size_t at = from;
    while (at + pptp::kHeaderSize <= stream.size()) {
        const auto check = pptp::check_header(std::span<const std::uint8_t>(stream).subspan(at, pptp::kHeaderSize));
        if (check.error != pptp::HeaderError::None) {
            break;
        }
        for (std::uint8_t off : {check.header.spec.own_call_id_offset, check.header.spec.peer_call_id_offset}) {
            if (off != 0) {
                for (std::size_t b = 0; b < 2 && at + off + b < stream.size(); ++b) {
                    allowed[at + off + b] = true;
                }
            }
        }
        at += check.header.length;
    }
    return allowed;
}

struct Field {
    std::size_t position;  // stream offset of its first byte
    bool own;              // the sender's Call ID (else the receiver's)
};

// Call ID fields of the messages framed from `from`.
std::vector<Field> call_id_fields(const Bytes& stream, std::size_t from = 0) {
    std::vector<Field> fields;
    std::size_t at = from;
    while (at + pptp::kHeaderSize <= stream.size()) {
        const auto check = pptp::check_header(std::span<const std::uint8_t>(stream).subspan(at, pptp::kHeaderSize));
        if (check.error != pptp::HeaderError::None) {
            break;
        }
        if (check.header.spec.own_call_id_offset != 0) {
            fields.push_back(Field{at + check.header.spec.own_call_id_offset, true});
        }
        if (check.header.spec.peer_call_id_offset != 0) {
            fields.push_back(Field{at + check.header.spec.peer_call_id_offset, false});
        }
        at += check.header.length;
    }
    return fields;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    nat::TableConfig tc;
    tc.call_id_min = in.ConsumeBool() ? 1 : 65530;  // sometimes a tiny ID space
    // Random public Call IDs, so that public and inside IDs differ and a
    // field that leaves unrewritten shows.
    tc.call_id_allocation = nat::CallIdAllocation::Random;
    tc.random_seed = 1;
    Rig rig(tc);
    const std::uint32_t client = kClients[0];
    const std::uint32_t server = kServers[0];
    const std::uint16_t port = 40000;
    Bytes streams[2];
    streams[0] = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 600));
    streams[1] = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 600));
    const std::uint32_t isn[2] = {in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint32_t>()};
    std::vector<bool> allowed[2] = {call_id_positions(streams[0]), call_id_positions(streams[1])};
    std::vector<Field> fields[2] = {call_id_fields(streams[0]), call_id_fields(streams[1])};
    const nat::ConnectionKey key{client, server, port, 1723};
    std::map<std::uint32_t, std::uint8_t> seen[2];  // stream offset -> byte sent

    // Handshake, so both directions are synchronized at isn + 1.
    Bytes syn = testpkt::tcp_packet(client, server, port, 1723, isn[0], testpkt::SYN, {});
    rig.handler->handle(nat::Direction::Outbound, syn, rig.next_id++);
    Bytes synack = testpkt::tcp_packet(server, client, 1723, port, isn[1], testpkt::SYN | testpkt::ACK, {});
    rig.handler->handle(nat::Direction::Inbound, synack, rig.next_id++);

    struct Sent {
        int dir;
        std::size_t offset;
        Bytes original;
    };
    std::map<std::uint32_t, Sent> in_flight;  // packet id -> what it was

    // A connection the agent forgot (a timeout) and picked up again is a new
    // one: its bytes may leave with other rewrites than the old one's.
    // Such a connection is picked up at a segment that starts a message, in
    // each direction: its framing starts there.
    std::uint64_t connection_seen = 0;
    bool had_connection = false;
    bool reframe[2] = {false, false};
    auto check_output = [&](int dir, std::size_t offset, const Bytes& out) {
        check_leaving(out);
        const nat::ControlConnection* now_tracked = rig.table->find_connection(key);
        const std::uint64_t id = now_tracked == nullptr ? 0 : now_tracked->id;
        if (id != connection_seen) {
            seen[0].clear();
            seen[1].clear();
            connection_seen = id;
            if (id != 0 && had_connection) {
                reframe[0] = reframe[1] = true;
            }
            had_connection = had_connection || id != 0;
        }
        if (reframe[dir] && !testpkt::tcp_payload(out).empty()) {
            reframe[dir] = false;
            allowed[dir] = call_id_positions(streams[dir], offset);
            fields[dir] = call_id_fields(streams[dir], offset);
        }
        const Bytes payload = testpkt::tcp_payload(out);
        for (std::size_t i = 0; i < payload.size(); ++i) {
            const std::size_t pos = offset + i;
            if (pos >= streams[dir].size()) {
                fail("payload beyond the stream");
            }
            if (payload[i] != streams[dir][pos] && !allowed[dir][pos]) {
                fail("byte changed outside a Call ID field");
            }
            // Resends beyond the field log are dropped, so this always holds.
            auto [it, inserted] = seen[dir].emplace(static_cast<std::uint32_t>(pos), payload[i]);
            if (!inserted && it->second != payload[i]) {
                fail("the same stream byte was sent two different ways");
            }
        }
        // A field that left as it came must not be the untranslated side of
        // a live call's mapping: an inside Call ID going out whose public one
        // differs, or a public one coming in whose inside one differs.
        const nat::ControlConnection* conn = rig.table->find_connection(key);
        if (conn == nullptr || conn->state == nat::ConnectionState::Reset) {
            return;
        }
        for (const Field& f : fields[dir]) {
            if (f.position < offset || f.position + 2 > offset + payload.size()) {
                continue;
            }
            const std::uint16_t sent = pptp::load_be16(payload.data() + (f.position - offset));
            if (sent != pptp::load_be16(streams[dir].data() + f.position)) {
                continue;
            }
            const bool inside_side = (dir == 0) == f.own;  // the value is in the inside peer's ID space
            for (const nat::Call* call : conn->calls) {
                if (!inside_side || !call->inside_known || call->inside_call_id == call->public_call_id) {
                    continue;
                }
                if (dir == 0 && sent == call->inside_call_id) {
                    fail("an inside Call ID of a mapped call left unrewritten");
                }
                if (dir == 1 && sent == call->public_call_id) {
                    fail("a public Call ID of a mapped call reached the inside unrewritten");
                }
            }
        }
    };

    // Verdicts of held packets, whenever they come.
    auto drain = [&] {
        for (const Released& r : rig.recorder.released) {
            auto it = in_flight.find(r.id);
            if (it == in_flight.end()) {
                fail("verdict for a packet that was never held, or twice");
            }
            if (r.accept) {
                check_output(it->second.dir, it->second.offset, r.packet.empty() ? it->second.original : r.packet);
            }
            in_flight.erase(it);
        }
        rig.recorder.released.clear();
    };

    for (int step = 0; step < 64 && in.remaining_bytes() > 0; ++step) {
        const int dir = in.ConsumeBool() ? 1 : 0;
        if (in.ConsumeIntegralInRange<int>(0, 15) == 0) {
            rig.clock.advance(std::chrono::milliseconds(in.ConsumeIntegralInRange<int>(0, 3000)));
            rig.handler->expire_held();
            rig.table->expire();
            drain();
        }
        if (streams[dir].empty()) {
            continue;
        }
        const std::size_t start = in.ConsumeIntegralInRange<std::size_t>(0, streams[dir].size() - 1);
        const std::size_t length = in.ConsumeIntegralInRange<std::size_t>(1, streams[dir].size() - start);
        const Bytes payload(streams[dir].begin() + static_cast<long>(start),
                            streams[dir].begin() + static_cast<long>(start + length));
        const std::uint32_t seq = isn[dir] + 1 + static_cast<std::uint32_t>(start);
        Bytes packet = dir == 0 ? testpkt::tcp_packet(client, server, port, 1723, seq, testpkt::ACK, payload)
                                : testpkt::tcp_packet(server, client, 1723, port, seq, testpkt::ACK, payload);
        const Bytes original = packet;
        const std::uint32_t id = rig.next_id++;
        const nat::Verdict v =
            rig.handler->handle(dir == 0 ? nat::Direction::Outbound : nat::Direction::Inbound, packet, id);
        drain();
        if (v.held) {
            in_flight.emplace(id, Sent{dir, start, original});
        } else if (v.accept && v.length == 0) {
            if (packet.size() != original.size()) {
                fail("length changed");
            }
            check_output(dir, start, packet);
        } else if (v.accept) {
            packet.resize(v.length);
            check_leaving(packet);  // a reset connection: a bare RST, or a bare ACK that draws one
            if (!testpkt::tcp_payload(packet).empty() || (packet[20 + 13] & 0x14) == 0) {
                fail("a shortened segment that is not a bare RST or ACK");
            }
        }
        if (rig.handler->held_segments() > rig.handler->config().holds.segments_total) {
            fail("held segments unbounded");
        }
        if (in_flight.size() != rig.handler->held_segments()) {
            fail("held count disagrees with the packets waiting");
        }
    }
    return 0;
}
