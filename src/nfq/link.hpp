// Interface facts from rtnetlink: the outside interface's index and the IPv4
// address MASQUERADE will use on it.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

struct mnl_socket;

namespace nfq {

class LinkError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

[[nodiscard]] std::uint32_t interface_index(const std::string& name);  // throws LinkError
// The primary (first, non-secondary) IPv4 address of the interface, host order.
[[nodiscard]] std::optional<std::uint32_t> primary_ipv4_address(std::uint32_t ifindex);  // throws LinkError
// Whether a process in this network namespace holds a raw IPv4 socket for
// GRE (/proc/net/raw), as the pptp client and pptpd do.
[[nodiscard]] bool gre_socket_open();
// Every IPv4 address of every interface (the gateway's own), host order.
[[nodiscard]] std::vector<std::uint32_t> local_ipv4_addresses();  // throws LinkError

// Tells when IPv4 addresses or links change (RTNLGRP_IPV4_IFADDR, RTNLGRP_LINK),
// so the agent can follow a dynamic public address as MASQUERADE does.
class LinkWatcher {
public:
    LinkWatcher();  // throws LinkError
    ~LinkWatcher();
    LinkWatcher(const LinkWatcher&) = delete;
    LinkWatcher& operator=(const LinkWatcher&) = delete;
    [[nodiscard]] int fd() const noexcept;
    // Reads pending notifications; true if any arrived.
    bool drain();

private:
    ::mnl_socket* socket_ = nullptr;
};

}  // namespace nfq
