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
    if (ctx.refresh) {
        ctx.refresh();
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
    if (ctx.refresh) {
        ctx.refresh();
    }
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
                             {"live_connections", ctx.table.connection_count()},
                             {"held_segments", ctx.handler.held_segments()}};
    if (ctx.io_stats) {
        result["queue"] = ctx.io_stats();
    }
    if (ctx.fixup_ports) {
        result["fixup_ports"] = ctx.fixup_ports();
    }
    if (ctx.ha_stats) {
        result["ha"] = ctx.ha_stats();
    }
    if (ctx.offload_stats) {
        result["offload"] = ctx.offload_stats();
    }
    // What is in force now, so a reload can be checked.
    const nat::TableConfig& config = ctx.table.config();
    result["limits"] = {
        {"call_timeout_seconds", config.call_idle_timeout.count()},
        {"setup_timeout_seconds", config.call_setup_timeout.count()},
        {"control_timeout_seconds", config.control_idle_timeout.count()},
        {"max_calls", config.max_calls},
        {"max_calls_per_connection", config.max_calls_per_connection},
        {"max_connections", config.max_connections},
        {"max_connections_per_host", config.max_connections_per_host},
        {"call_id_min", config.call_id_min},
        {"call_id_max", config.call_id_max},
        {"call_id_allocation", config.call_id_allocation == nat::CallIdAllocation::Random ? "random" : "preserve"}};
    return result;
}

nlohmann::json fixup(const nlohmann::json& request, ApiContext& ctx) {
    const std::string action = request.value("action", std::string("list"));
    if (action == "list") {
        return {{"ok", true}, {"fixup_ports", ctx.fixup_ports ? ctx.fixup_ports() : std::vector<std::uint16_t>{}}};
    }
    if (action != "enable" && action != "disable") {
        return error("fixup action must be list, enable or disable");
    }
    if (!request.contains("port") || !request["port"].is_number_integer() || request["port"].get<long long>() < 1 ||
        request["port"].get<long long>() > 65535) {
        return error("fixup " + action + " needs \"port\": 1-65535");
    }
    if (!ctx.set_fixup_port) {
        return error("fixup changes are not available");
    }
    const auto port = static_cast<std::uint16_t>(request["port"].get<long long>());
    if (const std::string failure = ctx.set_fixup_port(port, action == "enable"); !failure.empty()) {
        return error(failure);
    }
    return {{"ok", true}, {"fixup_ports", ctx.fixup_ports()}};
}

nlohmann::json clear(const nlohmann::json& request, ApiContext& ctx) {
    if (request.value("all", false)) {
        const std::size_t calls = ctx.table.call_count();
        ctx.table.clear_all(nat::TeardownReason::Cleared);
        return {{"ok", true}, {"cleared", calls}};
    }
    if (!request.contains("session") || !request["session"].is_number_unsigned()) {
        return error("clear needs \"session\": ID or \"all\": true");
    }
    nat::Call* call = ctx.table.find_call(request["session"].get<std::uint64_t>());
    if (call == nullptr) {
        return error("no session " + std::to_string(request["session"].get<std::uint64_t>()));
    }
    ctx.table.remove_call(*call, nat::TeardownReason::Cleared);
    return {{"ok", true}, {"cleared", 1}};
}

nlohmann::json ha(const nlohmann::json& request, ApiContext& ctx) {
    const auto* action = request.contains("action") && request["action"].is_string()
                             ? request["action"].get_ptr<const std::string*>()
                             : nullptr;
    if (action == nullptr || (*action != "adopt" && *action != "status")) {
        return error("ha needs \"action\": \"adopt\" or \"status\"");
    }
    if (!ctx.ha_stats || !ctx.ha_adopt) {
        return error("high availability is off (pptp-fixupd --ha-sync connlabel)");
    }
    if (*action == "adopt") {
        nlohmann::json result = ctx.ha_adopt();
        result["ok"] = !result.value("dump_failed", false);
        if (!result["ok"].get<bool>()) {
            result["error"] = "cannot read the conntrack table: " + result.value("dump_error", std::string("?"));
        }
        return result;
    }
    return {{"ok", true}, {"ha", ctx.ha_stats()}};
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
            {"offloaded", call.offloaded},
            {"control_port", call.connection->key.outside_port},
            {"packets_in", call.packets_in},
            {"packets_out", call.packets_out},
            {"bytes_in", call.bytes_in},
            {"bytes_out", call.bytes_out},
            {"age_seconds", seconds_since(call.created, now)},
            {"idle_seconds", seconds_since(call.last_activity, now)}};
}

std::string metrics_text(ApiContext& ctx) {
    std::string out;
    auto line = [&out](const std::string& text) { out += text + "\n"; };
    line("# HELP pptp_fixup_events_total Events counted by pptp-fixupd.");
    line("# TYPE pptp_fixup_events_total counter");
    for (std::size_t i = 0; i < static_cast<std::size_t>(nat::EventCounter::count_); ++i) {
        line("pptp_fixup_events_total{event=\"" + std::string(nat::counter_name(static_cast<nat::EventCounter>(i))) +
             "\"} " + std::to_string(ctx.counters.events[i]));
    }
    line("# HELP pptp_fixup_dropped_total Packets dropped and control messages refused, by reason.");
    line("# TYPE pptp_fixup_dropped_total counter");
    for (std::size_t i = 1; i < static_cast<std::size_t>(nat::DropReason::count_); ++i) {
        line("pptp_fixup_dropped_total{reason=\"" +
             std::string(nat::drop_reason_name(static_cast<nat::DropReason>(i))) + "\"} " +
             std::to_string(ctx.counters.drops[i]));
    }
    line("# HELP pptp_fixup_live_calls PPTP calls being translated now.");
    line("# TYPE pptp_fixup_live_calls gauge");
    line("pptp_fixup_live_calls " + std::to_string(ctx.table.call_count()));
    line("# HELP pptp_fixup_live_connections PPTP control connections tracked now.");
    line("# TYPE pptp_fixup_live_connections gauge");
    line("pptp_fixup_live_connections " + std::to_string(ctx.table.connection_count()));
    line("# HELP pptp_fixup_held_segments Control segments held back, waiting for the rest of a field or a gap.");
    line("# TYPE pptp_fixup_held_segments gauge");
    line("pptp_fixup_held_segments " + std::to_string(ctx.handler.held_segments()));
    if (ctx.ha_stats) {
        for (const auto& [name, value] : ctx.ha_stats().items()) {
            if (value.is_number()) {
                const std::string metric = "pptp_fixup_ha_" + name;
                line("# TYPE " + metric + " counter");
                line(metric + " " + value.dump());
            }
        }
    }
    if (ctx.io_stats) {
        const nlohmann::json io = ctx.io_stats();
        for (const auto& [layer, values] : io.items()) {
            for (const auto& [name, value] : values.items()) {
                std::string metric = "pptp_fixup_";
                metric += layer;
                metric += "_queue_";
                metric += name;
                const bool gauge = name == "length";
                line("# TYPE " + metric + (gauge ? " gauge" : " counter"));
                line(metric + " " + value.dump());
            }
        }
    }
    return out;
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
    if (command == "metrics") {
        return {{"ok", true}, {"metrics", metrics_text(context)}};
    }
    if (command == "fixup") {
        return fixup(request, context);
    }
    if (command == "clear") {
        return clear(request, context);
    }
    if (command == "ha") {
        return ha(request, context);
    }
    return error("unknown command \"" + command +
                 "\" (known: sessions, connections, stats, metrics, fixup, clear, ha)");
}

}  // namespace control
