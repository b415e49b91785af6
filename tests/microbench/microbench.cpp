// Google Benchmark microbenchmarks of the agent's per-packet work, without
// netlink: the codec (control header check, GRE parse), the call table's GRE
// lookups at 1, 100 and 10,000 calls, and the whole rewrite
// (PacketHandler::handle on GRE of a live call, both directions).
//
//   build/release/tests/microbench/microbench [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "nat/call_table.hpp"
#include "nat/clock.hpp"
#include "nat/counters.hpp"
#include "nat/packet_handler.hpp"
#include "pptp/control_message.hpp"
#include "pptp/gre.hpp"
#include "support/packets.hpp"

using namespace testpkt;

namespace {

constexpr std::uint32_t kPublic = 0xCB007101;  // 203.0.113.1
constexpr std::uint32_t kServer = 0xCB00710A;  // 203.0.113.10
constexpr std::uint32_t kClient = 0xC612000B;  // 198.18.0.11
// Bytes of an IPv4 + enhanced GRE header a rewrite may touch.
constexpr std::size_t kRewrittenPrefix = 20 + 16;

nat::TableConfig big_table() {
    nat::TableConfig c;
    c.public_address = kPublic;
    c.max_calls = 70000;
    c.max_connections = 70000;
    c.max_connections_per_host = 70000;
    c.max_calls_per_connection = 70000;
    return c;
}

// ------------------------------------------------------------------ codec

void BM_CheckHeader(benchmark::State& state) {
    const Bytes msg = ocrq(7);
    for (auto _ : state) {
        auto r = pptp::check_header(msg);
        benchmark::DoNotOptimize(r);
    }
}
BENCHMARK(BM_CheckHeader);

void BM_ReadCallIds(benchmark::State& state) {
    const Bytes msg = ocrp(300, 7);
    const auto spec = pptp::check_header(msg).header.spec;
    for (auto _ : state) {
        auto r = pptp::read_call_ids(spec, msg);
        benchmark::DoNotOptimize(r);
    }
}
BENCHMARK(BM_ReadCallIds);

void BM_ParseGre(benchmark::State& state) {
    const Bytes packet = gre_packet(kServer, kPublic, 7, Bytes(static_cast<std::size_t>(state.range(0)), 0x5A));
    const std::span<const std::uint8_t> gre(packet.data() + 20, packet.size() - 20);
    for (auto _ : state) {
        auto r = pptp::parse_gre(gre);
        benchmark::DoNotOptimize(r);
    }
}
BENCHMARK(BM_ParseGre)->Arg(64)->Arg(1400);

// ----------------------------------------------------------- table lookup

// N calls from one inside host (one control connection each), as the load
// test sets up: inside Call IDs 1..N, public IDs from 20001 (as with
// --call-id-range 20001-65535), outside IDs from 40001.
struct TableFixture {
    explicit TableFixture(std::size_t n) {
        nat::TableConfig c = big_table();
        c.call_id_min = 20001;
        table = std::make_unique<nat::CallTable>(c, clock, counters, nullptr);
        for (std::size_t i = 0; i < n; ++i) {
            nat::ConnectionKey key{kClient, kServer, static_cast<std::uint16_t>(1024 + i), 1723};
            nat::ControlConnection* conn = table->create_connection(key);
            const auto inside = static_cast<std::uint16_t>(1 + i);
            nat::CallResult r = table->create_call_from_inside(*conn, inside);
            table->set_outside_id(*r.call, static_cast<std::uint16_t>(40001 + i));
            table->mark_established(*r.call);
            public_ids.push_back(r.call->public_call_id);
            outside_ids.push_back(static_cast<std::uint16_t>(40001 + i));
        }
        // Visit the calls in a random order, as interleaved traffic would.
        order.resize(n);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), std::mt19937(42));
    }
    nat::ManualClock clock;
    nat::Counters counters;
    std::unique_ptr<nat::CallTable> table;
    std::vector<std::uint16_t> public_ids;
    std::vector<std::uint16_t> outside_ids;
    std::vector<std::size_t> order;
};

void BM_FindInbound(benchmark::State& state) {
    TableFixture f(static_cast<std::size_t>(state.range(0)));
    std::size_t i = 0;
    for (auto _ : state) {
        const nat::Call* c = f.table->find_inbound(kServer, kPublic, f.public_ids[f.order[i]]);
        benchmark::DoNotOptimize(c);
        if (++i == f.order.size()) i = 0;
    }
    if (f.table->find_inbound(kServer, kPublic, f.public_ids[0]) == nullptr) state.SkipWithError("lookup failed");
}
BENCHMARK(BM_FindInbound)->Arg(1)->Arg(100)->Arg(10000);

void BM_FindOutbound(benchmark::State& state) {
    TableFixture f(static_cast<std::size_t>(state.range(0)));
    std::size_t i = 0;
    for (auto _ : state) {
        const nat::Call* c = f.table->find_outbound(kClient, kServer, f.outside_ids[f.order[i]]);
        benchmark::DoNotOptimize(c);
        if (++i == f.order.size()) i = 0;
    }
    if (f.table->find_outbound(kClient, kServer, f.outside_ids[0]) == nullptr) state.SkipWithError("lookup failed");
}
BENCHMARK(BM_FindOutbound)->Arg(1)->Arg(100)->Arg(10000);

// ---------------------------------------------------------------- rewrite

// Calls set up through the handler itself, as the unit tests do: SYN,
// SYN-ACK, SCCRQ, SCCRP, OCRQ, OCRP per control connection. The daemon's
// clock (SteadyClock): the GRE path reads it once per packet.
struct HandlerFixture {
    explicit HandlerFixture(std::size_t calls) {
        nat::TableConfig c = big_table();
        c.call_id_min = 20001;
        table = std::make_unique<nat::CallTable>(c, clock, counters, nullptr);
        handler = std::make_unique<nat::PacketHandler>(*table, counters, nullptr);
        handler->enable_port(1723);
        for (std::size_t i = 0; i < calls; ++i) {
            const auto port = static_cast<std::uint16_t>(1024 + i);
            std::uint32_t out_seq = 1000;
            std::uint32_t in_seq = 50000;
            auto out = [&](const Bytes& payload, std::uint8_t flags) {
                Bytes p = tcp_packet(kClient, kServer, port, 1723, out_seq, flags, payload);
                ok &= handler->handle(nat::Direction::Outbound, p, ++id).accept;
                out_seq += static_cast<std::uint32_t>(payload.size());
                return tcp_payload(p);
            };
            auto in = [&](const Bytes& payload, std::uint8_t flags) {
                Bytes p = tcp_packet(kServer, kClient, 1723, port, in_seq, flags, payload);
                ok &= handler->handle(nat::Direction::Inbound, p, ++id).accept;
                in_seq += static_cast<std::uint32_t>(payload.size());
                return tcp_payload(p);
            };
            Bytes syn = tcp_packet(kClient, kServer, port, 1723, out_seq - 1, SYN, {});
            ok &= handler->handle(nat::Direction::Outbound, syn, ++id).accept;
            Bytes synack = tcp_packet(kServer, kClient, 1723, port, in_seq - 1, SYN | ACK, {});
            ok &= handler->handle(nat::Direction::Inbound, synack, ++id).accept;
            out(sccrq(), ACK | PSH);
            in(sccrp(), ACK | PSH);
            const auto inside = static_cast<std::uint16_t>(1 + i);
            const Bytes sent = out(ocrq(inside), ACK | PSH);
            const std::uint16_t public_id = get16(sent, 12);
            in(ocrp(static_cast<std::uint16_t>(40001 + i), public_id), ACK | PSH);
            inside_ids.push_back(inside);
            public_ids.push_back(public_id);
        }
        ok &= table->call_count() == calls;
    }
    nat::SteadyClock clock;
    nat::Counters counters;
    std::unique_ptr<nat::CallTable> table;
    std::unique_ptr<nat::PacketHandler> handler;
    std::vector<std::uint16_t> inside_ids;
    std::vector<std::uint16_t> public_ids;
    std::uint32_t id = 0;
    bool ok = true;
};

// Args: payload bytes, live calls. The packet is rewritten in place, so its
// first 36 bytes are restored from a template each time (a 36-byte copy,
// included in the figure).
void BM_RewriteInbound(benchmark::State& state) {
    const auto payload = static_cast<std::size_t>(state.range(0));
    const auto calls = static_cast<std::size_t>(state.range(1));
    HandlerFixture f(calls);
    if (!f.ok) {
        state.SkipWithError("call setup through the handler failed");
        return;
    }
    const std::size_t pick = calls / 2;  // any live call
    const Bytes original = gre_packet(kServer, kPublic, f.public_ids[pick], Bytes(payload, 0x5A));
    Bytes packet = original;
    for (auto _ : state) {
        std::copy_n(original.begin(), kRewrittenPrefix, packet.begin());
        const nat::Verdict v = f.handler->handle(nat::Direction::Inbound, packet);
        benchmark::DoNotOptimize(v);
    }
    if (get16(packet, 26) != f.inside_ids[pick] || get32(packet, 16) != kClient) {
        state.SkipWithError("inbound GRE not translated");
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(packet.size()));
}
BENCHMARK(BM_RewriteInbound)->ArgsProduct({{64, 1400}, {1, 10000}});

void BM_RewriteOutbound(benchmark::State& state) {
    const auto payload = static_cast<std::size_t>(state.range(0));
    const auto calls = static_cast<std::size_t>(state.range(1));
    HandlerFixture f(calls);
    if (!f.ok) {
        state.SkipWithError("call setup through the handler failed");
        return;
    }
    const std::size_t pick = calls / 2;
    const auto outside_id = static_cast<std::uint16_t>(40001 + pick);
    const Bytes original = gre_packet(kClient, kServer, outside_id, Bytes(payload, 0xA5));
    Bytes packet = original;
    for (auto _ : state) {
        std::copy_n(original.begin(), kRewrittenPrefix, packet.begin());
        const nat::Verdict v = f.handler->handle(nat::Direction::Outbound, packet);
        benchmark::DoNotOptimize(v);
    }
    if (get32(packet, 12) != kPublic) state.SkipWithError("outbound GRE not translated");
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(packet.size()));
}
BENCHMARK(BM_RewriteOutbound)->ArgsProduct({{64, 1400}, {1, 10000}});

// The cost of the template copy alone, to subtract from the two above.
void BM_RestoreOnly(benchmark::State& state) {
    const Bytes original = gre_packet(kServer, kPublic, 7, Bytes(64, 0x5A));
    Bytes packet = original;
    for (auto _ : state) {
        std::copy_n(original.begin(), kRewrittenPrefix, packet.begin());
        benchmark::DoNotOptimize(packet.data());
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_RestoreOnly);

}  // namespace

// ------------------------------------------------------- memory per call

// Heap bytes the table holds per live call (mallinfo2 before and after),
// with one control connection per call (as the load test sets up, and as
// the kernel helper needs) and with 100 calls sharing a connection.
void BM_MemoryPerCall(benchmark::State& state) {
    const auto calls = static_cast<std::size_t>(state.range(0));
    const auto per_connection = static_cast<std::size_t>(state.range(1));
    double bytes_per_call = 0;
    for (auto _ : state) {
        nat::ManualClock clock;
        nat::Counters counters;
        nat::TableConfig c = big_table();
        const std::size_t before = mallinfo2().uordblks;
        {
            nat::CallTable table(c, clock, counters, nullptr);
            nat::ControlConnection* conn = nullptr;
            for (std::size_t i = 0; i < calls; ++i) {
                if (i % per_connection == 0) {
                    conn = table.create_connection(nat::ConnectionKey{
                        kClient, kServer, static_cast<std::uint16_t>(1024 + i / per_connection), 1723});
                }
                nat::CallResult r = table.create_call_from_inside(*conn, static_cast<std::uint16_t>(1 + i));
                table.set_outside_id(*r.call, static_cast<std::uint16_t>(1 + i));
                table.mark_established(*r.call);
            }
            bytes_per_call = static_cast<double>(mallinfo2().uordblks - before) / static_cast<double>(calls);
            benchmark::DoNotOptimize(table.call_count());
        }
    }
    state.counters["bytes_per_call"] = bytes_per_call;
}
BENCHMARK(BM_MemoryPerCall)->Args({10000, 1})->Args({10000, 100})->Iterations(1)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
