#include "control/api.hpp"

#include <gtest/gtest.h>

#include "control/server.hpp"

using namespace nat;
using nlohmann::json;

namespace {

constexpr std::uint32_t kPublic = 0xCB007101;
constexpr std::uint32_t kServer = 0xCB00710A;
constexpr std::uint32_t kClient1 = 0xC612000B;
constexpr std::uint32_t kClient2 = 0xC612000C;

class ApiTest : public ::testing::Test {
protected:
    ApiTest() {
        TableConfig config;
        config.public_address = kPublic;
        table = std::make_unique<CallTable>(config, clock, counters, nullptr);
        handler = std::make_unique<PacketHandler>(*table, counters);
        handler->enable_port(1723);
        context = std::make_unique<control::ApiContext>(
            control::ApiContext{*table,
                                counters,
                                *handler,
                                [] {
                                    return json{{"agent", {{"received", 5}}}};
                                },
                                [this](std::uint16_t port, bool enable) -> std::string {
                                    if (port == 9) {
                                        return "rules not updated";
                                    }
                                    enable ? handler->enable_port(port) : handler->disable_port(port);
                                    return {};
                                },
                                [this] {
                                    std::vector<std::uint16_t> ports;
                                    for (std::uint32_t p = 1; p < 65536; ++p) {
                                        if (handler->port_enabled(static_cast<std::uint16_t>(p)))
                                            ports.push_back(static_cast<std::uint16_t>(p));
                                    }
                                    return ports;
                                },
                                {},
                                {},
                                {},
                                {}});
    }
    Call* add_call(std::uint32_t client, std::uint16_t inside_id, std::uint16_t outside_id) {
        auto* conn = table->create_connection(ConnectionKey{client, kServer, 40000, 1723});
        Call* call = table->create_call_from_inside(*conn, inside_id).call;
        table->set_outside_id(*call, outside_id);
        table->mark_established(*call);
        return call;
    }
    json ask(const json& request) { return control::handle_request(request, *context); }

    ManualClock clock;
    Counters counters;
    std::unique_ptr<CallTable> table;
    std::unique_ptr<PacketHandler> handler;
    std::unique_ptr<control::ApiContext> context;
};

TEST_F(ApiTest, SessionsCarryEveryDocumentedField) {
    add_call(kClient1, 7, 300);
    add_call(kClient2, 7, 301);
    clock.advance(std::chrono::seconds(5));
    const json reply = ask({{"command", "sessions"}});
    ASSERT_TRUE(reply["ok"]);
    ASSERT_EQ(reply["sessions"].size(), 2u);
    const json& s = reply["sessions"][1];
    EXPECT_EQ(s["inside_address"], "198.18.0.12");
    EXPECT_EQ(s["outside_address"], "203.0.113.10");
    EXPECT_EQ(s["public_address"], "203.0.113.1");
    EXPECT_EQ(s["inside_call_id"], 7);
    EXPECT_NE(s["public_call_id"], 7);
    EXPECT_EQ(s["outside_call_id"], 301);
    EXPECT_EQ(s["state"], "established");
    EXPECT_DOUBLE_EQ(s["age_seconds"].get<double>(), 5.0);
    for (const char* key : {"packets_in", "packets_out", "bytes_in", "bytes_out", "idle_seconds", "id"}) {
        EXPECT_TRUE(s.contains(key)) << key;
    }
}

TEST_F(ApiTest, SessionsFilterByAddressAndRejectBadOnes) {
    add_call(kClient1, 7, 300);
    add_call(kClient2, 8, 301);
    EXPECT_EQ(ask({{"command", "sessions"}, {"inside", "198.18.0.11"}})["sessions"].size(), 1u);
    EXPECT_EQ(ask({{"command", "sessions"}, {"outside", "203.0.113.99"}})["sessions"].size(), 0u);
    const json bad = ask({{"command", "sessions"}, {"inside", "not-an-address"}});
    EXPECT_FALSE(bad["ok"]);
    EXPECT_NE(bad["error"].get<std::string>().find("inside"), std::string::npos);
}

TEST_F(ApiTest, FixupChangesPortsAndReportsFailures) {
    EXPECT_EQ(ask({{"command", "fixup"}, {"action", "list"}})["fixup_ports"], json::array({1723}));
    EXPECT_TRUE(ask({{"command", "fixup"}, {"action", "enable"}, {"port", 1724}})["ok"]);
    EXPECT_TRUE(handler->port_enabled(1724));
    EXPECT_FALSE(ask({{"command", "fixup"}, {"action", "enable"}, {"port", 70000}})["ok"]);
    EXPECT_FALSE(ask({{"command", "fixup"}, {"action", "enable"}})["ok"]);
    EXPECT_FALSE(ask({{"command", "fixup"}, {"action", "toggle"}, {"port", 1}})["ok"]);
    const json failed = ask({{"command", "fixup"}, {"action", "enable"}, {"port", 9}});
    EXPECT_FALSE(failed["ok"]);
    EXPECT_EQ(failed["error"], "rules not updated");
}

TEST_F(ApiTest, ClearOneOrAll) {
    Call* a = add_call(kClient1, 7, 300);
    add_call(kClient2, 8, 301);
    EXPECT_TRUE(ask({{"command", "clear"}, {"session", a->id}})["ok"]);
    EXPECT_EQ(table->call_count(), 1u);
    EXPECT_FALSE(ask({{"command", "clear"}, {"session", 999}})["ok"]);
    EXPECT_FALSE(ask({{"command", "clear"}})["ok"]);
    EXPECT_EQ(ask({{"command", "clear"}, {"all", true}})["cleared"], 1);
    EXPECT_EQ(table->call_count(), 0u);
}

TEST_F(ApiTest, StatsAndMetricsAgree) {
    add_call(kClient1, 7, 300);
    counters.drop(DropReason::gre_no_matching_call);
    const json stats = ask({{"command", "stats"}});
    EXPECT_EQ(stats["counters"]["calls_built"], 1);
    EXPECT_EQ(stats["dropped"]["gre_no_matching_call"], 1);
    EXPECT_EQ(stats["live_calls"], 1);
    EXPECT_EQ(stats["queue"]["agent"]["received"], 5);
    EXPECT_EQ(stats["limits"]["call_timeout_seconds"], table->config().call_idle_timeout.count());
    EXPECT_EQ(stats["limits"]["max_calls"], table->config().max_calls);
    EXPECT_EQ(stats["limits"]["call_id_allocation"], "preserve");
    const std::string metrics = ask({{"command", "metrics"}})["metrics"];
    EXPECT_NE(metrics.find("pptp_fixup_events_total{event=\"calls_built\"} 1\n"), std::string::npos);
    EXPECT_NE(metrics.find("pptp_fixup_dropped_total{reason=\"gre_no_matching_call\"} 1\n"), std::string::npos);
    EXPECT_NE(metrics.find("pptp_fixup_live_calls 1\n"), std::string::npos);
    EXPECT_NE(metrics.find("pptp_fixup_agent_queue_received 5\n"), std::string::npos);
}

TEST(ControlProtocol, BadRequestsGetAnErrorLine) {
    const control::RequestHandler echo = [](const json& r) { return json{{"ok", true}, {"echo", r["command"]}}; };
    for (const char* line : {"not json", "[1,2]", "{\"command\": 5}", "{}", "\"text\""}) {
        const std::string out = control::respond(echo, line);
        ASSERT_EQ(out.back(), '\n');
        const json reply = json::parse(out);
        EXPECT_FALSE(reply["ok"]) << line;
        EXPECT_TRUE(reply["error"].is_string());
    }
    EXPECT_TRUE(json::parse(control::respond(echo, "{\"command\":\"x\"}"))["ok"]);
}

TEST_F(ApiTest, UnknownCommandNamesTheKnownOnes) {
    const json reply = ask({{"command", "shutdown"}});
    EXPECT_FALSE(reply["ok"]);
    EXPECT_NE(reply["error"].get<std::string>().find("sessions"), std::string::npos);
}

}  // namespace
