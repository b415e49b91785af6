#include "nfq/queue.hpp"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

extern "C" {
#include <libnetfilter_queue/libnetfilter_queue.h>
}

namespace nfq {
namespace {

// Room for one verdict message carrying a full 64 KiB payload.
constexpr std::size_t kMaxVerdictMessage = 0xFFFF + 512;
// Flush before a batch grows past what a netlink socket accepts in one sendto.
constexpr std::size_t kVerdictBatchBytes = std::size_t{128} * 1024;

std::string errno_text(int err) {
    return std::strerror(err);
}

}  // namespace

Queue::Queue(const QueueConfig& config)
    : config_(config),
      receive_buffer_(0xFFFF + (MNL_SOCKET_BUFFER_SIZE / 2)),
      verdict_buffer_(kVerdictBatchBytes + kMaxVerdictMessage) {
    socket_ = mnl_socket_open(NETLINK_NETFILTER);
    if (socket_ == nullptr) {
        throw QueueError("cannot open netfilter netlink socket: " + errno_text(errno));
    }
    try {
        if (mnl_socket_bind(socket_, 0, MNL_SOCKET_AUTOPID) < 0) {
            throw QueueError("cannot bind netlink socket: " + errno_text(errno));
        }
        port_id_ = mnl_socket_get_portid(socket_);
        configure();
        // A queued packet is at most 64 KiB (reassembled), plus netlink framing.
        slot_size_ = 0xFFFF + 1024;
        burst_storage_.resize(slot_size_ * config_.max_burst);
        burst_headers_.resize(config_.max_burst);
        burst_iovecs_.resize(config_.max_burst);
        for (std::size_t i = 0; i < config_.max_burst; ++i) {
            burst_iovecs_[i] = iovec{burst_storage_.data() + i * slot_size_, slot_size_};
            burst_headers_[i] = mmsghdr{};
            burst_headers_[i].msg_hdr.msg_iov = &burst_iovecs_[i];
            burst_headers_[i].msg_hdr.msg_iovlen = 1;
        }
    } catch (...) {
        mnl_socket_close(socket_);
        throw;
    }
}

Queue::~Queue() {
    if (socket_ == nullptr) {
        return;
    }
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* nlh = nfq_nlmsg_put(buffer.data(), NFQNL_MSG_CONFIG, config_.queue_number);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_UNBIND);
    mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len);
    mnl_socket_close(socket_);
}

int Queue::fd() const noexcept {
    return mnl_socket_get_fd(socket_);
}

void Queue::send_config_and_wait_ack(std::vector<char>& buffer, const char* what) {
    auto* nlh = reinterpret_cast<nlmsghdr*>(buffer.data());
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = static_cast<unsigned int>(time(nullptr));
    const unsigned int seq = nlh->nlmsg_seq;
    if (mnl_socket_sendto(socket_, nlh, nlh->nlmsg_len) < 0) {
        throw QueueError(std::string("cannot ") + what + ": " + errno_text(errno));
    }
    const ssize_t n = mnl_socket_recvfrom(socket_, receive_buffer_.data(), receive_buffer_.size());
    if (n < 0) {
        throw QueueError(std::string("cannot ") + what + ": " + errno_text(errno));
    }
    if (mnl_cb_run(receive_buffer_.data(), static_cast<size_t>(n), seq, port_id_, nullptr, nullptr) < 0) {
        const int err = errno;
        std::string reason = errno_text(err);
        // The kernel answers EPERM both to a process without CAP_NET_ADMIN and
        // to a second process binding a queue that is in use.
        if (err == EBUSY || (err == EPERM && geteuid() == 0)) {
            reason = "queue " + std::to_string(config_.queue_number) +
                     " is already bound by another process (another pptp-fixupd?)";
        } else if (err == EPERM) {
            reason = "permission denied: needs CAP_NET_ADMIN, or the queue is bound by another process";
        }
        throw QueueError(std::string("cannot ") + what + ": " + reason);
    }
}

void Queue::configure() {
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);

    nlmsghdr* nlh = nfq_nlmsg_put(buffer.data(), NFQNL_MSG_CONFIG, config_.queue_number);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    send_config_and_wait_ack(buffer, ("bind NFQUEUE " + std::to_string(config_.queue_number)).c_str());

    nlh = nfq_nlmsg_put(buffer.data(), NFQNL_MSG_CONFIG, config_.queue_number);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xFFFF);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, config_.max_length);
    // Fail closed: with the queue full the kernel drops rather than passing
    // untranslated GRE (which would leak inside addresses). No GSO: packets
    // we rewrite must arrive with complete checksums. One flags/mask pair.
    const std::uint32_t mask = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(0));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(mask));
    send_config_and_wait_ack(buffer, "configure NFQUEUE");

    int on = 1;
    // Losing a queue message is counted by the kernel; an ENOBUFS error on our
    // socket would only interrupt the receive loop.
    mnl_socket_setsockopt(socket_, NETLINK_NO_ENOBUFS, &on, sizeof(on));
    int size = config_.receive_buffer_bytes;
    if (setsockopt(fd(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0) {
        setsockopt(fd(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    }
    size = static_cast<int>(kVerdictBatchBytes * 4);
    if (setsockopt(fd(), SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0) {
        setsockopt(fd(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    }
}

std::size_t Queue::process_ready(PacketSink& sink) {
    sink_ = &sink;
    // One recvmmsg takes what is ready, up to a burst: one system call for
    // many packets; the verdicts go back in one sendto as well.
    const int n =
        recvmmsg(fd(), burst_headers_.data(), static_cast<unsigned int>(burst_headers_.size()), MSG_DONTWAIT, nullptr);
    if (n < 0 && errno == ENOBUFS) {
        stats_.receive_overruns += 1;
    }
    for (int i = 0; i < n; ++i) {
        mnl_cb_run(burst_iovecs_[static_cast<std::size_t>(i)].iov_base,
                   burst_headers_[static_cast<std::size_t>(i)].msg_len, 0, port_id_, &Queue::on_message, this);
    }
    flush_verdicts();
    sink_ = nullptr;
    return n > 0 ? static_cast<std::size_t>(n) : 0;
}

int Queue::on_message(const nlmsghdr* nlh, void* self) {
    static_cast<Queue*>(self)->handle_message(nlh);
    return MNL_CB_OK;
}

void Queue::handle_message(const nlmsghdr* nlh) {
    nlattr* attr[NFQA_MAX + 1] = {};
    if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == nullptr) {
        return;
    }
    const auto* ph = static_cast<const nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attr[NFQA_PACKET_HDR]));
    PacketMeta meta;
    meta.packet_id = ntohl(ph->packet_id);
    meta.hook = ph->hook;
    if (attr[NFQA_IFINDEX_INDEV] != nullptr) {
        meta.in_interface = ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV]));
    }
    if (attr[NFQA_MARK] != nullptr) {
        meta.mark = ntohl(mnl_attr_get_u32(attr[NFQA_MARK]));
    }
    if (attr[NFQA_IFINDEX_OUTDEV] != nullptr) {
        meta.out_interface = ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_OUTDEV]));
    }
    stats_.received += 1;

    SinkVerdict verdict{false, false};
    std::span<std::uint8_t> packet;
    if (attr[NFQA_PAYLOAD] != nullptr) {
        packet = std::span<std::uint8_t>(static_cast<std::uint8_t*>(mnl_attr_get_payload(attr[NFQA_PAYLOAD])),
                                         mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]));
        verdict = sink_->on_packet(meta, packet);
    }

    if (verdict.held) {
        return;
    }
    if (verdict.accept && verdict.modified) {
        emit_verdict(meta.packet_id, true,
                     verdict.length != 0 ? packet.first(std::min(verdict.length, packet.size())) : packet);
    } else {
        emit_verdict(meta.packet_id, verdict.accept, {});
    }
}

void Queue::emit_verdict(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet) {
    if (verdict_bytes_ + kMaxVerdictMessage > verdict_buffer_.size()) {
        flush_verdicts();
    }
    nlmsghdr* out = nfq_nlmsg_put(verdict_buffer_.data() + verdict_bytes_, NFQNL_MSG_VERDICT, config_.queue_number);
    nfq_nlmsg_verdict_put(out, static_cast<int>(packet_id), accept ? NF_ACCEPT : NF_DROP);
    if (accept && !packet.empty()) {
        nfq_nlmsg_verdict_put_pkt(out, packet.data(), static_cast<std::uint32_t>(packet.size()));
    }
    verdict_bytes_ += NLMSG_ALIGN(out->nlmsg_len);
    verdicts_pending_ += 1;
}

void Queue::flush_verdicts() {
    if (verdict_bytes_ == 0) {
        return;
    }
    if (mnl_socket_sendto(socket_, verdict_buffer_.data(), verdict_bytes_) < 0) {
        stats_.send_errors += 1;
    } else {
        stats_.verdicts_sent += verdicts_pending_;
        stats_.batches_sent += 1;
    }
    verdict_bytes_ = 0;
    verdicts_pending_ = 0;
}

}  // namespace nfq
