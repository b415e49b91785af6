// Established calls' GRE translated in the kernel: nf_tables maps in a table
// of the agent's own, programmed over netlink with libnftnl. The only code
// that speaks nf_tables, as nfq/ is for the queue. Knows calls only as the
// records below; the nat layer decides what is offloaded and when.
//
// The table (family ip, default name pptp_fixup):
//   map in_addr    outside peer . public address . public Call ID : inside address
//                  (the call's record as element user data)
//   map in_key     the same key : inside Call ID (element counters)
//   map out_source inside peer . outside peer . outside Call ID : public address
//                  (element counters)
//   chain inbound  prerouting  -180: PPTP GRE in on the outside interface whose
//                  key is in in_addr gets its destination and Call ID rewritten
//                  and the offload mark bit set
//   chain outbound postrouting -180: PPTP GRE out through it whose key is in
//                  out_source gets its source rewritten and the mark bit set
//   chain outbound_done (postrouting -140): clears the bit again
// The queue rules (mangle, -150) skip packets with the bit set, the filter
// rules accept inbound ones by it; it is cleared in prerouting first (by the
// rule set's raw rule and by the inbound chain) and again after the queue
// in postrouting, so it never leaves the box. A packet of no element has it cleared and goes to
// the queue as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

struct mnl_socket;

namespace offload {

class OffloadError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct OffloadConfig {
    std::string table = "pptp_fixup";
    std::vector<std::string> outside_interfaces;
    std::uint32_t mark = 0x01000000;  // one bit, as the rule set's --offload-mark
    std::uint32_t max_calls = 65536;  // map size; a full map refuses (ENOSPC)
};

// One offloaded call as the kernel keeps it. The in_key element carries it
// as user data, so a restarted agent can adopt the call (version 1 layout).
struct CallRecord {
    std::uint32_t inside_address = 0;  // host byte order, as the nat layer
    std::uint32_t outside_address = 0;
    std::uint32_t public_address = 0;
    std::uint16_t inside_call_id = 0;
    std::uint16_t public_call_id = 0;
    std::uint16_t outside_call_id = 0;
    // The control connection it belongs to.
    std::uint16_t inside_port = 0;
    std::uint16_t outside_port = 0;
    bool outgoing = true;
    bool opened_from_outside = false;
    std::int8_t pns_side = -1;  // which peer is the PNS: 0 inside, 1 outside, -1 unknown
    // steady_clock (CLOCK_MONOTONIC) nanoseconds: valid across agent
    // restarts, and the table does not outlive a reboot.
    std::int64_t created_ns = 0;
    // What the queue path counted before the call was offloaded.
    std::uint64_t base_packets_in = 0;
    std::uint64_t base_bytes_in = 0;
    std::uint64_t base_packets_out = 0;
    std::uint64_t base_bytes_out = 0;
    bool operator==(const CallRecord&) const = default;
};

// Element counters: packets and IP bytes since the element was added.
struct ElementCounters {
    std::uint64_t packets = 0;
    std::uint64_t bytes = 0;
};

// One element's counters by its key: inbound (outside peer, public
// address, public Call ID), outbound (inside peer, outside peer, outside
// Call ID).
struct KeyedCounters {
    std::uint32_t first = 0;
    std::uint32_t second = 0;
    std::uint16_t call_id = 0;
    ElementCounters counters;
};

struct CounterSnapshot {
    std::vector<KeyedCounters> inbound;
    std::vector<KeyedCounters> outbound;
};

struct OffloadedCall {
    CallRecord record;
    ElementCounters in;
    ElementCounters out;
};

// Serialised record for element user data (the kernel keeps up to 256 bytes).
std::vector<std::uint8_t> encode_record(const CallRecord& record);
// False for data of another layout or version.
bool decode_record(const std::uint8_t* data, std::size_t size, CallRecord& record);

class NftOffload {
public:
    // Opens the netlink socket. Throws OffloadError.
    explicit NftOffload(OffloadConfig config);
    ~NftOffload();
    NftOffload(const NftOffload&) = delete;
    NftOffload& operator=(const NftOffload&) = delete;

    [[nodiscard]] const OffloadConfig& config() const noexcept { return config_; }

    // True when the table exists (left by an earlier run).
    [[nodiscard]] bool table_exists();
    // The calls the maps hold; an element of no readable record, or whose
    // three elements do not agree, is left out (and removed by install()).
    [[nodiscard]] std::vector<OffloadedCall> existing_calls();
    // Creates the table, maps and chains, or brings the chains of an existing
    // table up to date (interface, mark) in one transaction; the elements of
    // `keep` stay and every other element goes. Throws OffloadError.
    void install(const std::vector<CallRecord>& keep = {});
    // Adds a call's three elements in one transaction. 0 or an errno.
    int add(const CallRecord& record);
    // Removes them. 0 or an errno (ENOENT when they were not there).
    int remove(const CallRecord& record);
    // One call's element counters (before its removal, for its last
    // figures). 0 or an errno.
    int read_call(const CallRecord& record, ElementCounters& in, ElementCounters& out);
    // The counters of every element of in_key and out_source. Takes time in
    // proportion to the square of their number (the kernel walks a map from
    // its start for every part of a dump): about 0.4 s at 65,536 calls.
    [[nodiscard]] CounterSnapshot read_counters();
    // Elements of one way only (left by a call that is gone). 0 or an errno.
    int remove_inbound(std::uint32_t outside, std::uint32_t public_address, std::uint16_t public_id);
    int remove_outbound(std::uint32_t inside, std::uint32_t outside, std::uint16_t outside_id);
    // Deletes the whole table (a stop for good). 0, or an errno; ENOENT when absent.
    int remove_table();

    // Netlink round trips and failures, for the agent's statistics.
    [[nodiscard]] std::uint64_t transactions() const noexcept { return transactions_; }

private:
    struct Batch;
    int commit(Batch& batch);
    void dump_elements(const char* set, const std::function<void(const void* nftnl_elem)>& each);
    // Elements of `set` with the given key (one at most). 0 or an errno.
    int get_element(const char* set, const void* key, const std::function<void(const void* nftnl_elem)>& each);

    OffloadConfig config_;
    ::mnl_socket* socket_ = nullptr;
    std::uint32_t port_id_ = 0;
    std::uint32_t sequence_ = 0;
    std::uint64_t transactions_ = 0;
    std::vector<char> buffer_;
};

}  // namespace offload
