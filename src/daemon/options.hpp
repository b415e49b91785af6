// Command line and config file of pptp-fixupd (Boost.Program_options; the
// config file takes the same keys as the long options).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "nat/call_table.hpp"
#include "nat/packet_handler.hpp"

namespace daemon_options {

inline constexpr const char* kDefaultControlSocket = "/run/pptp-fixup/pptp-fixupd.sock";
inline constexpr std::uint16_t kDefaultFixupPort = 1723;

struct Options {
    std::uint16_t queue = 0;
    std::vector<std::string> outside_interfaces;  // one or more uplinks
    // Host order. Unset: each control connection's own, from its conntrack
    // entry (what the kernel's NAT chose).
    std::optional<std::uint32_t> public_address;
    std::vector<std::uint16_t> fixup_ports;
    std::string control_socket = kDefaultControlSocket;
    std::string config_file;
    std::string rules_command = "pptp-fixup-rules";
    bool manage_rules = false;
    bool remove_offload = false;  // delete the offload table and exit
    // Prometheus text format, rewritten (atomically) every metrics_seconds,
    // for node_exporter's textfile collector; empty: none.
    std::string metrics_file;
    std::uint32_t metrics_seconds = 15;
    std::optional<std::string> user;  // run as this user once the sockets are open
    bool keep_capabilities = false;   // do not drop capabilities (debugging)
    std::uint32_t queue_max_length = 4096;
    std::size_t burst = 64;
    logging::Level log_level = logging::Level::Info;
    // GRE of established calls in the kernel (nf_tables maps).
    enum class GreOffload : std::uint8_t { Auto, Nft, Off };
    GreOffload gre_offload = GreOffload::Auto;
    std::uint32_t offload_mark = 0x01000000;
    std::uint32_t offload_poll_seconds = 10;
    // Each control connection's calls in a label on its conntrack entry, for
    // a standby gateway (conntrackd syncs it).
    enum class HaSync : std::uint8_t { Off, Connlabel };
    HaSync ha_sync = HaSync::Off;
    nat::TableConfig table;
    nat::HandlerConfig handler;
};

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Result of parsing: either options to run with, or text to print and exit 0.
struct ParseResult {
    std::optional<Options> options;
    std::string print_and_exit;
};

// Throws UsageError with a one-line message on bad input.
ParseResult parse(int argc, const char* const* argv);

}  // namespace daemon_options
