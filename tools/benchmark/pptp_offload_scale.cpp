// pptp-offload-scale: what N offloaded calls cost, measured with the agent's
// own code (tools/bench runs it; run as root).
//
// In a network namespace of its own (unshare(CLONE_NEWNET)), so the table it
// builds is seen by no packet and no other process:
//   1. builds the agent's nf_tables offload table (agent::GreOffloadBridge
//      over offload::NftOffload, as pptp-fixupd --gre-offload nft does at
//      start);
//   2. puts N calls into a nat::CallTable the way the control inspector does
//      (connection, Outgoing-Call-Request, reply, established), one control
//      connection each; establishing a call offloads it: one netlink
//      transaction of three map elements per call, as in the agent. Timed:
//      call setups per second with the map programming in;
//   3. reads the element counters of every call once, as the agent's poll
//      does every --offload-poll-interval and before `stats`/`sessions`
//      (timed), and once more as the raw dump alone;
//   4. adopts all N calls into a second table the way a restarted agent does
//      (dump of the maps, table rebuilt in transactions of 512 calls; timed);
//   5. ends every call (one removal transaction each; timed) and deletes the
//      table.
// Memory: the agent's as this process's VmRSS growth over step 2 divided by
// N (the call table with its control connections; glibc malloc); the
// kernel's from /proc/slabinfo (active objects x object size, summed over
// every cache) plus /proc/meminfo Percpu and VmallocUsed, before the table,
// with the empty table and with N calls. These are whole-machine counters:
// other work on the machine adds noise, so run.py runs this several times
// and takes the median.
//
//   pptp-offload-scale [--calls N]     (default 65536; prints one JSON line)
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon/offload_bridge.hpp"
#include "nat/call_table.hpp"
#include "nat/clock.hpp"
#include "nat/counters.hpp"
#include "offload/nft_offload.hpp"

namespace {

[[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "pptp-offload-scale: %s\n", message.c_str());
    std::exit(2);
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Kernel memory as the whole machine counts it, bytes.
struct KernelMemory {
    double slab_objects = 0;  // /proc/slabinfo: sum of active_objs * objsize
    double slab = 0;          // /proc/meminfo Slab (whole slab pages)
    double percpu = 0;        // /proc/meminfo Percpu
    double vmalloc = 0;       // /proc/meminfo VmallocUsed
    double available = 0;     // /proc/meminfo MemAvailable
    [[nodiscard]] double accounted() const { return slab_objects + percpu + vmalloc; }
};

KernelMemory kernel_memory() {
    KernelMemory m;
    std::ifstream slabinfo("/proc/slabinfo");
    std::string line;
    while (std::getline(slabinfo, line)) {
        if (line.empty() || line[0] == '#' || line.rfind("slabinfo", 0) == 0) continue;
        std::istringstream in(line);
        std::string name;
        double active = 0, total = 0, size = 0;
        if (in >> name >> active >> total >> size) m.slab_objects += active * size;
    }
    std::ifstream meminfo("/proc/meminfo");
    while (std::getline(meminfo, line)) {
        std::istringstream in(line);
        std::string key;
        double kib = 0;
        if (!(in >> key >> kib)) continue;
        if (key == "Slab:") m.slab = kib * 1024;
        if (key == "Percpu:") m.percpu = kib * 1024;
        if (key == "VmallocUsed:") m.vmalloc = kib * 1024;
        if (key == "MemAvailable:") m.available = kib * 1024;
    }
    return m;
}

double rss_bytes() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) * 1024;
    }
    return 0;
}

std::string memory_json(const KernelMemory& m) {
    std::ostringstream s;
    s << std::fixed << std::setprecision(0) << "{\"slab_objects\": " << m.slab_objects << ", \"slab\": " << m.slab
      << ", \"percpu\": " << m.percpu << ", \"vmalloc\": " << m.vmalloc << ", \"available\": " << m.available << "}";
    return s.str();
}

void usage(int rc) {
    std::fprintf(rc == 0 ? stdout : stderr,
                 "usage: pptp-offload-scale [--calls N]   (as root; default 65536, at most 16777216)\n"
                 "Builds the agent's GRE offload table in a network namespace of its own, offloads N calls\n"
                 "through nat::CallTable and agent::GreOffloadBridge, reads their counters, adopts them as\n"
                 "a restart would, removes them; prints times and memory per call as one JSON line.\n");
    std::exit(rc);
}

}  // namespace

int main(int argc, char** argv) {
    std::uint32_t calls = 65536;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--calls" && i + 1 < argc) {
            char* end = nullptr;
            const unsigned long v = std::strtoul(argv[++i], &end, 10);
            if (*end != '\0' || v == 0 || v > (1UL << 24U)) die("bad --calls");
            calls = static_cast<std::uint32_t>(v);
        } else if (a == "-h" || a == "--help") {
            usage(0);
        } else {
            usage(1);
        }
    }
    if (geteuid() != 0) die("run as root (network namespace, nf_tables)");
    if (unshare(CLONE_NEWNET) != 0) die(std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno));

    // As the agent's table for N calls: every limit at N, one public address.
    nat::TableConfig config;
    config.public_address = 0xCB007101U;  // 203.0.113.1
    config.max_calls = calls;
    config.max_calls_per_host = calls;
    config.max_connections = calls;
    config.max_connections_per_host = calls;
    // Outside peers: 16 PACs, so that public Call IDs (16 bits per outside
    // peer) suffice for any N up to 16 x 65535.
    constexpr std::uint32_t kPacs = 16;
    if (calls > kPacs * 65000U) die("--calls: at most 1040000 with 16 outside peers");

    const KernelMemory k0 = kernel_memory();
    nat::SteadyClock clock;
    nat::Counters counters;
    offload::OffloadConfig oconfig;
    oconfig.outside_interfaces = {"out0"};  // matched by name; need not exist
    oconfig.max_calls = calls;
    double t_install = 0;
    std::string failure;
    try {
        offload::NftOffload nft(oconfig);
        agent::GreOffloadBridge bridge(nft);
        auto table = std::make_unique<nat::CallTable>(config, clock, counters, nullptr);
        double t = now_s();
        (void)bridge.adopt_and_install(*table);  // an empty table: what the agent builds at start
        t_install = now_s() - t;
        table->set_offload(&bridge);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const KernelMemory k1 = kernel_memory();
        const double rss1 = rss_bytes();

        // Step 2: N calls, each established (and so offloaded) in turn.
        std::uint64_t offloaded = 0, refused = 0;
        t = now_s();
        for (std::uint32_t i = 0; i < calls; ++i) {
            nat::ConnectionKey key;
            key.inside_address = 0x0A000000U + 1 + i;         // one inside host per call, 10.0.0.1 on
            key.outside_address = 0xC6336401U + (i % kPacs);  // 198.51.100.1-16
            key.inside_port = static_cast<std::uint16_t>(1024 + i % 60000);
            key.outside_port = 1723;
            nat::ControlConnection* conn = table->create_connection(key);
            if (conn == nullptr) {
                ++refused;
                continue;
            }
            conn->state = nat::ConnectionState::Established;
            const auto inside_id = static_cast<std::uint16_t>(1 + (i / kPacs) % 65000);
            nat::CallResult r = table->create_call_from_inside(*conn, inside_id);
            if (r.call == nullptr) {
                ++refused;
                continue;
            }
            r.call->answered = true;
            table->set_outside_id(*r.call, static_cast<std::uint16_t>(1 + (i / kPacs) % 65000));
            table->mark_established(*r.call);
            offloaded += r.call->offloaded ? 1 : 0;
        }
        const double t_setup = now_s() - t;
        const double rss2 = rss_bytes();
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const KernelMemory k2 = kernel_memory();

        // Step 3: the agent's counter reading, and the bare dump.
        t = now_s();
        bridge.poll(*table);
        const double t_poll = now_s() - t;
        std::uint64_t elements = 0, packets = 0;
        t = now_s();
        const offload::CounterSnapshot snapshot = nft.read_counters();
        elements = snapshot.inbound.size();
        for (const auto& side : {snapshot.inbound, snapshot.outbound}) {
            for (const auto& e : side) {
                packets += e.counters.packets;
            }
        }
        const double t_dump = now_s() - t;

        // Step 4: a restart's adoption (dump, table rebuilt, calls taken in).
        double t_adopt = 0;
        std::size_t adopted = 0;
        {
            nat::Counters counters2;
            nat::CallTable table2(config, clock, counters2, nullptr);
            agent::GreOffloadBridge bridge2(nft);
            t = now_s();
            adopted = bridge2.adopt_and_install(table2);
            t_adopt = now_s() - t;
        }

        // Step 5: every call ends (its elements go at once), then the table.
        const std::uint64_t transactions0 = nft.transactions();
        t = now_s();
        table->clear_all(nat::TeardownReason::Cleared);
        const double t_teardown = now_s() - t;
        const std::uint64_t removals = nft.transactions() - transactions0;
        table.reset();
        const int removed = nft.remove_table();
        std::this_thread::sleep_for(std::chrono::milliseconds(500));  // RCU frees
        const KernelMemory k3 = kernel_memory();

        const double n = static_cast<double>(calls);
        std::printf("{\"calls\": %u, \"offloaded\": %" PRIu64 ", \"refused\": %" PRIu64
                    ", \"table_install_s\": %.6f, "
                    "\"setup\": {\"seconds\": %.6f, \"calls_per_s\": %.1f}, "
                    "\"counter_read\": {\"poll_seconds\": %.6f, \"dump_seconds\": %.6f, \"calls_read\": %" PRIu64
                    ", \"packets\": %" PRIu64
                    "}, "
                    "\"adopt\": {\"seconds\": %.6f, \"calls\": %zu, \"calls_per_s\": %.1f}, "
                    "\"teardown\": {\"seconds\": %.6f, \"calls_per_s\": %.1f, \"transactions\": %" PRIu64
                    "}, "
                    "\"remove_table\": %d, "
                    "\"agent\": {\"rss_before\": %.0f, \"rss_with_calls\": %.0f, \"bytes_per_call\": %.1f}, "
                    "\"kernel\": {\"before\": %s, \"empty_table\": %s, \"with_calls\": %s, \"after_removal\": %s, "
                    "\"bytes_per_call\": %.1f, \"slab_objects_per_call\": %.1f, \"percpu_per_call\": %.1f, "
                    "\"vmalloc_per_call\": %.1f, \"available_drop_per_call\": %.1f, \"empty_table_bytes\": %.0f, "
                    "\"total_bytes_per_call\": %.1f}}\n",
                    calls, offloaded, refused, t_install, t_setup, n / t_setup, t_poll, t_dump, elements, packets,
                    t_adopt, adopted, t_adopt > 0 ? static_cast<double>(adopted) / t_adopt : 0.0, t_teardown,
                    n / t_teardown, removals, removed, rss1, rss2, (rss2 - rss1) / n, memory_json(k0).c_str(),
                    memory_json(k1).c_str(), memory_json(k2).c_str(), memory_json(k3).c_str(),
                    (k2.accounted() - k1.accounted()) / n, (k2.slab_objects - k1.slab_objects) / n,
                    (k2.percpu - k1.percpu) / n, (k2.vmalloc - k1.vmalloc) / n, (k1.available - k2.available) / n,
                    k1.accounted() - k0.accounted(), (k2.accounted() - k0.accounted()) / n);
        std::fflush(stdout);
        return offloaded == calls ? 0 : 1;
    } catch (const offload::OffloadError& e) {
        failure = e.what();
    }
    die("offload: " + failure);
}
