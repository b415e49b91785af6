// libFuzzer target: the control stream reassembler. The input gives the byte
// stream of each direction of one control connection and a list of cuts
// (segments, in any order, overlapping, repeated); every segment goes
// through the packet handler. Checked: forwarded segments keep their length
// and valid checksums; bytes change only inside Call ID fields of messages
// framed from the original stream; a stream position is always rewritten the
// same way; held segments stay bounded.
#include <fuzzer/FuzzedDataProvider.h>

#include <map>

#include "harness.hpp"
#include "pptp/bytes.hpp"
#include "pptp/control_message.hpp"

using namespace fuzzing;

namespace {

// Positions (stream offsets) that lie in a Call ID field of a message, framing
// the stream from its start as the agent does.
std::vector<bool> call_id_positions(const Bytes& stream) {
    std::vector<bool> allowed(stream.size(), false);
    std::size_t at = 0;
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    nat::TableConfig tc;
    tc.call_id_min = in.ConsumeBool() ? 1 : 65530;  // sometimes a tiny ID space
    Rig rig(tc);
    const std::uint32_t client = kClients[0];
    const std::uint32_t server = kServers[0];
    const std::uint16_t port = 40000;
    Bytes streams[2];
    streams[0] = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 600));
    streams[1] = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 600));
    const std::uint32_t isn[2] = {in.ConsumeIntegral<std::uint32_t>(), in.ConsumeIntegral<std::uint32_t>()};
    const std::vector<bool> allowed[2] = {call_id_positions(streams[0]), call_id_positions(streams[1])};
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

    auto check_output = [&](int dir, std::size_t offset, const Bytes& out) {
        check_leaving(out);
        const Bytes payload = testpkt::tcp_payload(out);
        for (std::size_t i = 0; i < payload.size(); ++i) {
            const std::size_t pos = offset + i;
            if (pos >= streams[dir].size()) {
                fail("payload beyond the stream");
            }
            if (payload[i] != streams[dir][pos] && !allowed[dir][pos]) {
                fail("byte changed outside a Call ID field");
            }
            // Consistency holds while the rewrite log has not wrapped.
            if (rig.counters.get(nat::EventCounter::control_call_ids_rewritten) <= 8) {
                auto [it, inserted] = seen[dir].emplace(static_cast<std::uint32_t>(pos), payload[i]);
                if (!inserted && it->second != payload[i]) {
                    fail("the same stream byte was sent two different ways");
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
            check_leaving(packet);  // a refusal: a bare RST
            if ((packet[20 + 13] & 0x04) == 0) {
                fail("a shortened segment that is not a RST");
            }
        }
        if (rig.handler->held_segments() > rig.handler->config().max_held_total) {
            fail("held segments unbounded");
        }
        if (in_flight.size() != rig.handler->held_segments()) {
            fail("held count disagrees with the packets waiting");
        }
    }
    return 0;
}
