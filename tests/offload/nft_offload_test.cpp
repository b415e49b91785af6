// offload::NftOffload against the running kernel, in a network namespace of
// the test's own (unshare at start, gone with the process). Root only.
#include "offload/nft_offload.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pptp/bytes.hpp"
#include "pptp/inet.hpp"

namespace {

using offload::CallRecord;
using offload::NftOffload;
using offload::OffloadConfig;

constexpr std::uint32_t kPublic = 0x0A090001;   // 10.9.0.1, on veth t0
constexpr std::uint32_t kOutside = 0x0A090002;  // 10.9.0.2, "beyond" t0
constexpr std::uint32_t kInside = 0xC612000B;   // 198.18.0.11

CallRecord record(std::uint16_t public_id, std::uint32_t inside = kInside, std::uint16_t outside_id = 500) {
    CallRecord r;
    r.inside_address = inside;
    r.outside_address = kOutside;
    r.public_address = kPublic;
    r.inside_call_id = 7;
    r.public_call_id = public_id;
    r.outside_call_id = outside_id;
    r.inside_port = 40000;
    r.outside_port = 1723;
    r.pns_side = 0;
    r.created_ns = 123456789;
    r.base_packets_in = 4;
    return r;
}

OffloadConfig config(std::uint32_t max_calls = 1024) {
    OffloadConfig c;
    c.table = "pptp_fixup_test";
    c.outside_interfaces = {"t0"};
    c.max_calls = max_calls;
    return c;
}

class NftOffloadTest : public ::testing::Test {
protected:
    void TearDown() override {
        NftOffload cleanup(config());
        (void)cleanup.remove_table();
    }
};

TEST_F(NftOffloadTest, InstalledCallsAreReadBackExactly) {
    NftOffload nft(config());
    EXPECT_FALSE(nft.table_exists());
    nft.install();
    EXPECT_TRUE(nft.table_exists());
    EXPECT_TRUE(nft.existing_calls().empty());
    // Two clients with the same inside Call ID, two public ones.
    ASSERT_EQ(nft.add(record(7)), 0);
    ASSERT_EQ(nft.add(record(8, kInside + 1)), 0);
    const auto calls = nft.existing_calls();
    ASSERT_EQ(calls.size(), 2u);
    for (const auto& c : calls) {
        EXPECT_TRUE(c.record == record(7) || c.record == record(8, kInside + 1));
        EXPECT_EQ(c.in.packets, 0u);
        EXPECT_EQ(c.out.packets, 0u);
    }
}

TEST_F(NftOffloadTest, AKeyInUseIsRefusedAndRemovalIsExact) {
    NftOffload nft(config());
    nft.install();
    ASSERT_EQ(nft.add(record(7)), 0);
    // The same inbound key for another inside host: never overwrites.
    EXPECT_EQ(nft.add(record(7, kInside + 1, 501)), EEXIST);
    ASSERT_EQ(nft.existing_calls().size(), 1u);
    EXPECT_EQ(nft.existing_calls().front().record, record(7));
    EXPECT_EQ(nft.remove(record(7)), 0);
    EXPECT_TRUE(nft.existing_calls().empty());
    EXPECT_EQ(nft.remove(record(7)), ENOENT);
}

TEST_F(NftOffloadTest, AFullMapRefusesTheNextCall) {
    NftOffload nft(config(2));
    nft.install();
    ASSERT_EQ(nft.add(record(1)), 0);
    ASSERT_EQ(nft.add(record(2, kInside, 501)), 0);
    EXPECT_NE(nft.add(record(3, kInside, 502)), 0);
    EXPECT_EQ(nft.existing_calls().size(), 2u);  // all or nothing: no half call
}

TEST_F(NftOffloadTest, ReinstallKeepsExactlyTheGivenCalls) {
    NftOffload nft(config());
    nft.install();
    ASSERT_EQ(nft.add(record(7)), 0);
    ASSERT_EQ(nft.add(record(8, kInside + 1)), 0);
    // As a restart does: the table is rebuilt with the calls it adopted.
    NftOffload restarted(config());
    EXPECT_TRUE(restarted.table_exists());
    restarted.install({record(8, kInside + 1)});
    const auto calls = restarted.existing_calls();
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls.front().record, record(8, kInside + 1));
    EXPECT_EQ(restarted.remove_table(), 0);
    EXPECT_FALSE(restarted.table_exists());
    EXPECT_EQ(restarted.remove_table(), ENOENT);
}

TEST_F(NftOffloadTest, ManyCallsSurviveAReinstallInSeveralTransactions) {
    NftOffload nft(config(4096));
    std::vector<CallRecord> keep;
    for (std::uint16_t i = 1; i <= 2000; ++i) {
        keep.push_back(record(i, kInside + i, i));
    }
    nft.install(keep);
    EXPECT_EQ(nft.existing_calls().size(), keep.size());
}

// A GRE packet that really arrives on the outside interface: the kernel
// rewrites it and counts it on its call's element; one from another outside
// host with the same Call ID is not touched.
class VethFixture : public NftOffloadTest {
protected:
    void SetUp() override {
        ASSERT_EQ(std::system("ip link add t0 type veth peer name t1 && ip addr add 10.9.0.1/24 dev t0 && "
                              "ip link set t0 up && ip link set t1 up && sysctl -qw net.ipv4.ip_forward=1"),
                  0);
    }
    void TearDown() override {
        (void)std::system("ip link del t0 2>/dev/null");
        NftOffloadTest::TearDown();
    }
    static void send_gre(std::uint32_t source, std::uint16_t call_id) {
        const int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
        ASSERT_GE(fd, 0);
        ifreq ifr{};
        std::strncpy(ifr.ifr_name, "t0", IFNAMSIZ - 1);
        ASSERT_EQ(ioctl(fd, SIOCGIFHWADDR, &ifr), 0);
        std::array<std::uint8_t, 6> t0_mac{};
        std::memcpy(t0_mac.data(), ifr.ifr_hwaddr.sa_data, 6);
        std::array<std::uint8_t, 14 + 20 + 8 + 4> frame{};
        std::memcpy(frame.data(), t0_mac.data(), 6);
        frame[12] = 0x08;  // IPv4
        std::uint8_t* ip = frame.data() + 14;
        ip[0] = 0x45;
        pptp::store_be16(ip + 2, 20 + 8 + 4);
        ip[8] = 64;
        ip[9] = 47;
        pptp::store_be32(ip + 12, source);
        pptp::store_be32(ip + 16, kPublic);
        pptp::store_be16(ip + 10, pptp::ipv4_header_checksum(std::span<const std::uint8_t>(ip, 20)));
        std::uint8_t* gre = ip + 20;
        gre[0] = 0x30;  // K, S
        gre[1] = 0x01;  // version 1
        pptp::store_be16(gre + 2, 0x880B);
        pptp::store_be16(gre + 4, 0);  // payload length 0 (an ACK-only packet has none)
        pptp::store_be16(gre + 6, call_id);
        pptp::store_be32(gre + 8, 1);
        sockaddr_ll to{};
        to.sll_family = AF_PACKET;
        to.sll_ifindex = static_cast<int>(if_nametoindex("t1"));
        to.sll_halen = 6;
        std::memcpy(to.sll_addr, t0_mac.data(), 6);
        ASSERT_EQ(sendto(fd, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)),
                  static_cast<ssize_t>(frame.size()));
        close(fd);
    }
    static std::uint64_t inbound_packets(NftOffload& nft, std::uint16_t public_id) {
        std::uint64_t packets = 0;
        for (const auto& in : nft.read_counters().inbound) {
            if (in.first == kOutside && in.second == kPublic && in.call_id == public_id) {
                packets = in.counters.packets;
            }
        }
        return packets;
    }
};

TEST_F(VethFixture, TheKernelCountsGreOfTheCallOnly) {
    NftOffload nft(config());
    nft.install();
    ASSERT_EQ(nft.add(record(7)), 0);
    send_gre(kOutside, 7);
    send_gre(kOutside, 7);
    send_gre(kOutside + 5, 7);  // another outside host
    send_gre(kOutside, 8);      // no call
    usleep(200'000);
    EXPECT_EQ(inbound_packets(nft, 7), 2u);
    offload::ElementCounters in;
    offload::ElementCounters out;
    ASSERT_EQ(nft.read_call(record(7), in, out), 0);
    EXPECT_EQ(in.packets, 2u);
    EXPECT_EQ(in.bytes, 2u * (20 + 12));
    EXPECT_EQ(out.packets, 0u);
    EXPECT_EQ(nft.remove(record(7)), 0);
    EXPECT_EQ(nft.read_call(record(7), in, out), ENOENT);
}

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    if (geteuid() != 0) {
        std::fprintf(stderr, "offload tests need root (a network namespace of their own)\n");
        return 1;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        std::fprintf(stderr, "unshare(CLONE_NEWNET): %s\n", std::strerror(errno));
        return 1;
    }
    return RUN_ALL_TESTS();
}
