#include "nfq/conntrack.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace nfq {

void ConntrackTable::Deleter::operator()(nf_conntrack* ct) const noexcept {
    nfct_destroy(ct);
}

ConntrackTable::ConntrackTable() : query_(nfct_new()), blank_(nfct_new()) {
    if (!query_ || !blank_) {
        throw ConntrackError("conntrack: out of memory");
    }
    handle_ = nfct_open(CONNTRACK, 0);
    if (handle_ == nullptr) {
        throw ConntrackError(std::string("cannot open a ctnetlink socket: ") + std::strerror(errno));
    }
}

ConntrackTable::~ConntrackTable() {
    if (handle_ != nullptr) {
        nfct_close(handle_);
    }
}

namespace {

ConntrackTuples tuples_of(const nf_conntrack* ct) {
    return {ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC)), ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST)),
            ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC)), ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST))};
}

// The TCP tuple a lookup or an update names the entry by: its original
// tuple, or with `by_reply` its reply tuple.
void set_tcp_tuple(nf_conntrack* ct, bool by_reply, std::uint32_t source, std::uint16_t source_port,
                   std::uint32_t destination, std::uint16_t destination_port) {
    nfct_set_attr_u8(ct, by_reply ? ATTR_REPL_L3PROTO : ATTR_ORIG_L3PROTO, AF_INET);
    nfct_set_attr_u8(ct, by_reply ? ATTR_REPL_L4PROTO : ATTR_ORIG_L4PROTO, IPPROTO_TCP);
    nfct_set_attr_u32(ct, by_reply ? ATTR_REPL_IPV4_SRC : ATTR_ORIG_IPV4_SRC, htonl(source));
    nfct_set_attr_u32(ct, by_reply ? ATTR_REPL_IPV4_DST : ATTR_ORIG_IPV4_DST, htonl(destination));
    nfct_set_attr_u16(ct, by_reply ? ATTR_REPL_PORT_SRC : ATTR_ORIG_PORT_SRC, htons(source_port));
    nfct_set_attr_u16(ct, by_reply ? ATTR_REPL_PORT_DST : ATTR_ORIG_PORT_DST, htons(destination_port));
}

struct Answer {
    ConntrackTuples* out = nullptr;
    bool found = false;
};

int on_entry(enum nf_conntrack_msg_type /*type*/, struct nf_conntrack* ct, void* data) {
    auto* answer = static_cast<Answer*>(data);
    *answer->out = tuples_of(ct);
    answer->found = true;
    // Not STOP: the ACK that follows must be read now, or the next query
    // would take it for its own answer.
    return NFCT_CB_CONTINUE;
}

}  // namespace

bool ConntrackTable::query(bool by_reply, std::uint32_t source, std::uint16_t source_port, std::uint32_t destination,
                           std::uint16_t destination_port, ConntrackTuples& out) {
    nf_conntrack* ct = query_.get();
    nfct_copy(ct, blank_.get(), NFCT_CP_OVERRIDE);  // one object for every query: nothing allocated
    set_tcp_tuple(ct, by_reply, source, source_port, destination, destination_port);
    Answer answer{&out, false};
    nfct_callback_register(handle_, NFCT_T_ALL, on_entry, &answer);
    const int r = nfct_query(handle_, NFCT_Q_GET, ct);
    nfct_callback_unregister(handle_);
    if (!answer.found && r < 0 && errno != ENOENT) {
        ++failures_;
        last_error_ = errno;
    }
    return answer.found;
}

std::optional<ConntrackTuples> ConntrackTable::find_tcp(std::uint32_t source, std::uint16_t source_port,
                                                        std::uint32_t destination, std::uint16_t destination_port) {
    ++lookups_;
    ConntrackTuples tuples;
    if (query(false, source, source_port, destination, destination_port, tuples) ||
        query(true, source, source_port, destination, destination_port, tuples)) {
        return tuples;
    }
    return std::nullopt;
}

namespace {

int swallow(enum nf_conntrack_msg_type /*type*/, struct nf_conntrack* /*ct*/, void* /*data*/) {
    return NFCT_CB_CONTINUE;
}

struct DumpState {
    const std::function<void(const LabelledEntry&)>* each = nullptr;
};

// Hands a TCP entry with a label that is not all zero to the dump's caller.
void take_labelled(const nf_conntrack* ct, const std::function<void(const LabelledEntry&)>& each) {
    if (nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) != IPPROTO_TCP) {
        return;
    }
    const auto* bits = static_cast<const nfct_bitmask*>(nfct_get_attr(ct, ATTR_CONNLABELS));
    if (bits == nullptr) {
        return;
    }
    LabelledEntry entry;
    const unsigned int last = nfct_bitmask_maxbit(bits);
    bool any = false;
    for (unsigned int bit = 0; bit <= last && bit < entry.label.size() * 8; ++bit) {
        if (nfct_bitmask_test_bit(bits, bit) != 0) {
            entry.label[bit / 8] = static_cast<std::uint8_t>(entry.label[bit / 8] | (1U << (bit % 8)));
            any = true;
        }
    }
    if (!any) {
        return;
    }
    entry.tuples = tuples_of(ct);
    entry.original_source_port = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_SRC));
    entry.original_destination_port = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST));
    entry.reply_source_port = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC));
    entry.reply_destination_port = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
    each(entry);
}

int on_dumped(enum nf_conntrack_msg_type /*type*/, struct nf_conntrack* ct, void* data) {
    take_labelled(ct, *static_cast<DumpState*>(data)->each);
    return NFCT_CB_CONTINUE;
}

// The kernel's CTA_FILTER flags (net/netfilter/nf_conntrack_netlink.c; not
// in the uapi headers): which attributes of the filter tuple must match.
constexpr std::uint32_t kFilterProtoNumber = 1U << 3U;
constexpr std::uint32_t kFilterProtoDestinationPort = 1U << 5U;

int on_filtered(const nlmsghdr* nlh, void* data) {
    std::unique_ptr<nf_conntrack, void (*)(nf_conntrack*)> ct(nfct_new(), nfct_destroy);
    if (ct && nfct_nlmsg_parse(nlh, ct.get()) >= 0) {
        take_labelled(ct.get(), *static_cast<const std::function<void(const LabelledEntry&)>*>(data));
    }
    return MNL_CB_OK;
}

// One filtered dump; false with errno set when it failed.
bool filtered_dump(std::uint16_t port, const std::function<void(const LabelledEntry&)>& each) {
    std::unique_ptr<mnl_socket, int (*)(mnl_socket*)> nl(mnl_socket_open(NETLINK_NETFILTER), mnl_socket_close);
    if (!nl || mnl_socket_bind(nl.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
        return false;
    }
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buffer.data());
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8U) | IPCTNL_MSG_CT_GET;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    const auto sequence = static_cast<unsigned int>(std::time(nullptr));
    nlh->nlmsg_seq = sequence;
    auto* header = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    header->nfgen_family = AF_INET;
    header->version = NFNETLINK_V0;
    header->res_id = 0;
    nlattr* tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
    nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_TCP);
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(port));
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, tuple);
    nlattr* filter = mnl_attr_nest_start(nlh, CTA_FILTER);
    mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, kFilterProtoNumber | kFilterProtoDestinationPort);
    mnl_attr_nest_end(nlh, filter);
    if (mnl_socket_sendto(nl.get(), nlh, nlh->nlmsg_len) < 0) {
        return false;
    }
    const unsigned int portid = mnl_socket_get_portid(nl.get());
    auto* data = const_cast<std::function<void(const LabelledEntry&)>*>(&each);
    for (;;) {
        const ssize_t n = mnl_socket_recvfrom(nl.get(), buffer.data(), buffer.size());
        if (n < 0) {
            return false;
        }
        const int r = mnl_cb_run(buffer.data(), static_cast<std::size_t>(n), sequence, portid, on_filtered, data);
        if (r == MNL_CB_STOP) {
            return true;
        }
        if (r < 0) {
            return false;
        }
    }
}

}  // namespace

bool ConntrackTable::set_tcp_label(std::uint32_t source, std::uint16_t source_port, std::uint32_t destination,
                                   std::uint16_t destination_port, const std::array<std::uint8_t, 16>& label) {
    // The original tuple first (the inside peer opened it), then the reply
    // tuple (a port forward), as find_tcp.
    for (const bool by_reply : {false, true}) {
        // A fresh object: it owns the bitmask, which nfct_copy would share.
        std::unique_ptr<nf_conntrack, Deleter> ct(nfct_new());
        nfct_bitmask* bits = nfct_bitmask_new(static_cast<unsigned int>(label.size() * 8 - 1));
        if (!ct || bits == nullptr) {
            if (bits != nullptr) {
                nfct_bitmask_destroy(bits);
            }
            last_error_ = ENOMEM;
            ++failures_;
            return false;
        }
        for (unsigned int bit = 0; bit < label.size() * 8; ++bit) {
            if ((label[bit / 8] >> (bit % 8)) & 1U) {
                nfct_bitmask_set_bit(bits, bit);
            }
        }
        set_tcp_tuple(ct.get(), by_reply, source, source_port, destination, destination_port);
        nfct_set_attr(ct.get(), ATTR_CONNLABELS, bits);  // ct owns it now
        nfct_callback_register(handle_, NFCT_T_ALL, swallow, nullptr);
        const int r = nfct_query(handle_, NFCT_Q_UPDATE, ct.get());
        const int saved = errno;
        nfct_callback_unregister(handle_);
        if (r == 0) {
            return true;
        }
        if (saved != ENOENT) {
            ++failures_;
            last_error_ = saved;
            return false;
        }
    }
    last_error_ = ENOENT;
    return false;
}

bool ConntrackTable::for_each_labelled_tcp(std::span<const std::uint16_t> ports,
                                           const std::function<void(const LabelledEntry&)>& each) {
    std::vector<LabelledEntry> found;
    const std::function<void(const LabelledEntry&)> keep = [&found](const LabelledEntry& e) { found.push_back(e); };
    for (const std::uint16_t port : ports) {
        if (!filtered_dump(port, keep)) {
            // A kernel without CTA_FILTER refuses it (EINVAL, EOPNOTSUPP):
            // the whole table then, once.
            kernel_filter_used_ = false;
            return for_each_labelled_tcp(each);
        }
    }
    kernel_filter_used_ = true;
    for (const LabelledEntry& e : found) {
        each(e);
    }
    return true;
}

bool ConntrackTable::for_each_labelled_tcp(const std::function<void(const LabelledEntry&)>& each) {
    DumpState state{&each};
    std::uint32_t family = AF_INET;
    nfct_callback_register(handle_, NFCT_T_ALL, on_dumped, &state);
    const int r = nfct_query(handle_, NFCT_Q_DUMP, &family);
    const int saved = errno;
    nfct_callback_unregister(handle_);
    if (r < 0) {
        ++failures_;
        last_error_ = saved;
        return false;
    }
    return true;
}

}  // namespace nfq
