#include "daemon/options.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <vector>

using daemon_options::parse;
using daemon_options::UsageError;

namespace {

daemon_options::ParseResult run(std::vector<const char*> args) {
    args.insert(args.begin(), "pptp-fixupd");
    return parse(static_cast<int>(args.size()), args.data());
}

TEST(Options, Defaults) {
    const auto r = run({"--queue", "3", "--outside", "eth1"});
    ASSERT_TRUE(r.options);
    EXPECT_EQ(r.options->queue, 3);
    EXPECT_EQ(r.options->fixup_ports, std::vector<std::uint16_t>{1723});
    // The kernel helper's GRE timeouts: 5 hours both ways, 10 minutes unreplied.
    EXPECT_EQ(r.options->table.call_idle_timeout, std::chrono::seconds(18000));
    EXPECT_EQ(r.options->table.call_unreplied_timeout, std::chrono::seconds(600));
    EXPECT_EQ(r.options->table.control_setup_timeout, std::chrono::seconds(30));
    EXPECT_EQ(r.options->table.max_calls_per_host, 1024u);
    // Held segments stay well below the kernel queue's length, with a share per host.
    EXPECT_EQ(r.options->handler.holds.segments_total, 512u);
    EXPECT_LE(r.options->handler.holds.segments_total, r.options->queue_max_length / 4);
    EXPECT_EQ(r.options->handler.holds.segments_per_host, 64u);
    EXPECT_EQ(r.options->control_socket, "/run/pptp-fixup/pptp-fixupd.sock");
    EXPECT_EQ(r.options->handler.on_violation, nat::ViolationPolicy::Reset);
    EXPECT_FALSE(r.options->public_address);
}

TEST(Options, PortsRangesAndPolicies) {
    const auto r = run({"-q", "1", "-o", "eth1", "-p", "1723", "--fixup-port", "1724,1725", "--call-id-range",
                        "100-200", "--on-violation", "accept", "--public-address", "203.0.113.1"});
    ASSERT_TRUE(r.options);
    EXPECT_EQ(r.options->fixup_ports, (std::vector<std::uint16_t>{1723, 1724, 1725}));
    EXPECT_EQ(r.options->table.call_id_min, 100);
    EXPECT_EQ(r.options->table.call_id_max, 200);
    EXPECT_EQ(r.options->handler.on_violation, nat::ViolationPolicy::Accept);
    EXPECT_EQ(*r.options->public_address, 0xCB007101u);
}

TEST(Options, CallIdAllocationIsPreserveUnlessRandomIsAsked) {
    EXPECT_EQ(run({"-q", "1", "-o", "eth1"}).options->table.call_id_allocation, nat::CallIdAllocation::Preserve);
    EXPECT_EQ(run({"-q", "1", "-o", "eth1", "--call-id-allocation", "random"}).options->table.call_id_allocation,
              nat::CallIdAllocation::Random);
    EXPECT_THROW(run({"-q", "1", "-o", "eth1", "--call-id-allocation", "sequential"}), UsageError);
}

TEST(Options, HeldSegmentsNeverExceedAQuarterOfTheQueue) {
    const auto r = run({"-q", "1", "-o", "eth1", "--queue-maxlen", "400", "--max-held-segments", "4000"});
    EXPECT_EQ(r.options->handler.holds.segments_total, 100u);
    EXPECT_EQ(run({"-q", "1", "-o", "eth1", "--on-violation", "drop"}).options->handler.on_violation,
              nat::ViolationPolicy::Reset);
}

TEST(Options, HelpAndVersionPrintAndStop) {
    EXPECT_NE(run({"--help"}).print_and_exit.find("SYNOPSIS"), std::string::npos);
    EXPECT_NE(run({"--version"}).print_and_exit.find("pptp-fixupd"), std::string::npos);
}

TEST(Options, BadInputIsAUsageError) {
    EXPECT_THROW(run({"--outside", "eth1"}), UsageError);
    EXPECT_THROW(run({"--queue", "1"}), UsageError);
    EXPECT_THROW(run({"--queue", "70000", "--outside", "eth1"}), UsageError);
    EXPECT_THROW(run({"--queue", "1", "--outside", "eth1", "--fixup-port", "0"}), UsageError);
    EXPECT_THROW(run({"--queue", "1", "--outside", "eth1", "--call-id-range", "5"}), UsageError);
    EXPECT_THROW(run({"--queue", "1", "--outside", "eth1", "--on-violation", "ignore"}), UsageError);
    EXPECT_THROW(run({"--queue", "1", "--outside", "eth1", "--call-timeout", "0"}), UsageError);
    EXPECT_THROW(run({"--queue", "1", "--outside", "eth1", "--user", "x", "--keep-capabilities"}), UsageError);
    EXPECT_THROW(run({"--nonsense"}), UsageError);
}

TEST(Options, ConfigFileTakesTheSameKeysAndTheCommandLineWins) {
    const std::string path = ::testing::TempDir() + "pptp-fixupd-test.conf";
    {
        std::ofstream f(path);
        f << "queue = 4\noutside = eth2\nfixup-port = 1723\nfixup-port = 1800\ncall-timeout = 30\n";
    }
    const auto r = run({"--config", path.c_str(), "--outside", "eth9"});
    ASSERT_TRUE(r.options);
    EXPECT_EQ(r.options->queue, 4);
    EXPECT_EQ(r.options->outside_interfaces, std::vector<std::string>{"eth9"});
    EXPECT_EQ(r.options->fixup_ports, (std::vector<std::uint16_t>{1723, 1800}));
    EXPECT_EQ(r.options->table.call_idle_timeout, std::chrono::seconds(30));
    {
        std::ofstream f(path);
        f << "queue = 4\nbogus = 1\n";
    }
    try {
        run({"--config", path.c_str(), "--outside", "eth9"});
        FAIL() << "a bad config line must be an error";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    }
    std::remove(path.c_str());
    EXPECT_THROW(run({"--config", "/nonexistent/pptp-fixupd.conf"}), UsageError);
}

}  // namespace

namespace {

TEST(Options, SeveralUplinksOffloadAndLocalGre) {
    const auto r = run({"--queue", "3", "--outside", "eth1", "--outside", "eth2,eth3", "--outside", "eth1",
                        "--gre-offload", "off", "--offload-mark", "0x100", "--local-gre", "drop"});
    ASSERT_TRUE(r.options);
    EXPECT_EQ(r.options->outside_interfaces, (std::vector<std::string>{"eth1", "eth2", "eth3"}));
    EXPECT_EQ(r.options->gre_offload, daemon_options::Options::GreOffload::Off);
    EXPECT_EQ(r.options->offload_mark, 0x100u);
    EXPECT_EQ(r.options->handler.local_gre, nat::HandlerConfig::LocalGre::Drop);
    const auto d = run({"--queue", "3", "--outside", "eth1"});
    ASSERT_TRUE(d.options);
    EXPECT_EQ(d.options->gre_offload, daemon_options::Options::GreOffload::Auto);
    EXPECT_EQ(d.options->handler.local_gre, nat::HandlerConfig::LocalGre::Auto);
    EXPECT_THROW(run({"--queue", "3", "--outside", "eth1", "--offload-mark", "0x3"}), UsageError);  // two bits
    EXPECT_THROW(run({"--queue", "3", "--outside", "eth1", "--gre-offload", "fast"}), UsageError);
    EXPECT_THROW(run({"--queue", "3", "--outside", "eth1", "--local-gre", "maybe"}), UsageError);
    EXPECT_THROW(run({"--queue", "3", "--outside", "eth1,,eth2"}), UsageError);
    const auto removal = run({"--remove-offload"});  // needs nothing else
    ASSERT_TRUE(removal.options);
    EXPECT_TRUE(removal.options->remove_offload);
}

}  // namespace
