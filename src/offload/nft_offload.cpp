#include "offload/nft_offload.hpp"

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>

#include "pptp/bytes.hpp"

namespace offload {
namespace {

constexpr const char* kInAddr = "in_addr";
constexpr const char* kInKey = "in_key";
constexpr const char* kOutSource = "out_source";
constexpr std::uint32_t kKeyLength = 12;  // address . address . Call ID, each in a 32-bit register
constexpr std::size_t kRecordSize = 68;
constexpr std::uint8_t kRecordVersion = 1;
// A transaction adds at most this many calls, so one stays well inside the
// socket's send buffer.
constexpr std::size_t kCallsPerTransaction = 512;

// nftables' own type numbers (datatype.h), so that `nft list` can show the
// maps: ipv4_addr . ipv4_addr . inet_service. A Call ID is 16 bits as a port
// is; nft cannot print a concatenation with `integer`, which has no length.
constexpr std::uint32_t kTypeIpv4 = 7;
constexpr std::uint32_t kTypeCallId = 13;  // inet_service
constexpr std::uint32_t kTypeBits = 6;
constexpr std::uint32_t kKeyType = (((kTypeIpv4 << kTypeBits) | kTypeIpv4) << kTypeBits) | kTypeCallId;

// Registers: the key in 32-bit registers 0-2 (12 bytes), looked-up values in
// 4 and 5.
constexpr std::uint32_t kRegKey = NFT_REG32_00;
constexpr std::uint32_t kRegAddress = NFT_REG32_04;
constexpr std::uint32_t kRegCallId = NFT_REG32_05;
constexpr std::uint32_t kRegScratch = NFT_REG_1;

void put16(std::uint8_t* p, std::uint16_t v) {
    pptp::store_be16(p, v);
}
void put32(std::uint8_t* p, std::uint32_t v) {
    pptp::store_be32(p, v);
}
void put64(std::uint8_t* p, std::uint64_t v) {
    pptp::store_be32(p, static_cast<std::uint32_t>(v >> 32U));
    pptp::store_be32(p + 4, static_cast<std::uint32_t>(v));
}
std::uint16_t get16(const std::uint8_t* p) {
    return pptp::load_be16(p);
}
std::uint32_t get32(const std::uint8_t* p) {
    return pptp::load_be32(p);
}
std::uint64_t get64(const std::uint8_t* p) {
    return (static_cast<std::uint64_t>(pptp::load_be32(p)) << 32U) | pptp::load_be32(p + 4);
}

using Key = std::array<std::uint8_t, kKeyLength>;

Key make_key(std::uint32_t source, std::uint32_t destination, std::uint16_t call_id) {
    Key key{};
    put32(key.data(), source);
    put32(key.data() + 4, destination);
    put16(key.data() + 8, call_id);
    return key;
}
Key inbound_key(const CallRecord& r) {
    return make_key(r.outside_address, r.public_address, r.public_call_id);
}
Key outbound_key(const CallRecord& r) {
    return make_key(r.inside_address, r.outside_address, r.outside_call_id);
}

struct TableDeleter {
    void operator()(nftnl_table* t) const { nftnl_table_free(t); }
};
struct ChainDeleter {
    void operator()(nftnl_chain* c) const { nftnl_chain_free(c); }
};
struct SetDeleter {
    void operator()(nftnl_set* s) const { nftnl_set_free(s); }
};
struct RuleDeleter {
    void operator()(nftnl_rule* r) const { nftnl_rule_free(r); }
};
using TablePtr = std::unique_ptr<nftnl_table, TableDeleter>;
using ChainPtr = std::unique_ptr<nftnl_chain, ChainDeleter>;
using SetPtr = std::unique_ptr<nftnl_set, SetDeleter>;
using RulePtr = std::unique_ptr<nftnl_rule, RuleDeleter>;

SetPtr named_set(const std::string& table, const char* name) {
    SetPtr s(nftnl_set_alloc());
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.c_str());
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name);
    nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_IPV4);
    return s;
}

void add_element(nftnl_set* s, const Key& key, const void* data, std::uint32_t data_length,
                 const std::vector<std::uint8_t>* userdata = nullptr) {
    nftnl_set_elem* e = nftnl_set_elem_alloc();
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key.data(), kKeyLength);
    if (data != nullptr) {
        nftnl_set_elem_set(e, NFTNL_SET_ELEM_DATA, data, data_length);
    }
    if (userdata != nullptr) {
        nftnl_set_elem_set(e, NFTNL_SET_ELEM_USERDATA, userdata->data(), static_cast<std::uint32_t>(userdata->size()));
    }
    nftnl_set_elem_add(s, e);
}

// Rule expressions, the few kinds the chains use.
class RuleBuilder {
public:
    RuleBuilder(const std::string& table, const char* chain) : rule_(nftnl_rule_alloc()) {
        nftnl_rule_set_str(rule_.get(), NFTNL_RULE_TABLE, table.c_str());
        nftnl_rule_set_str(rule_.get(), NFTNL_RULE_CHAIN, chain);
        nftnl_rule_set_u32(rule_.get(), NFTNL_RULE_FAMILY, NFPROTO_IPV4);
    }
    RuleBuilder& load(std::uint32_t base, std::uint32_t offset, std::uint32_t length, std::uint32_t reg) {
        nftnl_expr* e = nftnl_expr_alloc("payload");
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, length);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, reg);
        return add(e);
    }
    // Writes `length` bytes from `reg`; an IPv4 address write fixes the
    // header checksum (GRE of PPTP has none).
    RuleBuilder& write(std::uint32_t base, std::uint32_t offset, std::uint32_t length, std::uint32_t reg,
                       bool ip_checksum) {
        nftnl_expr* e = nftnl_expr_alloc("payload");
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, length);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_SREG, reg);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_CSUM_TYPE,
                           ip_checksum ? NFT_PAYLOAD_CSUM_INET : NFT_PAYLOAD_CSUM_NONE);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_CSUM_OFFSET, ip_checksum ? 10 : 0);
        nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_FLAGS, 0);
        return add(e);
    }
    RuleBuilder& equals(std::uint32_t reg, const void* data, std::uint32_t length) {
        nftnl_expr* e = nftnl_expr_alloc("cmp");
        nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, reg);
        nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, NFT_CMP_EQ);
        nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, length);
        return add(e);
    }
    // reg = (reg & mask) ^ xor, `length` bytes.
    RuleBuilder& mask(std::uint32_t reg, const void* mask, const void* xor_value, std::uint32_t length) {
        nftnl_expr* e = nftnl_expr_alloc("bitwise");
        nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, reg);
        nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, reg);
        nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, length);
        nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, mask, length);
        nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, xor_value, length);
        return add(e);
    }
    RuleBuilder& meta_load(std::uint32_t key, std::uint32_t reg) {
        nftnl_expr* e = nftnl_expr_alloc("meta");
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, reg);
        return add(e);
    }
    RuleBuilder& meta_store(std::uint32_t key, std::uint32_t reg) {
        nftnl_expr* e = nftnl_expr_alloc("meta");
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
        nftnl_expr_set_u32(e, NFTNL_EXPR_META_SREG, reg);
        return add(e);
    }
    RuleBuilder& lookup(const char* set, std::uint32_t set_id, std::uint32_t key_reg, std::uint32_t value_reg) {
        nftnl_expr* e = nftnl_expr_alloc("lookup");
        nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set);
        nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, set_id);
        nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, key_reg);
        nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_DREG, value_reg);
        return add(e);
    }
    // mark = (mark & ~bit) | (set ? bit : 0)
    RuleBuilder& mark_bit(std::uint32_t bit, bool set) {
        const std::uint32_t keep = ~bit;
        const std::uint32_t value = set ? bit : 0;
        meta_load(NFT_META_MARK, kRegScratch);
        mask(kRegScratch, &keep, &value, sizeof(keep));
        return meta_store(NFT_META_MARK, kRegScratch);
    }
    RuleBuilder& gre_only() {
        const std::uint8_t gre = 47;
        load(NFT_PAYLOAD_NETWORK_HEADER, 9, 1, kRegScratch);
        return equals(kRegScratch, &gre, 1);
    }
    // Enhanced GRE (version 1, key present, no checksum or routing) carrying
    // PPP: what the agent itself accepts as PPTP GRE. Fragments never
    // match (the kernel gives them no transport header).
    RuleBuilder& pptp_gre() {
        gre_only();
        const std::array<std::uint8_t, 2> flags_mask{0xEF, 0x7F};  // all but S and A
        const std::array<std::uint8_t, 2> flags{0x20, 0x01};       // K, version 1
        const std::array<std::uint8_t, 2> none{0, 0};
        const std::array<std::uint8_t, 2> ppp{0x88, 0x0B};
        load(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, kRegScratch);
        mask(kRegScratch, flags_mask.data(), none.data(), 2);
        equals(kRegScratch, flags.data(), 2);
        load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, kRegScratch);
        return equals(kRegScratch, ppp.data(), 2);
    }
    RuleBuilder& interface(std::uint32_t meta_key, const std::string& name) {
        std::array<char, IFNAMSIZ> padded{};
        std::memcpy(padded.data(), name.data(), std::min(name.size(), padded.size() - 1));
        meta_load(meta_key, kRegScratch);
        return equals(kRegScratch, padded.data(), static_cast<std::uint32_t>(padded.size()));
    }
    // The map key, source . destination . Call ID, in the key registers.
    RuleBuilder& gre_key() {
        load(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, kRegKey);
        load(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, kRegKey + 1);
        return load(NFT_PAYLOAD_TRANSPORT_HEADER, 6, 2, kRegKey + 2);
    }
    nftnl_rule* get() { return rule_.get(); }

private:
    RuleBuilder& add(nftnl_expr* e) {
        nftnl_rule_add_expr(rule_.get(), e);
        return *this;
    }
    RulePtr rule_;
};

// The three maps of one transaction, and a call's elements in them.
struct CallMaps {
    SetPtr address;
    SetPtr call_id;
    SetPtr source;
    explicit CallMaps(const std::string& table)
        : address(named_set(table, kInAddr)), call_id(named_set(table, kInKey)), source(named_set(table, kOutSource)) {}
    void add(const CallRecord& r) {
        std::array<std::uint8_t, 4> inside{};
        std::array<std::uint8_t, 2> inside_id{};
        std::array<std::uint8_t, 4> public_address{};
        put32(inside.data(), r.inside_address);
        put16(inside_id.data(), r.inside_call_id);
        put32(public_address.data(), r.public_address);
        const auto record = encode_record(r);
        // The record rides on in_addr, which the periodic counter reads do
        // not dump: they stay small.
        add_element(address.get(), inbound_key(r), inside.data(), 4, &record);
        add_element(call_id.get(), inbound_key(r), inside_id.data(), 2);
        add_element(source.get(), outbound_key(r), public_address.data(), 4);
    }
    void remove(const CallRecord& r) {
        add_element(address.get(), inbound_key(r), nullptr, 0);
        add_element(call_id.get(), inbound_key(r), nullptr, 0);
        add_element(source.get(), outbound_key(r), nullptr, 0);
    }
    [[nodiscard]] std::array<nftnl_set*, 3> all() const { return {address.get(), call_id.get(), source.get()}; }
};

}  // namespace

std::vector<std::uint8_t> encode_record(const CallRecord& r) {
    std::vector<std::uint8_t> out(kRecordSize, 0);
    std::uint8_t* p = out.data();
    p[0] = 'P';
    p[1] = 'F';
    p[2] = kRecordVersion;
    p[3] = static_cast<std::uint8_t>((r.outgoing ? 1U : 0U) | (r.opened_from_outside ? 2U : 0U) |
                                     (r.pns_side >= 0 ? 4U : 0U) | (r.pns_side == 1 ? 8U : 0U));
    put32(p + 4, r.inside_address);
    put32(p + 8, r.outside_address);
    put32(p + 12, r.public_address);
    put16(p + 16, r.inside_call_id);
    put16(p + 18, r.public_call_id);
    put16(p + 20, r.outside_call_id);
    put16(p + 22, r.inside_port);
    put16(p + 24, r.outside_port);
    put64(p + 28, static_cast<std::uint64_t>(r.created_ns));
    put64(p + 36, r.base_packets_in);
    put64(p + 44, r.base_bytes_in);
    put64(p + 52, r.base_packets_out);
    put64(p + 60, r.base_bytes_out);
    return out;
}

bool decode_record(const std::uint8_t* p, std::size_t size, CallRecord& r) {
    if (p == nullptr || size != kRecordSize || p[0] != 'P' || p[1] != 'F' || p[2] != kRecordVersion) {
        return false;
    }
    r.outgoing = (p[3] & 1U) != 0;
    r.opened_from_outside = (p[3] & 2U) != 0;
    r.pns_side = static_cast<std::int8_t>((p[3] & 4U) == 0 ? -1 : (p[3] & 8U) != 0 ? 1 : 0);
    r.inside_address = get32(p + 4);
    r.outside_address = get32(p + 8);
    r.public_address = get32(p + 12);
    r.inside_call_id = get16(p + 16);
    r.public_call_id = get16(p + 18);
    r.outside_call_id = get16(p + 20);
    r.inside_port = get16(p + 22);
    r.outside_port = get16(p + 24);
    r.created_ns = static_cast<std::int64_t>(get64(p + 28));
    r.base_packets_in = get64(p + 36);
    r.base_bytes_in = get64(p + 44);
    r.base_packets_out = get64(p + 52);
    r.base_bytes_out = get64(p + 60);
    return true;
}

// Netlink messages of one nf_tables transaction, in one buffer.
struct NftOffload::Batch {
    std::vector<char> data;
    std::uint32_t last_sequence = 0;
    std::size_t last_offset = 0;

    // Room for one message of at most `room` bytes at the tail.
    char* tail(std::size_t room) {
        data.resize(used + room);
        return data.data() + used;
    }
    void advance(const nlmsghdr* nlh) {
        used += NLMSG_ALIGN(nlh->nlmsg_len);
        data.resize(used);
    }
    std::size_t used = 0;
};

NftOffload::NftOffload(OffloadConfig config) : config_(std::move(config)), buffer_(std::size_t{256} * 1024U) {
    if (config_.outside_interfaces.empty()) {
        throw OffloadError("offload: an outside interface name is needed");
    }
    for (const auto& name : config_.outside_interfaces) {
        if (name.empty() || name.size() >= IFNAMSIZ) {
            throw OffloadError("offload: invalid interface name '" + name + "'");
        }
    }
    if (config_.mark == 0 || (config_.mark & (config_.mark - 1)) != 0) {
        throw OffloadError("offload: the mark must be a single bit");
    }
    socket_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (socket_ == nullptr || mnl_socket_bind(socket_, 0, MNL_SOCKET_AUTOPID) < 0) {
        const std::string why = std::strerror(errno);
        if (socket_ != nullptr) {
            mnl_socket_close(socket_);
        }
        throw OffloadError("offload: cannot open an nf_tables netlink socket: " + why);
    }
    port_id_ = mnl_socket_get_portid(socket_);
    // A reply always comes (each transaction asks for an ACK); the timeout
    // only keeps a kernel that does not answer from stalling the agent.
    timeval timeout{1, 0};
    setsockopt(mnl_socket_get_fd(socket_), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    int buffer = 4 * 1024 * 1024;
    setsockopt(mnl_socket_get_fd(socket_), SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof(buffer));
    setsockopt(mnl_socket_get_fd(socket_), SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
}

NftOffload::~NftOffload() {
    if (socket_ != nullptr) {
        mnl_socket_close(socket_);
    }
}

int NftOffload::commit(Batch& batch) {
    ++transactions_;
    // Only the last message asks for an ACK: errors come anyway, and the
    // ACK says the transaction is over.
    reinterpret_cast<nlmsghdr*>(batch.data.data() + batch.last_offset)->nlmsg_flags |= NLM_F_ACK;
    const std::uint32_t begin_seq = ++sequence_;
    // Begin and end frame the messages: build them around what is there.
    Batch framed;
    nftnl_batch_begin(framed.tail(MNL_NLMSG_HDRLEN + 64), begin_seq);
    framed.advance(reinterpret_cast<nlmsghdr*>(framed.data.data()));
    framed.data.insert(framed.data.end(), batch.data.begin(), batch.data.begin() + static_cast<long>(batch.used));
    framed.used += batch.used;
    char* end = framed.tail(MNL_NLMSG_HDRLEN + 64);
    nftnl_batch_end(end, ++sequence_);
    framed.advance(reinterpret_cast<nlmsghdr*>(end));
    if (mnl_socket_sendto(socket_, framed.data.data(), framed.used) < 0) {
        return errno;
    }
    // Errors come for the messages that failed, an ACK for the last one.
    int first_error = 0;
    for (;;) {
        const ssize_t n = mnl_socket_recvfrom(socket_, buffer_.data(), buffer_.size());
        if (n < 0) {
            return errno == EAGAIN ? ETIMEDOUT : errno;
        }
        auto left = static_cast<int>(n);
        for (auto* nlh = reinterpret_cast<nlmsghdr*>(buffer_.data()); mnl_nlmsg_ok(nlh, left);
             nlh = mnl_nlmsg_next(nlh, &left)) {
            if (nlh->nlmsg_type == NLMSG_ERROR) {
                const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
                if (err->error != 0 && first_error == 0) {
                    first_error = -err->error;
                }
                // The last message's ACK, or an error for the whole batch.
                if (nlh->nlmsg_seq == batch.last_sequence || nlh->nlmsg_seq == begin_seq) {
                    return first_error;
                }
            }
        }
    }
}

namespace {

// Appends one message built by `fill` (a libnftnl *_nlmsg_build_payload).
template <typename Batch, typename Fill>
void append(Batch& batch, std::uint16_t type, std::uint16_t flags, std::uint32_t seq, std::size_t room, Fill fill) {
    auto* nlh = nftnl_nlmsg_build_hdr(batch.tail(room), type, NFPROTO_IPV4, flags, seq);
    fill(nlh);
    batch.last_offset = batch.used;
    batch.advance(nlh);
    batch.last_sequence = seq;
}

}  // namespace

bool NftOffload::table_exists() {
    TablePtr t(nftnl_table_alloc());
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, config_.table.c_str());
    const std::uint32_t seq = ++sequence_;
    auto* nlh = nftnl_nlmsg_build_hdr(buffer_.data(), NFT_MSG_GETTABLE, NFPROTO_IPV4, NLM_F_ACK, seq);
    nftnl_table_nlmsg_build_payload(nlh, t.get());
    if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
        throw OffloadError(std::string("offload: netlink send failed: ") + std::strerror(errno));
    }
    for (;;) {
        const ssize_t n = mnl_socket_recvfrom(socket_, buffer_.data(), buffer_.size());
        if (n < 0) {
            throw OffloadError(std::string("offload: netlink receive failed: ") + std::strerror(errno));
        }
        const int r = mnl_cb_run(buffer_.data(), static_cast<std::size_t>(n), seq, port_id_, nullptr, nullptr);
        if (r < 0) {
            if (errno == ENOENT) {
                return false;
            }
            throw OffloadError(std::string("offload: cannot read the table: ") + std::strerror(errno));
        }
        if (r == MNL_CB_STOP) {
            return true;
        }
    }
}

namespace {

struct ElementContext {
    const std::function<void(const void*)>* each;
    const std::string* table;
    const char* set;
};

int on_elements(const nlmsghdr* message, void* data) {
    auto* ctx = static_cast<ElementContext*>(data);
    SetPtr part = named_set(*ctx->table, ctx->set);
    if (nftnl_set_elems_nlmsg_parse(message, part.get()) < 0) {
        return MNL_CB_ERROR;
    }
    nftnl_set_elem_foreach(
        part.get(),
        [](nftnl_set_elem* e, void* d) -> int {
            (*static_cast<ElementContext*>(d)->each)(e);
            return 0;
        },
        ctx);
    return MNL_CB_OK;
}

}  // namespace

int NftOffload::get_element(const char* set_name, const void* key, const std::function<void(const void*)>& each) {
    SetPtr query = named_set(config_.table, set_name);
    if (key != nullptr) {
        add_element(query.get(), *static_cast<const Key*>(key), nullptr, 0);
    }
    const std::uint32_t seq = ++sequence_;
    const std::uint16_t flags = key != nullptr ? NLM_F_ACK : NLM_F_DUMP;
    auto* nlh = nftnl_nlmsg_build_hdr(buffer_.data(), NFT_MSG_GETSETELEM, NFPROTO_IPV4, flags, seq);
    nftnl_set_elems_nlmsg_build_payload(nlh, query.get());
    if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
        return errno;
    }
    ElementContext context{&each, &config_.table, set_name};
    for (;;) {
        const ssize_t n = mnl_socket_recvfrom(socket_, buffer_.data(), buffer_.size());
        if (n < 0) {
            return errno;
        }
        const int r = mnl_cb_run(buffer_.data(), static_cast<std::size_t>(n), seq, port_id_, on_elements, &context);
        if (r < 0) {
            return errno;
        }
        if (r == MNL_CB_STOP) {
            return 0;
        }
    }
}

void NftOffload::dump_elements(const char* set_name, const std::function<void(const void*)>& each) {
    if (const int error = get_element(set_name, nullptr, each); error != 0) {
        throw OffloadError(std::string("offload: cannot read map ") + set_name + ": " + std::strerror(error));
    }
}

namespace {

ElementCounters counters_of(nftnl_set_elem* e) {
    ElementCounters c;
    nftnl_set_elem_expr_foreach(
        e,
        [](nftnl_expr* expr, void* data) -> int {
            if (std::strcmp(nftnl_expr_get_str(expr, NFTNL_EXPR_NAME), "counter") == 0) {
                auto* out = static_cast<ElementCounters*>(data);
                out->packets = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_PACKETS);
                out->bytes = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_BYTES);
            }
            return 0;
        },
        &c);
    return c;
}

bool key_of(nftnl_set_elem* e, Key& key) {
    std::uint32_t length = 0;
    const void* data = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &length);
    if (data == nullptr || length != kKeyLength) {
        return false;
    }
    std::memcpy(key.data(), data, kKeyLength);
    return true;
}

}  // namespace

std::vector<OffloadedCall> NftOffload::existing_calls() {
    std::vector<OffloadedCall> calls;
    if (!table_exists()) {
        return calls;
    }
    std::map<Key, std::pair<std::uint16_t, ElementCounters>> inside_id;
    std::map<Key, std::pair<std::uint32_t, ElementCounters>> outbound;
    dump_elements(kInAddr, [&](const void* p) {
        auto* e = static_cast<nftnl_set_elem*>(const_cast<void*>(p));
        std::uint32_t length = 0;
        const auto* data = static_cast<const std::uint8_t*>(nftnl_set_elem_get(e, NFTNL_SET_ELEM_USERDATA, &length));
        CallRecord record;
        Key key{};
        std::uint32_t value_length = 0;
        const auto* value = static_cast<const std::uint8_t*>(nftnl_set_elem_get(e, NFTNL_SET_ELEM_DATA, &value_length));
        if (!key_of(e, key) || !decode_record(data, length, record) || key != inbound_key(record) || value == nullptr ||
            value_length != 4 || get32(value) != record.inside_address) {
            return;
        }
        calls.push_back(OffloadedCall{record, {}, {}});
    });
    dump_elements(kInKey, [&](const void* p) {
        auto* e = static_cast<nftnl_set_elem*>(const_cast<void*>(p));
        Key key{};
        std::uint32_t length = 0;
        const auto* value = static_cast<const std::uint8_t*>(nftnl_set_elem_get(e, NFTNL_SET_ELEM_DATA, &length));
        if (key_of(e, key) && value != nullptr && length == 2) {
            inside_id[key] = std::make_pair(get16(value), counters_of(e));
        }
    });
    dump_elements(kOutSource, [&](const void* p) {
        auto* e = static_cast<nftnl_set_elem*>(const_cast<void*>(p));
        Key key{};
        std::uint32_t length = 0;
        const auto* value = static_cast<const std::uint8_t*>(nftnl_set_elem_get(e, NFTNL_SET_ELEM_DATA, &length));
        if (key_of(e, key) && value != nullptr && length == 4) {
            outbound[key] = std::make_pair(get32(value), counters_of(e));
        }
    });
    // A call counts only when its three elements agree with its record.
    std::vector<OffloadedCall> whole;
    for (OffloadedCall& call : calls) {
        const auto in = inside_id.find(inbound_key(call.record));
        const auto out = outbound.find(outbound_key(call.record));
        if (in != inside_id.end() && in->second.first == call.record.inside_call_id && out != outbound.end() &&
            out->second.first == call.record.public_address) {
            call.in = in->second.second;
            call.out = out->second.second;
            whole.push_back(call);
        }
    }
    return whole;
}

void NftOffload::install(const std::vector<CallRecord>& keep) {
    const std::string& table = config_.table;
    Batch batch;
    const bool existed = table_exists();
    TablePtr t(nftnl_table_alloc());
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table.c_str());
    nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_IPV4);
    // Replaced whole, in the same transaction: whatever an earlier version
    // left (other chains, other map types) goes, and packets never see a
    // table half built.
    if (existed) {
        append(batch, NFT_MSG_DELTABLE, 0, ++sequence_, 1024,
               [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); });
    }
    append(batch, NFT_MSG_NEWTABLE, NLM_F_CREATE, ++sequence_, 1024,
           [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); });

    struct MapSpec {
        const char* name;
        std::uint32_t data_type;
        std::uint32_t data_length;
        bool counters;
        std::uint32_t id;
    };
    const std::array<MapSpec, 3> maps{
        {{kInAddr, kTypeIpv4, 4, false, 1}, {kInKey, kTypeCallId, 2, true, 2}, {kOutSource, kTypeIpv4, 4, true, 3}}};
    for (const MapSpec& m : maps) {
        SetPtr s = named_set(table, m.name);
        nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_MAP);
        nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, kKeyType);
        nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, kKeyLength);
        nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_TYPE, m.data_type);
        nftnl_set_set_u32(s.get(), NFTNL_SET_DATA_LEN, m.data_length);
        nftnl_set_set_u32(s.get(), NFTNL_SET_ID, m.id);
        nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, config_.max_calls);
        if (m.counters) {
            nftnl_set_add_expr(s.get(), nftnl_expr_alloc("counter"));
        }
        append(batch, NFT_MSG_NEWSET, NLM_F_CREATE, ++sequence_, 4096,
               [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, s.get()); });
    }

    struct ChainSpec {
        const char* name;
        std::uint32_t hook;
        std::int32_t priority;
    };
    const std::array<ChainSpec, 3> chains{{{"inbound", NF_INET_PRE_ROUTING, -180},
                                           {"outbound", NF_INET_POST_ROUTING, -180},
                                           {"outbound_done", NF_INET_POST_ROUTING, -140}}};
    for (const ChainSpec& c : chains) {
        ChainPtr chain(nftnl_chain_alloc());
        nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_TABLE, table.c_str());
        nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_NAME, c.name);
        nftnl_chain_set_str(chain.get(), NFTNL_CHAIN_TYPE, "filter");
        nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_HOOKNUM, c.hook);
        nftnl_chain_set_s32(chain.get(), NFTNL_CHAIN_PRIO, c.priority);
        nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
        nftnl_chain_set_u32(chain.get(), NFTNL_CHAIN_FAMILY, NFPROTO_IPV4);
        append(batch, NFT_MSG_NEWCHAIN, NLM_F_CREATE, ++sequence_, 1024,
               [&](nlmsghdr* nlh) { nftnl_chain_nlmsg_build_payload(nlh, chain.get()); });
    }

    auto add_rule = [&](RuleBuilder& rule) {
        append(batch, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, ++sequence_, 8192,
               [&](nlmsghdr* nlh) { nftnl_rule_nlmsg_build_payload(nlh, rule.get()); });
    };
    // Only the offload rule below sets the bit: a packet that arrives with it
    // set must not skip the queue.
    // Outbound GRE had the bit cleared in prerouting (here, and by the rule
    // set's raw rule): the outbound chain needs no clear of its own.
    for (const char* chain : {"inbound", "outbound_done"}) {
        RuleBuilder clear(table, chain);
        clear.gre_only().mark_bit(config_.mark, false);
        add_rule(clear);
    }
    // One rule per outside interface and way.
    for (const std::string& outside : config_.outside_interfaces) {
        RuleBuilder in(table, "inbound");
        // The protocol first: every other packet of the box leaves here at
        // once.
        in.pptp_gre()
            .interface(NFT_META_IIFNAME, outside)
            .gre_key()
            .lookup(kInAddr, 1, kRegKey, kRegAddress)
            .lookup(kInKey, 2, kRegKey, kRegCallId)
            .write(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, kRegAddress, true)
            .write(NFT_PAYLOAD_TRANSPORT_HEADER, 6, 2, kRegCallId, false)
            .mark_bit(config_.mark, true);
        add_rule(in);
        RuleBuilder out(table, "outbound");
        out.pptp_gre()
            .interface(NFT_META_OIFNAME, outside)
            .gre_key()
            .lookup(kOutSource, 3, kRegKey, kRegAddress)
            .write(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, kRegAddress, true)
            .mark_bit(config_.mark, true);
        add_rule(out);
    }

    // The kept calls: with the table in the first transaction, the rest in
    // more (their GRE meanwhile goes to the queue, which knows them too).
    std::size_t next = 0;
    auto add_some = [&](Batch& b) {
        CallMaps elements(table);
        for (std::size_t n = 0; next < keep.size() && n < kCallsPerTransaction; ++n, ++next) {
            elements.add(keep[next]);
        }
        for (nftnl_set* s : elements.all()) {
            append(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, ++sequence_, 64 + kCallsPerTransaction * 256,
                   [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s); });
        }
    };
    if (!keep.empty()) {
        add_some(batch);
    }
    if (const int error = commit(batch); error != 0) {
        throw OffloadError("offload: cannot create table ip " + table + ": " + std::strerror(error));
    }
    while (next < keep.size()) {
        Batch more;
        add_some(more);
        if (const int error = commit(more); error != 0) {
            throw OffloadError("offload: cannot restore the offloaded calls: " + std::string(std::strerror(error)));
        }
    }
}

int NftOffload::add(const CallRecord& r) {
    Batch batch;
    CallMaps maps(config_.table);
    maps.add(r);
    // EXCL: an element left from an earlier call must not stand in for this one.
    for (nftnl_set* s : maps.all()) {
        append(batch, NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, ++sequence_, 1024,
               [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s); });
    }
    return commit(batch);
}

int NftOffload::remove(const CallRecord& r) {
    Batch batch;
    CallMaps maps(config_.table);
    maps.remove(r);
    for (nftnl_set* s : maps.all()) {
        append(batch, NFT_MSG_DELSETELEM, 0, ++sequence_, 1024,
               [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s); });
    }
    return commit(batch);
}

CounterSnapshot NftOffload::read_counters() {
    CounterSnapshot snapshot;
    auto collect = [](std::vector<KeyedCounters>& into) {
        return [&into](const void* p) {
            auto* e = static_cast<nftnl_set_elem*>(const_cast<void*>(p));
            Key key{};
            if (key_of(e, key)) {
                into.push_back(
                    KeyedCounters{get32(key.data()), get32(key.data() + 4), get16(key.data() + 8), counters_of(e)});
            }
        };
    };
    dump_elements(kInKey, collect(snapshot.inbound));
    dump_elements(kOutSource, collect(snapshot.outbound));
    return snapshot;
}

int NftOffload::remove_inbound(std::uint32_t outside, std::uint32_t public_address, std::uint16_t public_id) {
    Batch batch;
    CallMaps maps(config_.table);
    const Key key = make_key(outside, public_address, public_id);
    add_element(maps.address.get(), key, nullptr, 0);
    add_element(maps.call_id.get(), key, nullptr, 0);
    for (nftnl_set* s : {maps.address.get(), maps.call_id.get()}) {
        append(batch, NFT_MSG_DELSETELEM, 0, ++sequence_, 1024,
               [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s); });
    }
    return commit(batch);
}

int NftOffload::remove_outbound(std::uint32_t inside, std::uint32_t outside, std::uint16_t outside_id) {
    Batch batch;
    CallMaps maps(config_.table);
    add_element(maps.source.get(), make_key(inside, outside, outside_id), nullptr, 0);
    append(batch, NFT_MSG_DELSETELEM, 0, ++sequence_, 1024,
           [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, maps.source.get()); });
    return commit(batch);
}

int NftOffload::read_call(const CallRecord& record, ElementCounters& in, ElementCounters& out) {
    const Key inbound = inbound_key(record);
    const Key outbound = outbound_key(record);
    int error = get_element(
        kInKey, &inbound, [&](const void* p) { in = counters_of(static_cast<nftnl_set_elem*>(const_cast<void*>(p))); });
    if (error == 0) {
        error = get_element(kOutSource, &outbound, [&](const void* p) {
            out = counters_of(static_cast<nftnl_set_elem*>(const_cast<void*>(p)));
        });
    }
    return error;
}

int NftOffload::remove_table() {
    Batch batch;
    TablePtr t(nftnl_table_alloc());
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, config_.table.c_str());
    nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_IPV4);
    append(batch, NFT_MSG_DELTABLE, 0, ++sequence_, 1024,
           [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); });
    return commit(batch);
}

}  // namespace offload
