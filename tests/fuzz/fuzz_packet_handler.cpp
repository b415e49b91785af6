// libFuzzer target: the whole packet handler. Each step is a raw packet, a
// control segment of one of several connections built from fuzz bytes, or a
// GRE packet (often with a live Call ID, so translation runs). Checked: the
// handler never crashes; forwarded packets keep their length (unless a
// refusal turned a segment into a RST) and valid checksums; inbound GRE is
// forwarded only to the inside peer of a live call from its own outside peer,
// with that call's inside Call ID; outbound GRE only from a live call, with
// the public address as source.
#include <fuzzer/FuzzedDataProvider.h>

#include "harness.hpp"
#include "pptp/bytes.hpp"

using namespace fuzzing;

namespace {

struct Flow {
    std::uint32_t client;
    std::uint32_t server;
    std::uint16_t port;
    std::uint32_t seq[2];
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    nat::TableConfig tc;
    tc.call_id_min = static_cast<std::uint16_t>(in.ConsumeIntegralInRange<int>(1, 65535));
    tc.call_id_max = static_cast<std::uint16_t>(in.ConsumeIntegralInRange<int>(tc.call_id_min, 65535));
    tc.max_calls = in.ConsumeIntegralInRange<std::size_t>(1, 64);
    nat::HandlerConfig hc;
    hc.on_violation = in.ConsumeBool() ? nat::ViolationPolicy::Reset : nat::ViolationPolicy::Accept;
    Rig rig(tc, hc);
    Flow flows[4] = {{kClients[0], kServers[0], 40000, {1000, 5000}},
                     {kClients[1], kServers[0], 40000, {2000, 6000}},
                     {kClients[2], kServers[1], 40001, {3000, 7000}},
                     {kClients[0], kServers[1], 40002, {4000, 8000}}};

    for (int step = 0; step < 96 && in.remaining_bytes() > 0; ++step) {
        const int kind = in.ConsumeIntegralInRange<int>(0, 9);
        const bool inbound = in.ConsumeBool();
        const auto dir = inbound ? nat::Direction::Inbound : nat::Direction::Outbound;
        Flow& f = flows[in.ConsumeIntegralInRange<int>(0, 3)];
        Bytes packet;
        if (kind == 0) {
            packet = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 120));
        } else if (kind <= 5) {
            const std::uint8_t flags =
                kind == 1 ? in.ConsumeIntegral<std::uint8_t>() : static_cast<std::uint8_t>(testpkt::ACK);
            const Bytes payload = in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 400));
            std::uint32_t& seq = f.seq[inbound ? 1 : 0];
            if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
                seq -= in.ConsumeIntegralInRange<std::uint32_t>(0, 300);  // resend or jump back
            }
            packet = inbound ? testpkt::tcp_packet(f.server, f.client, 1723, f.port, seq, flags, payload)
                             : testpkt::tcp_packet(f.client, f.server, f.port, 1723, seq, flags, payload);
            seq += static_cast<std::uint32_t>(payload.size()) + ((flags & testpkt::SYN) != 0 ? 1U : 0U);
        } else if (kind <= 8) {
            // GRE, usually naming a live call so the translation path runs.
            std::uint16_t key = in.ConsumeIntegral<std::uint16_t>();
            std::uint32_t src = inbound ? f.server : f.client;
            std::uint32_t dst = inbound ? kPublic : f.server;
            if (in.ConsumeBool()) {
                rig.table->for_each_call([&](const nat::Call& c) {
                    key = inbound ? c.public_call_id : c.outside_call_id;
                    src = inbound ? c.outside_address : c.inside_address;
                    dst = inbound ? kPublic : c.outside_address;
                });
            }
            const std::uint16_t gre_flags = in.ConsumeBool() ? 0x3001 : in.ConsumeIntegral<std::uint16_t>();
            packet = testpkt::gre_packet(src, dst, key,
                                         in.ConsumeBytes<std::uint8_t>(in.ConsumeIntegralInRange<std::size_t>(0, 64)),
                                         gre_flags, in.ConsumeBool() ? 0x880B : in.ConsumeIntegral<std::uint16_t>());
        } else {
            rig.clock.advance(std::chrono::seconds(in.ConsumeIntegralInRange<int>(0, 900)));
            rig.handler->expire_held();
            rig.table->expire();
            continue;
        }

        const Bytes original = packet;
        rig.recorder.released.clear();
        const nat::Verdict v = rig.handler->handle(dir, packet, rig.next_id++);
        for (const Released& r : rig.recorder.released) {
            if (r.accept && !r.packet.empty()) {
                check_leaving(r.packet);
            }
        }
        if (!v.accept || v.held || original.size() < 20) {
            continue;
        }
        if (v.length != 0) {
            packet.resize(v.length);
        } else if (packet.size() != original.size()) {
            fail("length changed");
        }
        if (v.modified) {
            check_leaving(packet);
        }
        if (original[9] == 47 && (original[0] >> 4) == 4) {
            // Only GRE of a live call gets through, translated for that call.
            const std::uint32_t src = pptp::load_be32(packet.data() + 12);
            const std::uint32_t dst = pptp::load_be32(packet.data() + 16);
            const std::size_t ihl = (packet[0] & 0x0FU) * 4U;
            const std::uint16_t key = pptp::load_be16(packet.data() + ihl + 6);
            bool matches = false;
            rig.table->for_each_call([&](const nat::Call& c) {
                if (inbound) {
                    matches |= c.inside_address == dst && c.inside_call_id == key && c.outside_address == src &&
                               c.public_call_id == pptp::load_be16(original.data() + ihl + 6);
                } else {
                    matches |= src == kPublic && c.outside_address == dst && c.outside_call_id == key &&
                               c.inside_address == pptp::load_be32(original.data() + 12);
                }
            });
            if (!matches) {
                fail("GRE forwarded that belongs to no live call");
            }
        }
    }
    return 0;
}
