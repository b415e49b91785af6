// The only code that speaks nfnetlink_queue. Receives packets in bursts, hands
// each to a PacketSink as a mutable view into the receive buffer, and sends the
// burst's verdicts (with rewritten payloads) back in one sendto.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

struct mnl_socket;
struct nlmsghdr;
struct mmsghdr;
struct iovec;

namespace nfq {

struct QueueConfig {
    std::uint16_t queue_number = 0;
    std::uint32_t max_length = 4096;     // packets the kernel holds for us
    int receive_buffer_bytes = 8 << 20;  // netlink socket buffer
    std::size_t max_burst = 64;          // packets per verdict batch
};

struct PacketMeta {
    std::uint32_t packet_id = 0;
    std::uint8_t hook = 0;
    std::uint32_t in_interface = 0;   // ifindex, 0 if none
    std::uint32_t out_interface = 0;  // ifindex, 0 if none
    std::uint32_t mark = 0;           // skb->mark
};

struct SinkVerdict {
    bool accept = true;
    bool modified = false;
    bool held = false;       // the sink keeps the packet; its verdict comes later via emit_verdict
    std::size_t length = 0;  // new length when modified (0 = unchanged)
};

class PacketSink {
public:
    virtual ~PacketSink() = default;
    virtual SinkVerdict on_packet(const PacketMeta& meta, std::span<std::uint8_t> packet) = 0;
};

class QueueError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct QueueStats {
    std::uint64_t received = 0;
    std::uint64_t verdicts_sent = 0;
    std::uint64_t batches_sent = 0;
    std::uint64_t receive_overruns = 0;  // ENOBUFS: the kernel dropped messages to us
    std::uint64_t send_errors = 0;
};

class Queue {
public:
    // Binds the queue; throws QueueError with a one-line reason on failure.
    explicit Queue(const QueueConfig& config);
    ~Queue();
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;

    [[nodiscard]] int fd() const noexcept;
    // Handles what is ready now (up to max_burst packets) without blocking.
    // Returns the number of packets handled.
    std::size_t process_ready(PacketSink& sink);
    // Queues a verdict for a packet handled earlier (held back by the sink);
    // a non-empty `packet` replaces its payload. Sent with the next batch.
    void emit_verdict(std::uint32_t packet_id, bool accept, std::span<const std::uint8_t> packet);
    // Sends queued verdicts now.
    void flush_verdicts();
    [[nodiscard]] const QueueStats& stats() const noexcept { return stats_; }

private:
    void configure();
    void send_config_and_wait_ack(std::vector<char>& buffer, const char* what);
    static int on_message(const struct nlmsghdr* nlh, void* self);
    void handle_message(const struct nlmsghdr* nlh);

    QueueConfig config_;
    mnl_socket* socket_ = nullptr;
    unsigned int port_id_ = 0;
    std::vector<char> receive_buffer_;  // configuration replies
    // One receive slot per packet of a burst, filled by one recvmmsg.
    std::vector<char> burst_storage_;
    std::size_t slot_size_ = 0;
    std::vector<struct mmsghdr> burst_headers_;
    std::vector<struct iovec> burst_iovecs_;
    std::vector<char> verdict_buffer_;
    std::size_t verdict_bytes_ = 0;
    std::size_t verdicts_pending_ = 0;
    PacketSink* sink_ = nullptr;
    QueueStats stats_;
};

}  // namespace nfq
