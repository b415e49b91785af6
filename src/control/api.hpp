// What the control socket can ask: the request handler over the live state.
// Field names here are API: pptp-fixupctl and scripts read them.
#pragma once

#include <nlohmann/json.hpp>

#include "nat/call_table.hpp"
#include "nat/counters.hpp"
#include "nat/packet_handler.hpp"

namespace control {

struct ApiContext {
    nat::CallTable& table;
    const nat::Counters& counters;
    nat::PacketHandler& handler;
    // Extra counters from the I/O layer (queue stats), merged into "stats".
    std::function<nlohmann::json()> io_stats;
};

[[nodiscard]] nlohmann::json session_json(const nat::Call& call, nat::Instant now);
[[nodiscard]] nlohmann::json handle_request(const nlohmann::json& request, ApiContext& context);

}  // namespace control
