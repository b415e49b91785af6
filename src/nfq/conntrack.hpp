// Lookups in the kernel's conntrack table over ctnetlink
// (libnetfilter_conntrack): how the kernel's NAT mapped a TCP connection.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>

struct nfct_handle;
struct nf_conntrack;

namespace nfq {

class ConntrackError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Both tuples of a conntrack entry, host byte order.
struct ConntrackTuples {
    std::uint32_t original_source = 0;
    std::uint32_t original_destination = 0;
    std::uint32_t reply_source = 0;
    std::uint32_t reply_destination = 0;
};

// A TCP entry that carries a conntrack label (connlabel): its tuples,
// ports, and the label's 128 bits (byte i, bit j = label bit 8*i + j).
struct LabelledEntry {
    ConntrackTuples tuples;
    std::uint16_t original_source_port = 0;
    std::uint16_t original_destination_port = 0;
    std::uint16_t reply_source_port = 0;
    std::uint16_t reply_destination_port = 0;
    std::array<std::uint8_t, 16> label{};
};

class ConntrackTable {
public:
    // Opens the ctnetlink socket (the kernel loads ctnetlink on demand).
    // Throws ConntrackError.
    ConntrackTable();
    ~ConntrackTable();
    ConntrackTable(const ConntrackTable&) = delete;
    ConntrackTable& operator=(const ConntrackTable&) = delete;

    // The entry of the TCP connection between `source:source_port` (the
    // inside peer, after any DNAT and before SNAT, as FORWARD sees it) and
    // `destination:destination_port`: the entry whose original tuple is
    // that (the inside peer opened it), or whose reply tuple is (the
    // outside peer opened it through a port forward).
    // nullopt when there is none.
    [[nodiscard]] std::optional<ConntrackTuples> find_tcp(std::uint32_t source, std::uint16_t source_port,
                                                          std::uint32_t destination, std::uint16_t destination_port);
    // Replaces the label of that entry (found as find_tcp finds it). False
    // when there is no such entry or the kernel refused (ENOSPC: the entry
    // was created while no connlabel user existed, so it has no label
    // space); see last_error().
    bool set_tcp_label(std::uint32_t source, std::uint16_t source_port, std::uint32_t destination,
                       std::uint16_t destination_port, const std::array<std::uint8_t, 16>& label);
    // Every IPv4 TCP entry with a label that is not all zero. Returns false
    // when the dump failed (last_error()); `each` has seen what came before.
    bool for_each_labelled_tcp(const std::function<void(const LabelledEntry&)>& each);
    // The same for the entries opened to one of `ports` (their original
    // destination port), filtered in the kernel (CTA_FILTER, Linux 5.9 and
    // later): the kernel still walks the table but sends only those, a
    // fraction of a whole dump's cost on a busy gateway. Falls back to the
    // whole dump where the kernel has no filter.
    bool for_each_labelled_tcp(std::span<const std::uint16_t> ports,
                               const std::function<void(const LabelledEntry&)>& each);
    [[nodiscard]] bool kernel_filter_used() const noexcept { return kernel_filter_used_; }
    [[nodiscard]] std::uint64_t lookups() const noexcept { return lookups_; }
    [[nodiscard]] std::uint64_t failures() const noexcept { return failures_; }
    // errno of the last lookup that failed other than "no such entry"; 0 if none.
    [[nodiscard]] int last_error() const noexcept { return last_error_; }

private:
    struct Deleter {
        void operator()(nf_conntrack* ct) const noexcept;
    };
    bool query(bool by_reply, std::uint32_t source, std::uint16_t source_port, std::uint32_t destination,
               std::uint16_t destination_port, ConntrackTuples& out);

    nfct_handle* handle_ = nullptr;
    std::unique_ptr<nf_conntrack, Deleter> query_;
    std::unique_ptr<nf_conntrack, Deleter> blank_;
    std::uint64_t lookups_ = 0;
    std::uint64_t failures_ = 0;
    int last_error_ = 0;
    bool kernel_filter_used_ = false;
};

}  // namespace nfq
