// libFuzzer target: the IPv4, TCP and enhanced GRE parsers on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "pptp/gre.hpp"
#include "pptp/inet.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> bytes(data, size);
    const auto gre = pptp::parse_gre(bytes);
    if (gre.error == pptp::GreError::None) {
        const auto& h = gre.header;
        // Never claims bytes that are not there.
        if (h.header_length > size || h.payload_length > size - h.header_length) {
            std::abort();
        }
    }
    const auto ip = pptp::parse_ipv4(bytes);
    if (ip.error == pptp::Ipv4Error::None) {
        const auto& h = ip.header;
        if (h.header_length < 20 || h.header_length > h.total_length || h.total_length > size) {
            std::abort();
        }
        const auto l4 = bytes.subspan(h.header_length, h.total_length - h.header_length);
        if (auto tcp = pptp::parse_tcp(l4); tcp && tcp->header_length > l4.size()) {
            std::abort();
        }
        (void)pptp::parse_gre(l4);
        (void)pptp::ipv4_header_checksum(bytes.first(h.header_length));
    }
    return 0;
}
