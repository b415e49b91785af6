// What the control socket can ask: the request handler over the live state.
// Field names here are API: pptp-fixupctl and scripts read them.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nat/call_table.hpp"
#include "nat/counters.hpp"
#include "nat/packet_handler.hpp"

namespace control {

struct ApiContext {
    nat::CallTable& table;
    const nat::Counters& counters;
    nat::PacketHandler& handler;
    // Counters of the I/O layer: {"agent": {...}, "kernel": {...}}, numbers only.
    std::function<nlohmann::json()> io_stats;
    // Turns the fixup on or off for a port (rules included); "" or why not.
    std::function<std::string(std::uint16_t port, bool enable)> set_fixup_port;
    std::function<std::vector<std::uint16_t>()> fixup_ports;
    // Where GRE is translated ({"mode": "nft"|"off", ...}); may be empty.
    std::function<nlohmann::json()> offload_stats;
    // Brings counters kept elsewhere (the kernel's, for offloaded calls)
    // into the table before an audit; may be empty.
    std::function<void()> refresh;
    // --ha-sync: its counters ({"mode": "connlabel", ...}) and a run of the
    // adoption from conntrack labels ("pptp-fixupctl ha adopt"); may be empty.
    std::function<nlohmann::json()> ha_stats;
    std::function<nlohmann::json()> ha_adopt;
};

[[nodiscard]] nlohmann::json session_json(const nat::Call& call, nat::Instant now);
// Prometheus text exposition format of the same counters as "stats".
[[nodiscard]] std::string metrics_text(ApiContext& context);
[[nodiscard]] nlohmann::json handle_request(const nlohmann::json& request, ApiContext& context);

}  // namespace control
