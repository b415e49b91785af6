// Shared by the stream and packet handler fuzz targets: a handler on a manual
// clock whose deferred verdicts are recorded, and invariant checks that abort
// (so libFuzzer reports) when the handler misbehaves.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "nat/call_table.hpp"
#include "nat/packet_handler.hpp"
#include "support/packets.hpp"

namespace fuzzing {

using testpkt::Bytes;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
}

struct Released {
    std::uint32_t id;
    bool accept;
    Bytes packet;
};

class Recorder : public nat::DeferredVerdicts {
public:
    void release(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) override {
        released.push_back(Released{packet_id, accept, Bytes(packet.begin(), packet.end())});
    }
    std::vector<Released> released;
};

constexpr std::uint32_t kPublic = 0xCB007101;
constexpr std::uint32_t kServers[2] = {0xCB00710A, 0xCB00710B};
constexpr std::uint32_t kClients[3] = {0xC612000B, 0xC612000C, 0xC612000D};

struct Rig {
    explicit Rig(nat::TableConfig tc = {}, nat::HandlerConfig hc = {}) {
        tc.public_address = kPublic;
        table = std::make_unique<nat::CallTable>(tc, clock, counters, nullptr);
        handler = std::make_unique<nat::PacketHandler>(*table, counters, nullptr, hc);
        handler->set_deferred_verdicts(&recorder);
        handler->enable_port(1723);
    }
    nat::ManualClock clock;
    nat::Counters counters;
    Recorder recorder;
    std::unique_ptr<nat::CallTable> table;
    std::unique_ptr<nat::PacketHandler> handler;
    std::uint32_t next_id = 1;
};

// A packet that leaves the agent must be well formed.
inline void check_leaving(const Bytes& p) {
    if (!testpkt::ipv4_checksum_ok(p)) {
        fail("IPv4 checksum of a forwarded packet");
    }
    if (p[9] == 6 && !testpkt::tcp_checksum_ok(p)) {
        fail("TCP checksum of a forwarded packet");
    }
}

}  // namespace fuzzing
