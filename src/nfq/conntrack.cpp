#include "nfq/conntrack.hpp"

#include <arpa/inet.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstring>
#include <string>

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

struct Answer {
    ConntrackTuples* out = nullptr;
    bool found = false;
};

int on_entry(enum nf_conntrack_msg_type /*type*/, struct nf_conntrack* ct, void* data) {
    auto* answer = static_cast<Answer*>(data);
    answer->out->original_source = ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC));
    answer->out->original_destination = ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST));
    answer->out->reply_source = ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC));
    answer->out->reply_destination = ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST));
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
    nfct_set_attr_u8(ct, by_reply ? ATTR_REPL_L3PROTO : ATTR_ORIG_L3PROTO, AF_INET);
    nfct_set_attr_u8(ct, by_reply ? ATTR_REPL_L4PROTO : ATTR_ORIG_L4PROTO, IPPROTO_TCP);
    nfct_set_attr_u32(ct, by_reply ? ATTR_REPL_IPV4_SRC : ATTR_ORIG_IPV4_SRC, htonl(source));
    nfct_set_attr_u32(ct, by_reply ? ATTR_REPL_IPV4_DST : ATTR_ORIG_IPV4_DST, htonl(destination));
    nfct_set_attr_u16(ct, by_reply ? ATTR_REPL_PORT_SRC : ATTR_ORIG_PORT_SRC, htons(source_port));
    nfct_set_attr_u16(ct, by_reply ? ATTR_REPL_PORT_DST : ATTR_ORIG_PORT_DST, htons(destination_port));
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

int on_dumped(enum nf_conntrack_msg_type /*type*/, struct nf_conntrack* ct, void* data) {
    if (nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) != IPPROTO_TCP) {
        return NFCT_CB_CONTINUE;
    }
    const auto* bits = static_cast<const nfct_bitmask*>(nfct_get_attr(ct, ATTR_CONNLABELS));
    if (bits == nullptr) {
        return NFCT_CB_CONTINUE;
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
        return NFCT_CB_CONTINUE;
    }
    entry.tuples.original_source = ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC));
    entry.tuples.original_destination = ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST));
    entry.tuples.reply_source = ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC));
    entry.tuples.reply_destination = ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST));
    entry.original_source_port = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_SRC));
    entry.original_destination_port = ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST));
    entry.reply_source_port = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC));
    entry.reply_destination_port = ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
    (*static_cast<DumpState*>(data)->each)(entry);
    return NFCT_CB_CONTINUE;
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
        nfct_set_attr_u8(ct.get(), by_reply ? ATTR_REPL_L3PROTO : ATTR_ORIG_L3PROTO, AF_INET);
        nfct_set_attr_u8(ct.get(), by_reply ? ATTR_REPL_L4PROTO : ATTR_ORIG_L4PROTO, IPPROTO_TCP);
        nfct_set_attr_u32(ct.get(), by_reply ? ATTR_REPL_IPV4_SRC : ATTR_ORIG_IPV4_SRC, htonl(source));
        nfct_set_attr_u32(ct.get(), by_reply ? ATTR_REPL_IPV4_DST : ATTR_ORIG_IPV4_DST, htonl(destination));
        nfct_set_attr_u16(ct.get(), by_reply ? ATTR_REPL_PORT_SRC : ATTR_ORIG_PORT_SRC, htons(source_port));
        nfct_set_attr_u16(ct.get(), by_reply ? ATTR_REPL_PORT_DST : ATTR_ORIG_PORT_DST, htons(destination_port));
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
