#include "nfq/link.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

namespace nfq {

std::uint32_t interface_index(const std::string& name) {
    const unsigned int index = if_nametoindex(name.c_str());
    if (index == 0) {
        throw LinkError("no such interface: " + name);
    }
    return index;
}

namespace {
struct AddressQuery {
    std::uint32_t ifindex = 0;  // 0: every interface
    bool primary_only = true;
    std::vector<std::uint32_t> addresses;
};

int on_address(const nlmsghdr* nlh, void* data) {
    auto* query = static_cast<AddressQuery*>(data);
    const auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(nlh));
    if (ifa->ifa_family != AF_INET || (query->ifindex != 0 && ifa->ifa_index != query->ifindex) ||
        (query->primary_only && ((ifa->ifa_flags & IFA_F_SECONDARY) != 0 || !query->addresses.empty()))) {
        return MNL_CB_OK;
    }
    struct Found {
        const nlattr* local = nullptr;
        const nlattr* address = nullptr;
    } found;
    mnl_attr_parse(
        nlh, sizeof(*ifa),
        [](const nlattr* attr, void* out) {
            auto* f = static_cast<Found*>(out);
            if (mnl_attr_get_type(attr) == IFA_LOCAL) {
                f->local = attr;
            } else if (mnl_attr_get_type(attr) == IFA_ADDRESS) {
                f->address = attr;
            }
            return MNL_CB_OK;
        },
        &found);
    const nlattr* chosen = found.local != nullptr ? found.local : found.address;
    if (chosen != nullptr && mnl_attr_get_payload_len(chosen) == 4) {
        std::uint32_t value = 0;
        std::memcpy(&value, mnl_attr_get_payload(chosen), 4);
        query->addresses.push_back(ntohl(value));
    }
    return MNL_CB_OK;
}

void dump_addresses(AddressQuery& query) {
    mnl_socket* sock = mnl_socket_open(NETLINK_ROUTE);
    if (sock == nullptr) {
        throw LinkError(std::string("cannot open rtnetlink socket: ") + std::strerror(errno));
    }
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
    try {
        if (mnl_socket_bind(sock, 0, MNL_SOCKET_AUTOPID) < 0) {
            throw LinkError(std::string("cannot bind rtnetlink socket: ") + std::strerror(errno));
        }
        nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
        nlh->nlmsg_type = RTM_GETADDR;
        nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        nlh->nlmsg_seq = static_cast<unsigned int>(time(nullptr));
        const unsigned int seq = nlh->nlmsg_seq;
        auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
        ifa->ifa_family = AF_INET;
        if (mnl_socket_sendto(sock, nlh, nlh->nlmsg_len) < 0) {
            throw LinkError(std::string("rtnetlink address dump failed: ") + std::strerror(errno));
        }
        const unsigned int port = mnl_socket_get_portid(sock);
        for (;;) {
            const ssize_t n = mnl_socket_recvfrom(sock, buffer.data(), buffer.size());
            if (n < 0) {
                throw LinkError(std::string("rtnetlink address dump failed: ") + std::strerror(errno));
            }
            const int ret = mnl_cb_run(buffer.data(), static_cast<size_t>(n), seq, port, on_address, &query);
            if (ret < 0) {
                throw LinkError(std::string("rtnetlink address dump failed: ") + std::strerror(errno));
            }
            if (ret == MNL_CB_STOP) {
                break;
            }
        }
    } catch (...) {
        mnl_socket_close(sock);
        throw;
    }
    mnl_socket_close(sock);
}
}  // namespace

std::optional<std::uint32_t> primary_ipv4_address(std::uint32_t ifindex) {
    AddressQuery query;
    query.ifindex = ifindex;
    dump_addresses(query);
    if (query.addresses.empty()) {
        return std::nullopt;
    }
    return query.addresses.front();
}

bool gre_socket_open() {
    std::ifstream raw("/proc/net/raw");
    std::string line;
    std::getline(raw, line);  // the header
    while (std::getline(raw, line)) {
        // "  3: 00000000:002F 00000000:0000 07 ...": the "port" of a raw
        // socket is its protocol, 0x2F = 47 = GRE.
        const auto colon = line.find(':', line.find(':') + 1);
        if (colon != std::string::npos && line.compare(colon + 1, 4, "002F") == 0) {
            return true;
        }
    }
    return false;
}

std::vector<std::uint32_t> local_ipv4_addresses() {
    AddressQuery query;
    query.primary_only = false;
    dump_addresses(query);
    return query.addresses;
}

LinkWatcher::LinkWatcher() {
    socket_ = mnl_socket_open(NETLINK_ROUTE);
    if (socket_ == nullptr) {
        throw LinkError(std::string("cannot open rtnetlink socket: ") + std::strerror(errno));
    }
    if (mnl_socket_bind(socket_, RTMGRP_IPV4_IFADDR | RTMGRP_LINK, MNL_SOCKET_AUTOPID) < 0) {
        const std::string reason = std::strerror(errno);
        mnl_socket_close(socket_);
        throw LinkError("cannot listen for address changes: " + reason);
    }
}

LinkWatcher::~LinkWatcher() {
    mnl_socket_close(socket_);
}

int LinkWatcher::fd() const noexcept {
    return mnl_socket_get_fd(socket_);
}

bool LinkWatcher::drain() {
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
    bool any = false;
    // An overrun (ENOBUFS) also means something changed.
    while (recv(fd(), buffer.data(), buffer.size(), MSG_DONTWAIT) > 0 || errno == ENOBUFS) {
        any = true;
        errno = 0;
    }
    return any;
}

}  // namespace nfq
