// Interface facts from rtnetlink: the outside interface's index and the IPv4
// address MASQUERADE will use on it.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace nfq {

class LinkError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

[[nodiscard]] std::uint32_t interface_index(const std::string& name);  // throws LinkError
// The primary (first, non-secondary) IPv4 address of the interface, host order.
[[nodiscard]] std::optional<std::uint32_t> primary_ipv4_address(std::uint32_t ifindex);  // throws LinkError

}  // namespace nfq
