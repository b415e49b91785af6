#include "control/api.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include "pptp/inet.hpp"

namespace control {
namespace {

double seconds_since(nat::Instant then, nat::Instant now) {
    return std::chrono::duration<double>(now - then).count();
}

nlohmann::json error(const std::string& text) {
    return {{"ok", false}, {"error", text}};
}

nlohmann::json sessions(const nlohmann::json& request, ApiContext& ctx) {
    std::optional<std::uint32_t> inside;
    std::optional<std::uint32_t> outside;
    for (const char* key : {"inside", "outside"}) {
        if (!request.contains(key)) {
            continue;
        }
        const auto& value = request[key];
        const auto address = value.is_string() ? pptp::parse_ipv4_address(value.get<std::string>()) : std::nullopt;
        if (!address) {
            return error(std::string("\"") + key + "\" must be an IPv4 address");
        }
        (std::string(key) == "inside" ? inside : outside) = address;
    }
    const nat::Instant now = ctx.table.now();
    std::vector<const nat::Call*> calls;
    ctx.table.for_each_call([&](const nat::Call& call) {
        if ((!inside || call.inside_address == *inside) && (!outside || call.outside_address == *outside)) {
            calls.push_back(&call);
        }
    });
    std::sort(calls.begin(), calls.end(), [](const nat::Call* a, const nat::Call* b) { return a->id < b->id; });
    nlohmann::json list = nlohmann::json::array();
    for (const nat::Call* call : calls) {
        list.push_back(session_json(*call, now));
    }
    return {{"ok", true}, {"sessions", list}};
}

nlohmann::json connections(ApiContext& ctx) {
    const nat::Instant now = ctx.table.now();
    std::vector<const nat::ControlConnection*> conns;
    ctx.table.for_each_connection([&](const nat::ControlConnection& conn) { conns.push_back(&conn); });
    std::sort(conns.begin(), conns.end(), [](auto* a, auto* b) { return a->id < b->id; });
    nlohmann::json list = nlohmann::json::array();
    for (const nat::ControlConnection* c : conns) {
        const nat::ControlConnection& conn = *c;
        list.push_back({{"id", conn.id},
                        {"inside_address", pptp::format_ipv4(conn.key.inside_address)},
                        {"inside_port", conn.key.inside_port},
                        {"outside_address", pptp::format_ipv4(conn.key.outside_address)},
                        {"outside_port", conn.key.outside_port},
                        {"state", nat::state_name(conn.state)},
                        {"calls", conn.calls.size()},
                        {"messages", conn.messages},
                        {"age_seconds", seconds_since(conn.created, now)},
                        {"idle_seconds", seconds_since(conn.last_activity, now)}});
    }
    return {{"ok", true}, {"connections", list}};
}

nlohmann::json stats(ApiContext& ctx) {
    nlohmann::json counters = nlohmann::json::object();
    for (std::size_t i = 0; i < static_cast<std::size_t>(nat::EventCounter::count_); ++i) {
        counters[std::string(nat::counter_name(static_cast<nat::EventCounter>(i)))] = ctx.counters.events[i];
    }
    nlohmann::json drops = nlohmann::json::object();
    for (std::size_t i = 1; i < static_cast<std::size_t>(nat::DropReason::count_); ++i) {
        drops[std::string(nat::drop_reason_name(static_cast<nat::DropReason>(i)))] = ctx.counters.drops[i];
    }
    nlohmann::json result = {{"ok", true},
                             {"counters", counters},
                             {"dropped", drops},
                             {"live_calls", ctx.table.call_count()},
                             {"live_connections", ctx.table.connection_count()}};
    if (ctx.io_stats) {
        result["queue"] = ctx.io_stats();
    }
    return result;
}

}  // namespace

nlohmann::json session_json(const nat::Call& call, nat::Instant now) {
    return {{"id", call.id},
            {"inside_address", pptp::format_ipv4(call.inside_address)},
            {"outside_address", pptp::format_ipv4(call.outside_address)},
            {"public_address", pptp::format_ipv4(call.public_address)},
            {"inside_call_id", call.inside_call_id},
            {"public_call_id", call.public_call_id},
            {"outside_call_id", call.outside_call_id},
            {"state", nat::state_name(call.state)},
            {"control_port", call.connection->key.outside_port},
            {"packets_in", call.packets_in},
            {"packets_out", call.packets_out},
            {"bytes_in", call.bytes_in},
            {"bytes_out", call.bytes_out},
            {"age_seconds", seconds_since(call.created, now)},
            {"idle_seconds", seconds_since(call.last_activity, now)}};
}

nlohmann::json handle_request(const nlohmann::json& request, ApiContext& context) {
    const auto command = request.value("command", std::string());
    if (command == "sessions") {
        return sessions(request, context);
    }
    if (command == "connections") {
        return connections(context);
    }
    if (command == "stats") {
        return stats(context);
    }
    return error("unknown command \"" + command + "\" (known: sessions, connections, stats)");
}

}  // namespace control
