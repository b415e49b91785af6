// pptp-bench: the load tool of tools/bench. Two roles, each run in its own
// network namespace by tools/benchmark/run.py:
//
//   pptp-bench pac --listen ADDR
//       A synthetic PAC: TCP server on port 1723 (SCCRQ->SCCRP, OCRQ->OCRP
//       with its own unique Call IDs, CCRQ->CDN, StopCCRQ->StopCCRP,
//       Echo-Request->Echo-Reply), and a GRE reflector that sends every
//       enhanced GRE packet of a live call back to where it came from with the
//       key set to the PNS's Call ID learned from that call's OCRQ. Prints
//       its counters as one JSON line on SIGTERM/SIGINT.
//
//   pptp-bench pns --server ADDR --calls N --payload BYTES --seconds T ...
//       N control connections with one call each (the kernel helper handles
//       only one call per connection, so both modes get the same), GRE both
//       ways round-robin over the calls for T seconds (unpaced, or --rate
//       packets/s), echoes matched by call and sequence, RTT percentiles
//       from a send timestamp in the payload, then teardown of every call.
//       With --setup-calls M, then M more calls are set up (a window of them
//       at a time, each with its first GRE packet) and torn down again: the
//       call setup rate over M calls, whatever N is. Prints one JSON object
//       as its last stdout line.
//
// Every message layout is RFC 2637's; no project code is needed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr std::uint32_t kMagicCookie = 0x1A2B3C4DU;
constexpr std::uint16_t kPptpPort = 1723;
constexpr std::uint16_t kGreProtocolPpp = 0x880B;
constexpr std::size_t kGreHeader = 12;  // flags, protocol, payload length, call id, sequence
// Payload: magic, call index, sequence, send time, phase.
constexpr std::uint32_t kDataMagic = 0x50424E43U;   // "PBNC"
constexpr std::uint32_t kPrimeMagic = 0x5052494DU;  // "PRIM"
constexpr std::size_t kPayloadHeader = 28;
constexpr std::size_t kMaxPacket = 2048;

enum ControlType : std::uint16_t {
    kSccrq = 1,
    kSccrp = 2,
    kStopRq = 3,
    kStopRp = 4,
    kEchoRq = 5,
    kEchoRp = 6,
    kOcrq = 7,
    kOcrp = 8,
    kCcrq = 12,
    kCdn = 13,
};

[[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "pptp-bench: %s\n", message.c_str());
    std::exit(2);
}

[[noreturn]] void die_errno(const std::string& what) {
    die(what + ": " + std::strerror(errno));
}

std::uint64_t clock_ns(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}
std::uint64_t mono_ns() {
    return clock_ns(CLOCK_MONOTONIC);
}

double thread_cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_THREAD, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

void put16(std::uint8_t* p, std::uint16_t v) {
    p[0] = static_cast<std::uint8_t>(v >> 8U);
    p[1] = static_cast<std::uint8_t>(v & 0xFFU);
}
void put32(std::uint8_t* p, std::uint32_t v) {
    put16(p, static_cast<std::uint16_t>(v >> 16U));
    put16(p + 2, static_cast<std::uint16_t>(v & 0xFFFFU));
}
void put64(std::uint8_t* p, std::uint64_t v) {
    put32(p, static_cast<std::uint32_t>(v >> 32U));
    put32(p + 4, static_cast<std::uint32_t>(v & 0xFFFFFFFFU));
}
std::uint16_t get16(const std::uint8_t* p) {
    return static_cast<std::uint16_t>((p[0] << 8U) | p[1]);
}
std::uint32_t get32(const std::uint8_t* p) {
    return (static_cast<std::uint32_t>(get16(p)) << 16U) | get16(p + 2);
}
std::uint64_t get64(const std::uint8_t* p) {
    return (static_cast<std::uint64_t>(get32(p)) << 32U) | get32(p + 4);
}

std::string ip_text(std::uint32_t host_order) {
    in_addr a{htonl(host_order)};
    std::array<char, INET_ADDRSTRLEN> text{};
    inet_ntop(AF_INET, &a, text.data(), text.size());
    return text.data();
}

std::uint32_t parse_ip(const std::string& text) {
    in_addr a{};
    if (inet_pton(AF_INET, text.c_str(), &a) != 1) {
        die("not an IPv4 address: " + text);
    }
    return ntohl(a.s_addr);
}

sockaddr_in sockaddr_of(std::uint32_t address, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(address);
    sa.sin_port = htons(port);
    return sa;
}

void raise_nofile() {
    rlim_t limit = 1U << 20U;
    if (std::ifstream nr("/proc/sys/fs/nr_open"); nr) {
        unsigned long long v = 0;
        if (nr >> v && v > 0) limit = static_cast<rlim_t>(v);
    }
    rlimit rl{limit, limit};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void set_buffer(int fd, int option_force, int option, int bytes) {
    if (setsockopt(fd, SOL_SOCKET, option_force, &bytes, sizeof(bytes)) != 0) {
        setsockopt(fd, SOL_SOCKET, option, &bytes, sizeof(bytes));
    }
}

// Drops the kernel counted on a raw socket (/proc/net/raw, this namespace).
std::uint64_t raw_socket_drops(int fd) {
    struct stat st {};
    if (fstat(fd, &st) != 0) return 0;
    std::ifstream f("/proc/net/raw");
    std::string line;
    std::getline(f, line);
    while (std::getline(f, line)) {
        std::istringstream in(line);
        std::vector<std::string> fields;
        std::string field;
        while (in >> field) fields.push_back(field);
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if (fields.size() >= 13 && std::strtoull(fields[9].c_str(), nullptr, 10) == st.st_ino) {
            return std::strtoull(fields.back().c_str(), nullptr, 10);
        }
    }
    return 0;
}

int open_gre_socket() {
    const int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_GRE);
    if (fd < 0) die_errno("raw GRE socket (needs root)");
    set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, 64 << 20);
    set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, 8 << 20);
    return fd;
}

// ------------------------------------------------------------------ JSON out

class Json {
public:
    Json& key(const std::string& k) {
        comma();
        out_ << '"' << k << "\":";
        fresh_ = true;
        return *this;
    }
    Json& num(double v) {
        comma();
        if (v != v) {
            out_ << "null";
        } else {
            std::array<char, 64> t{};
            std::snprintf(t.data(), t.size(), "%.6g", v);
            out_ << t.data();
        }
        return *this;
    }
    Json& num(std::uint64_t v) {
        comma();
        out_ << v;
        return *this;
    }
    Json& str(const std::string& v) {
        comma();
        out_ << '"' << v << '"';
        return *this;
    }
    Json& boolean(bool v) {
        comma();
        out_ << (v ? "true" : "false");
        return *this;
    }
    Json& open(char c) {
        comma();
        out_ << c;
        fresh_ = true;
        return *this;
    }
    Json& close(char c) {
        out_ << c;
        fresh_ = false;
        return *this;
    }
    template <typename T>
    Json& field(const std::string& k, T v) {
        key(k);
        if constexpr (std::is_same_v<T, bool>) {
            return boolean(v);
        } else if constexpr (std::is_floating_point_v<T>) {
            return num(static_cast<double>(v));
        } else if constexpr (std::is_integral_v<T>) {
            return num(static_cast<std::uint64_t>(v));
        } else {
            return str(std::string(v));
        }
    }
    [[nodiscard]] std::string text() const { return out_.str(); }

private:
    void comma() {
        if (!fresh_) out_ << ',';
        fresh_ = false;
    }
    std::ostringstream out_;
    bool fresh_ = true;
};

// ------------------------------------------------------- control messages

std::vector<std::uint8_t> control(std::uint16_t type, std::size_t size) {
    std::vector<std::uint8_t> m(size);
    put16(m.data(), static_cast<std::uint16_t>(size));
    put16(m.data() + 2, 1);
    put32(m.data() + 4, kMagicCookie);
    put16(m.data() + 8, type);
    return m;
}
std::vector<std::uint8_t> start_message(std::uint16_t type, std::uint8_t result) {
    auto m = control(type, 156);
    put16(m.data() + 12, 0x0100);  // protocol version 1.0
    m[14] = result;                // reply: result code (request: reserved)
    put32(m.data() + 16, 1);       // framing capabilities: async
    put32(m.data() + 20, 1);       // bearer capabilities: analog
    put16(m.data() + 24, 1);       // maximum channels
    put16(m.data() + 26, 1);       // firmware revision
    std::memcpy(m.data() + 28, "pptp-bench", 10);
    return m;
}
std::vector<std::uint8_t> ocrq(std::uint16_t call_id, std::uint16_t serial) {
    auto m = control(kOcrq, 168);
    put16(m.data() + 12, call_id);
    put16(m.data() + 14, serial);
    put32(m.data() + 16, 2400);      // minimum BPS
    put32(m.data() + 20, 10000000);  // maximum BPS
    put32(m.data() + 24, 3);         // bearer type
    put32(m.data() + 28, 3);         // framing type
    put16(m.data() + 32, 64);        // receive window
    return m;
}
std::vector<std::uint8_t> ocrp(std::uint16_t call_id, std::uint16_t peer_call_id) {
    auto m = control(kOcrp, 32);
    put16(m.data() + 12, call_id);
    put16(m.data() + 14, peer_call_id);
    m[16] = 1;  // connected
    put32(m.data() + 20, 10000000);
    put16(m.data() + 24, 64);
    return m;
}
std::vector<std::uint8_t> ccrq(std::uint16_t call_id) {
    auto m = control(kCcrq, 16);
    put16(m.data() + 12, call_id);
    return m;
}
std::vector<std::uint8_t> cdn(std::uint16_t call_id) {
    auto m = control(kCdn, 148);
    put16(m.data() + 12, call_id);
    m[14] = 4;  // result: request (CCRQ received)
    return m;
}
std::vector<std::uint8_t> stop_message(std::uint16_t type) {
    auto m = control(type, 16);
    m[12] = 1;  // request: reason "none"; reply: result "OK"
    return m;
}
std::vector<std::uint8_t> echo_reply(std::uint32_t id) {
    auto m = control(kEchoRp, 20);
    put32(m.data() + 12, id);
    m[16] = 1;
    return m;
}

// One direction of a control connection as a byte stream: messages come out
// whole however the bytes were cut into reads.
class MessageStream {
public:
    void append(const std::uint8_t* p, std::size_t n) {
        if (start_ > 0 && (start_ == buffer_.size() || start_ > 65536)) {
            buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<long>(start_));
            start_ = 0;
        }
        buffer_.insert(buffer_.end(), p, p + n);
    }
    // 1: `msg` holds the next message; 0: more bytes needed; -1: framing error.
    int next(std::span<const std::uint8_t>& msg) {
        const std::size_t avail = buffer_.size() - start_;
        if (avail < 12) return 0;
        const std::uint8_t* p = buffer_.data() + start_;
        const std::uint16_t length = get16(p);
        if (length < 16 || length > 1024 || get16(p + 2) != 1 || get32(p + 4) != kMagicCookie) return -1;
        if (avail < length) return 0;
        msg = std::span<const std::uint8_t>(p, length);
        start_ += length;
        return 1;
    }

private:
    std::vector<std::uint8_t> buffer_;
    std::size_t start_ = 0;
};

// Non-blocking send of a whole small message, queueing what does not fit.
struct Outbox {
    std::vector<std::uint8_t> pending;
    // false on a hard error.
    bool send(int fd, const std::vector<std::uint8_t>& m) {
        if (!pending.empty()) {
            pending.insert(pending.end(), m.begin(), m.end());
            return true;
        }
        const ssize_t n = ::send(fd, m.data(), m.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
            pending = m;
            return true;
        }
        if (static_cast<std::size_t>(n) < m.size()) pending.assign(m.begin() + n, m.end());
        return true;
    }
    bool flush(int fd) {
        while (!pending.empty()) {
            const ssize_t n = ::send(fd, pending.data(), pending.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
            pending.erase(pending.begin(), pending.begin() + n);
        }
        return true;
    }
};

// ------------------------------------------------------------- GRE parsing

struct GreView {
    std::uint16_t call_id = 0;
    const std::uint8_t* payload = nullptr;
    std::size_t payload_length = 0;
};

// `packet` starts at the IPv4 header (raw sockets deliver it).
std::optional<GreView> parse_gre_packet(std::uint8_t* packet, std::size_t length, std::size_t* gre_offset) {
    if (length < 20) return std::nullopt;
    const std::size_t ihl = static_cast<std::size_t>(packet[0] & 0x0FU) * 4U;
    if (ihl < 20 || length < ihl + 8) return std::nullopt;
    const std::uint8_t* g = packet + ihl;
    // C R K S s Recur | A flags Ver: PPTP GRE is K set, C R s Recur clear, version 1.
    if ((g[0] & 0xEFU) != 0x20U || (g[1] & 0x07U) != 1U || get16(g + 2) != kGreProtocolPpp) return std::nullopt;
    std::size_t header = 8;
    if ((g[0] & 0x10U) != 0) header += 4;  // sequence
    if ((g[1] & 0x80U) != 0) header += 4;  // acknowledgement
    if (length < ihl + header) return std::nullopt;
    GreView v;
    v.call_id = get16(g + 6);
    v.payload = g + header;
    v.payload_length = std::min<std::size_t>(get16(g + 4), length - ihl - header);
    *gre_offset = ihl;
    return v;
}

// --------------------------------------------------------------------- PAC

struct PacOptions {
    std::uint32_t listen = 0;
    std::uint16_t first_call_id = 50001;
};

struct PacStats {
    std::atomic<std::uint64_t> gre_rx{0}, gre_tx{0}, gre_unknown_key{0}, gre_wrong_source{0}, gre_not_pptp{0},
        gre_tx_errors{0};
};

// Own Call ID -> (PNS's Call ID, PNS address), read by the reflector thread
// without locks: bit 63 live, bits 16..47 address, bits 0..15 Call ID.
std::unique_ptr<std::atomic<std::uint64_t>[]> g_pac_calls;
PacStats g_pac_stats;

std::uint64_t pack_call(std::uint32_t address, std::uint16_t peer_call_id) {
    return (1ULL << 63U) | (static_cast<std::uint64_t>(address) << 16U) | peer_call_id;
}

void reflect_loop(int fd) {
    constexpr unsigned kBatch = 64;
    std::vector<std::array<std::uint8_t, kMaxPacket>> buffers(kBatch);
    std::array<mmsghdr, kBatch> rx{};
    std::array<iovec, kBatch> rx_iov{};
    std::array<sockaddr_in, kBatch> from{};
    std::array<mmsghdr, kBatch> tx{};
    std::array<iovec, kBatch> tx_iov{};
    std::array<sockaddr_in, kBatch> to{};
    for (unsigned i = 0; i < kBatch; ++i) {
        rx_iov[i] = {buffers[i].data(), buffers[i].size()};
        rx[i].msg_hdr.msg_iov = &rx_iov[i];
        rx[i].msg_hdr.msg_iovlen = 1;
        rx[i].msg_hdr.msg_name = &from[i];
        tx[i].msg_hdr.msg_iov = &tx_iov[i];
        tx[i].msg_hdr.msg_iovlen = 1;
        tx[i].msg_hdr.msg_name = &to[i];
        tx[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
    }
    for (;;) {
        for (unsigned i = 0; i < kBatch; ++i) rx[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
        const int n = recvmmsg(fd, rx.data(), kBatch, MSG_WAITFORONE, nullptr);
        if (n <= 0) continue;
        unsigned out = 0;
        std::uint64_t unknown = 0, wrong = 0, not_pptp = 0;
        for (int i = 0; i < n; ++i) {
            std::uint8_t* p = buffers[static_cast<std::size_t>(i)].data();
            const std::size_t len = rx[static_cast<std::size_t>(i)].msg_len;
            std::size_t gre_offset = 0;
            const auto gre = parse_gre_packet(p, len, &gre_offset);
            if (!gre) {
                ++not_pptp;
                continue;
            }
            const std::uint64_t e = g_pac_calls[gre->call_id].load(std::memory_order_acquire);
            if ((e >> 63U) == 0) {
                ++unknown;
                continue;
            }
            const std::uint32_t source = ntohl(from[static_cast<std::size_t>(i)].sin_addr.s_addr);
            if (source != static_cast<std::uint32_t>((e >> 16U) & 0xFFFFFFFFU)) {
                ++wrong;
                continue;
            }
            put16(p + gre_offset + 6, static_cast<std::uint16_t>(e & 0xFFFFU));
            tx_iov[out] = {p + gre_offset, len - gre_offset};
            to[out] = sockaddr_of(source, 0);
            ++out;
        }
        unsigned done = 0;
        while (done < out) {
            const int s = sendmmsg(fd, tx.data() + done, out - done, 0);
            if (s <= 0) {
                g_pac_stats.gre_tx_errors.fetch_add(out - done, std::memory_order_relaxed);
                break;
            }
            done += static_cast<unsigned>(s);
        }
        g_pac_stats.gre_rx.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
        g_pac_stats.gre_tx.fetch_add(done, std::memory_order_relaxed);
        if (unknown != 0) g_pac_stats.gre_unknown_key.fetch_add(unknown, std::memory_order_relaxed);
        if (wrong != 0) g_pac_stats.gre_wrong_source.fetch_add(wrong, std::memory_order_relaxed);
        if (not_pptp != 0) g_pac_stats.gre_not_pptp.fetch_add(not_pptp, std::memory_order_relaxed);
    }
}

struct PacConnection {
    int fd = -1;
    std::uint32_t peer = 0;
    MessageStream in;
    Outbox out;
    std::vector<std::uint16_t> calls;  // own Call IDs
    bool want_write = false;
};

class Pac {
public:
    explicit Pac(const PacOptions& o) : options_(o), cursor_(o.first_call_id) {}

    int run() {
        raise_nofile();
        g_pac_calls.reset(new std::atomic<std::uint64_t>[65536]());
        const int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        const sockaddr_in sa = sockaddr_of(options_.listen, kPptpPort);
        if (bind(listener, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) die_errno("bind 1723");
        if (listen(listener, 65535) != 0) die_errno("listen");
        const int gre = open_gre_socket();
        gre_fd_ = gre;

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &mask, nullptr);  // before the thread starts: it inherits the mask
        const int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        std::thread(reflect_loop, gre).detach();

        epoll_ = epoll_create1(EPOLL_CLOEXEC);
        add(listener, EPOLLIN, static_cast<std::uint64_t>(listener));
        add(sfd, EPOLLIN, static_cast<std::uint64_t>(sfd));
        std::fprintf(stderr, "pptp-bench pac: listening on %s:1723\n", ip_text(options_.listen).c_str());
        std::array<epoll_event, 256> events{};
        std::array<std::uint8_t, 16384> buffer{};
        for (;;) {
            const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), -1);
            for (int i = 0; i < n; ++i) {
                const int fd = static_cast<int>(events[static_cast<std::size_t>(i)].data.u64);
                const std::uint32_t ev = events[static_cast<std::size_t>(i)].events;
                if (fd == sfd) {
                    print_stats();
                    std::fflush(stdout);
                    _exit(0);
                }
                if (fd == listener) {
                    accept_all(listener);
                    continue;
                }
                auto it = connections_.find(fd);
                if (it == connections_.end()) continue;
                PacConnection& c = it->second;
                bool alive = true;
                if ((ev & EPOLLOUT) != 0) alive = c.out.flush(fd);
                if (alive && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
                    for (;;) {
                        const ssize_t r = recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
                        if (r > 0) {
                            c.in.append(buffer.data(), static_cast<std::size_t>(r));
                            continue;
                        }
                        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) alive = false;
                        break;
                    }
                    if (!process(c)) alive = false;
                }
                if (!alive) {
                    close_connection(fd);
                    continue;
                }
                const bool want = !c.out.pending.empty();
                if (want != c.want_write) {
                    c.want_write = want;
                    epoll_event e{};
                    e.events = EPOLLIN | (want ? EPOLLOUT : 0U);
                    e.data.u64 = static_cast<std::uint64_t>(fd);
                    epoll_ctl(epoll_, EPOLL_CTL_MOD, fd, &e);
                }
            }
        }
    }

private:
    void add(int fd, std::uint32_t events, std::uint64_t data) {
        epoll_event e{};
        e.events = events;
        e.data.u64 = data;
        if (epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &e) != 0) die_errno("epoll_ctl");
    }

    void accept_all(int listener) {
        for (;;) {
            sockaddr_in peer{};
            socklen_t len = sizeof(peer);
            const int fd = accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) return;
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            PacConnection& c = connections_[fd];
            c.fd = fd;
            c.peer = ntohl(peer.sin_addr.s_addr);
            ++accepted_;
            add(fd, EPOLLIN, static_cast<std::uint64_t>(fd));
        }
    }

    void free_call(std::uint16_t id) {
        g_pac_calls[id].store(0, std::memory_order_release);
        --live_;
    }

    void close_connection(int fd) {
        auto it = connections_.find(fd);
        if (it == connections_.end()) return;
        for (std::uint16_t id : it->second.calls) free_call(id);
        epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
        connections_.erase(it);
    }

    std::optional<std::uint16_t> allocate() {
        for (std::uint32_t tries = 0; tries < 65535; ++tries) {
            const std::uint16_t id = cursor_;
            cursor_ = static_cast<std::uint16_t>(cursor_ == 65535 ? 1 : cursor_ + 1);
            if (id != 0 && (g_pac_calls[id].load(std::memory_order_relaxed) >> 63U) == 0) return id;
        }
        return std::nullopt;
    }

    bool process(PacConnection& c) {
        std::span<const std::uint8_t> m;
        for (;;) {
            const int r = c.in.next(m);
            if (r == 0) return true;
            if (r < 0) {
                ++framing_errors_;
                return false;
            }
            const std::uint16_t type = get16(m.data() + 8);
            bool ok = true;
            switch (type) {
                case kSccrq: ok = c.out.send(c.fd, start_message(kSccrp, 1)); break;
                case kOcrq: {
                    if (m.size() < 168) {
                        ++framing_errors_;
                        return false;
                    }
                    const std::uint16_t peer_id = get16(m.data() + 12);
                    const auto own = allocate();
                    if (!own) {
                        ++refused_;
                        auto reply = ocrp(0, peer_id);
                        reply[16] = 4;  // no resources... (general error)
                        ok = c.out.send(c.fd, reply);
                        break;
                    }
                    g_pac_calls[*own].store(pack_call(c.peer, peer_id), std::memory_order_release);
                    c.calls.push_back(*own);
                    ++calls_;
                    ++live_;
                    max_live_ = std::max(max_live_, live_);
                    ok = c.out.send(c.fd, ocrp(*own, peer_id));
                    break;
                }
                case kCcrq: {
                    const std::uint16_t peer_id = get16(m.data() + 12);
                    std::uint16_t own = 0;
                    for (auto it = c.calls.begin(); it != c.calls.end(); ++it) {
                        if ((g_pac_calls[*it].load(std::memory_order_relaxed) & 0xFFFFU) == peer_id) {
                            own = *it;
                            free_call(own);
                            c.calls.erase(it);
                            break;
                        }
                    }
                    if (own == 0) ++ccrq_unknown_;
                    ++cleared_;
                    ok = c.out.send(c.fd, cdn(own));
                    break;
                }
                case kStopRq:
                    for (std::uint16_t id : c.calls) free_call(id);
                    c.calls.clear();
                    ++stops_;
                    ok = c.out.send(c.fd, stop_message(kStopRp));
                    break;
                case kEchoRq: ok = c.out.send(c.fd, echo_reply(get32(m.data() + 12))); break;
                default: ++other_; break;
            }
            if (!ok) return false;
        }
    }

    void print_stats() const {
        Json j;
        j.open('{')
            .field("role", "pac")
            .field("connections", accepted_)
            .field("calls", calls_)
            .field("max_live_calls", max_live_)
            .field("live_calls", live_)
            .field("cleared", cleared_)
            .field("ccrq_unknown_call", ccrq_unknown_)
            .field("refused", refused_)
            .field("stops", stops_)
            .field("other_messages", other_)
            .field("framing_errors", framing_errors_)
            .field("gre_rx", g_pac_stats.gre_rx.load())
            .field("gre_tx", g_pac_stats.gre_tx.load())
            .field("gre_unknown_key", g_pac_stats.gre_unknown_key.load())
            .field("gre_wrong_source", g_pac_stats.gre_wrong_source.load())
            .field("gre_not_pptp", g_pac_stats.gre_not_pptp.load())
            .field("gre_tx_errors", g_pac_stats.gre_tx_errors.load())
            .field("rx_socket_drops", raw_socket_drops(gre_fd_))
            .close('}');
        std::printf("%s\n", j.text().c_str());
    }

    PacOptions options_;
    std::uint16_t cursor_;
    int epoll_ = -1;
    int gre_fd_ = -1;
    std::unordered_map<int, PacConnection> connections_;
    std::uint64_t accepted_ = 0, calls_ = 0, live_ = 0, max_live_ = 0, cleared_ = 0, ccrq_unknown_ = 0, refused_ = 0,
                  stops_ = 0, other_ = 0, framing_errors_ = 0;
};

// --------------------------------------------------------------------- PNS

struct PnsOptions {
    std::uint32_t server = 0;
    std::uint32_t calls = 1;
    std::size_t payload = 64;
    double seconds = 5;
    double rate = 0;  // packets/s, 0 = as fast as the generator goes
    double paced_rate = 0;
    double paced_seconds = 0;
    std::uint16_t first_call_id = 1;
    unsigned window = 128;
    std::uint32_t setup_calls = 0;  // the setup-rate phase: this many more calls, set up and torn down
    double setup_timeout = 120;
    unsigned batch = 32;
    bool sync = false;
};

// Latency histogram: 1 us buckets below 10 ms, 100 us buckets below 1 s.
class Histogram {
public:
    Histogram() : buckets_(kFine + kCoarse + 1) {}
    void add(std::int64_t ns) {
        const std::uint64_t us = ns < 0 ? 0 : static_cast<std::uint64_t>(ns) / 1000U;
        std::size_t b = 0;
        if (us < kFine) {
            b = us;
        } else if (us < kFine + kCoarse * 100U) {
            b = kFine + (us - kFine) / 100U;
        } else {
            b = kFine + kCoarse;
        }
        buckets_[b] += 1;
        count_ += 1;
        sum_us_ += static_cast<double>(ns) / 1000.0;
        max_us_ = std::max(max_us_, static_cast<double>(ns) / 1000.0);
    }
    // Upper edge of the bucket holding the q-quantile, in microseconds.
    [[nodiscard]] double quantile(double q) const {
        if (count_ == 0) return std::nan("");
        const auto target = static_cast<std::uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
        std::uint64_t seen = 0;
        for (std::size_t b = 0; b < buckets_.size(); ++b) {
            seen += buckets_[b];
            if (seen >= target) {
                if (b < kFine) return static_cast<double>(b + 1);
                if (b < kFine + kCoarse) return static_cast<double>(kFine + (b - kFine + 1) * 100U);
                return max_us_;
            }
        }
        return max_us_;
    }
    [[nodiscard]] std::uint64_t count() const { return count_; }
    [[nodiscard]] double mean() const { return count_ == 0 ? std::nan("") : sum_us_ / static_cast<double>(count_); }
    [[nodiscard]] double max() const { return max_us_; }

private:
    static constexpr std::size_t kFine = 10000;
    static constexpr std::size_t kCoarse = 9900;
    std::vector<std::uint64_t> buckets_;
    std::uint64_t count_ = 0;
    double sum_us_ = 0;
    double max_us_ = 0;
};

enum class CallState : std::uint8_t { Idle, Connecting, WaitSccrp, WaitOcrp, Up, WaitCdn, WaitStopRp, Done, Failed };

struct PnsCall {
    int fd = -1;
    std::uint16_t own = 0;   // our Call ID (what the echoes must carry)
    std::uint16_t peer = 0;  // the PAC's Call ID (what we put in the key)
    CallState state = CallState::Idle;
    MessageStream in;
    Outbox out;
    bool want_write = false;
    bool prime_echoed = false;
};

struct PhaseResult {
    std::string name;
    double target_rate = 0;
    double seconds = 0;  // sending time
    std::uint64_t sent = 0;
    std::uint64_t send_errors = 0;
    std::uint64_t received = 0;  // valid, unique echoes
    std::uint64_t bytes_received = 0;
    std::uint64_t bad_key = 0, bad_source = 0, not_pptp = 0, stale = 0, duplicates = 0, unknown = 0, wrong_call = 0,
                  late_primes = 0;
    std::uint64_t rx_socket_drops = 0;
    double sender_cpu = 0, receiver_cpu = 0;
    bool kernel_timestamps = false;
    Histogram rtt;
    // The same round trips per second of sending (by send time), so that a
    // few stalled seconds (another tenant of the machine) can be told from
    // a tail that every second has.
    std::vector<Histogram> slices;
};

class Pns {
public:
    explicit Pns(const PnsOptions& o) : o_(o) {}

    int run() {
        raise_nofile();
        prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
        std::signal(SIGPIPE, SIG_IGN);
        gre_ = open_gre_socket();
        int on = 1;
        setsockopt(gre_, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
        timeval tv{0, 20000};
        setsockopt(gre_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (o_.calls == 0 || o_.calls + o_.setup_calls > 60000) die("--calls + --setup-calls must be 1..60000");
        if (o_.payload < kPayloadHeader || o_.payload + kGreHeader + 60 > kMaxPacket) die("--payload out of range");
        calls_.resize(o_.calls + o_.setup_calls);
        for (std::uint32_t i = 0; i < calls_.size(); ++i) {
            calls_[i].own = static_cast<std::uint16_t>(o_.first_call_id + i);
            if (calls_[i].own == 0) die("Call IDs wrap to 0: lower --first-call-id");
        }
        epoll_ = epoll_create1(EPOLL_CLOEXEC);

        sync("ready");
        const double setup_s = setup(0, o_.calls);
        collect_primes();
        main_setup_failed_ = setup_failed_;
        main_primes_sent_ = primes_sent_;
        main_primes_echoed_ = primes_echoed_;
        main_prime_bad_key_ = prime_bad_key_;
        sync("setup_done");

        std::vector<PhaseResult> phases;
        phases.push_back(traffic("max", o_.rate, o_.seconds, 1));
        if (o_.paced_rate > 0 && o_.paced_seconds > 0) {
            phases.push_back(traffic("paced", o_.paced_rate, o_.paced_seconds, 2));
        }
        sync("traffic_done");
        const double teardown_s = teardown(up_);
        sync("teardown_done");

        // The setup rate over setup_calls calls, the same in every run: the
        // main calls are gone, so the agent's (or the helper's) tables hold
        // only these.
        struct {
            std::uint64_t up = 0, failed = 0, primes_sent = 0, primes_echoed = 0, prime_bad_key = 0, down = 0,
                          teardown_failed = 0;
            double setup_s = 0, teardown_s = 0;
        } rate;
        if (o_.setup_calls > 0) {
            const std::uint64_t failed0 = setup_failed_, sent0 = primes_sent_, echoed0 = primes_echoed_,
                                bad0 = prime_bad_key_, down0 = torn_down_, tfailed0 = teardown_failed_;
            sync("setup_rate_start");
            active_ = &rate_up_;
            rate.setup_s = setup(o_.calls, o_.calls + o_.setup_calls);
            collect_primes();
            sync("setup_rate_up");
            rate.teardown_s = teardown(rate_up_);
            sync("setup_rate_done");
            rate.up = rate_up_.size();
            rate.failed = setup_failed_ - failed0;
            rate.primes_sent = primes_sent_ - sent0;
            rate.primes_echoed = primes_echoed_ - echoed0;
            rate.prime_bad_key = prime_bad_key_ - bad0;
            rate.down = torn_down_ - down0;
            rate.teardown_failed = teardown_failed_ - tfailed0;
        }

        Json j;
        j.open('{')
            .field("role", "pns")
            .field("calls", o_.calls)
            .field("payload", o_.payload)
            .field("server", ip_text(o_.server));
        j.key("setup").open('{');
        j.field("seconds", setup_s)
            .field("calls_up", up_.size())
            .field("failed", main_setup_failed_)
            .field("calls_per_s", setup_s > 0 ? static_cast<double>(up_.size()) / setup_s : 0.0)
            .field("primes_sent", main_primes_sent_)
            .field("primes_echoed", main_primes_echoed_)
            .field("prime_bad_key", main_prime_bad_key_);
        j.close('}');
        j.key("setup_rate").open('{');
        j.field("calls", o_.setup_calls)
            .field("window", o_.window)
            .field("seconds", rate.setup_s)
            .field("calls_up", rate.up)
            .field("failed", rate.failed)
            .field("calls_per_s", rate.setup_s > 0 ? static_cast<double>(rate.up) / rate.setup_s : 0.0)
            .field("primes_sent", rate.primes_sent)
            .field("primes_echoed", rate.primes_echoed)
            .field("prime_bad_key", rate.prime_bad_key)
            .field("teardown_seconds", rate.teardown_s)
            .field("calls_down", rate.down)
            .field("teardown_failed", rate.teardown_failed)
            .field("teardown_calls_per_s",
                   rate.teardown_s > 0 ? static_cast<double>(rate.down) / rate.teardown_s : 0.0);
        j.close('}');
        j.key("phases").open('[');
        for (const auto& p : phases) write_phase(j, p);
        j.close(']');
        j.key("teardown").open('{');
        j.field("seconds", teardown_s)
            .field("calls_down", main_torn_down_)
            .field("failed", main_teardown_failed_)
            .field("cdn_wrong_call", cdn_wrong_call_)
            .field("calls_per_s", teardown_s > 0 ? static_cast<double>(main_torn_down_) / teardown_s : 0.0);
        j.close('}');
        j.close('}');
        std::printf("%s\n", j.text().c_str());
        std::fflush(stdout);
        return (up_.size() == o_.calls && !phases.empty() && phases[0].received > 0) ? 0 : 1;
    }

private:
    void sync(const char* label) {
        if (!o_.sync) return;
        std::printf("SYNC %s\n", label);
        std::fflush(stdout);
        std::string line;
        if (!std::getline(std::cin, line)) die("sync: stdin closed");
    }

    static void write_phase(Json& j, const PhaseResult& p) {
        const double secs = p.seconds > 0 ? p.seconds : 1;
        j.open('{')
            .field("name", p.name)
            .field("target_rate", p.target_rate)
            .field("seconds", p.seconds)
            .field("sent", p.sent)
            .field("send_errors", p.send_errors)
            .field("offered_pps", static_cast<double>(p.sent) / secs)
            .field("received", p.received)
            .field("delivered_pps", static_cast<double>(p.received) / secs)
            .field("delivered_mbps", static_cast<double>(p.bytes_received) * 8 / secs / 1e6)
            .field("loss_pct", p.sent == 0 ? 0.0
                                           : 100.0 * static_cast<double>(p.sent - std::min(p.sent, p.received)) /
                                                 static_cast<double>(p.sent))
            .field("bad_key", p.bad_key)
            .field("bad_source", p.bad_source)
            .field("not_pptp", p.not_pptp)
            .field("stale", p.stale)
            .field("duplicates", p.duplicates)
            .field("unknown", p.unknown)
            .field("wrong_call", p.wrong_call)
            .field("late_primes", p.late_primes)
            .field("rx_socket_drops", p.rx_socket_drops)
            .field("sender_cpu_s", p.sender_cpu)
            .field("receiver_cpu_s", p.receiver_cpu)
            .field("kernel_rx_timestamps", p.kernel_timestamps);
        j.key("rtt_us").open('{');
        j.field("count", p.rtt.count())
            .field("p50", p.rtt.quantile(0.50))
            .field("p99", p.rtt.quantile(0.99))
            .field("p999", p.rtt.quantile(0.999))
            .field("mean", p.rtt.mean())
            .field("max", p.rtt.max());
        // p99 of each whole second with at least 1000 round trips, and their median.
        std::vector<double> p99s;
        for (const Histogram& h : p.slices) {
            if (h.count() >= 1000) p99s.push_back(h.quantile(0.99));
        }
        j.key("p99_per_second").open('[');
        for (const double v : p99s) j.num(v);
        j.close(']');
        std::vector<double> sorted = p99s;
        std::sort(sorted.begin(), sorted.end());
        j.field("p99_per_second_median", sorted.empty() ? std::nan("")
                                         : sorted.size() % 2 == 1
                                             ? sorted[sorted.size() / 2]
                                             : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2);
        j.close('}');
        j.close('}');
    }

    // ---- control plane
    void watch(std::uint32_t index, std::uint32_t events, int op) {
        epoll_event e{};
        e.events = events;
        e.data.u64 = index;
        epoll_ctl(epoll_, op, calls_[index].fd, &e);
    }

    void fail(std::uint32_t index) {
        PnsCall& c = calls_[index];
        if (c.fd >= 0) {
            epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
            close(c.fd);
            c.fd = -1;
        }
        c.state = CallState::Failed;
    }

    bool start_connect(std::uint32_t index) {
        PnsCall& c = calls_[index];
        c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) {
            std::fprintf(stderr, "pptp-bench pns: socket: %s\n", std::strerror(errno));
            c.state = CallState::Failed;
            return false;
        }
        int one = 1;
        setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        const sockaddr_in sa = sockaddr_of(o_.server, kPptpPort);
        if (connect(c.fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0 && errno != EINPROGRESS) {
            fail(index);
            return false;
        }
        c.state = CallState::Connecting;
        watch(index, EPOLLOUT, EPOLL_CTL_ADD);
        return true;
    }

    void send_msg(std::uint32_t index, const std::vector<std::uint8_t>& m) {
        PnsCall& c = calls_[index];
        if (!c.out.send(c.fd, m)) {
            fail(index);
            return;
        }
        const bool want = !c.out.pending.empty();
        if (want != c.want_write) {
            c.want_write = want;
            watch(index, EPOLLIN | (want ? EPOLLOUT : 0U), EPOLL_CTL_MOD);
        }
    }

    std::vector<std::uint8_t> gre_packet(const PnsCall& c, std::uint32_t magic, std::uint32_t index, std::uint64_t seq,
                                         std::uint32_t phase) const {
        std::vector<std::uint8_t> p(kGreHeader + o_.payload);
        fill_gre(p.data(), c.peer, static_cast<std::uint32_t>(seq));
        fill_payload(p.data() + kGreHeader, magic, index, seq, mono_ns(), phase);
        return p;
    }
    void fill_gre(std::uint8_t* g, std::uint16_t key, std::uint32_t seq) const {
        g[0] = 0x30;  // K, S
        g[1] = 0x01;  // version 1
        put16(g + 2, kGreProtocolPpp);
        put16(g + 4, static_cast<std::uint16_t>(o_.payload));
        put16(g + 6, key);
        put32(g + 8, seq);
    }
    static void fill_payload(std::uint8_t* p, std::uint32_t magic, std::uint32_t index, std::uint64_t seq,
                             std::uint64_t t, std::uint32_t phase) {
        put32(p, magic);
        put32(p + 4, index);
        put64(p + 8, seq);
        put64(p + 16, t);
        put32(p + 24, phase);
    }

    void on_established(std::uint32_t index) {
        PnsCall& c = calls_[index];
        c.state = CallState::Up;
        active_->push_back(index);
        // One GRE packet per call at once, as a real client's LCP: it also
        // consumes the kernel helper's expectations (4096 at most system-wide)
        // so that 10,000 calls can be set up in kernel mode.
        const auto p = gre_packet(c, kPrimeMagic, index, 0, 0);
        const sockaddr_in sa = sockaddr_of(o_.server, 0);
        if (sendto(gre_, p.data(), p.size(), 0, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) > 0) {
            ++primes_sent_;
        }
    }

    // Reads what is ready on a call's connection and moves its state on.
    // Returns true when the call reached the state the phase waits for.
    bool on_readable(std::uint32_t index, bool setup_phase) {
        PnsCall& c = calls_[index];
        std::array<std::uint8_t, 4096> buffer{};
        bool eof = false;
        for (;;) {
            const ssize_t r = recv(c.fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
            if (r > 0) {
                c.in.append(buffer.data(), static_cast<std::size_t>(r));
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) eof = true;
            break;
        }
        std::span<const std::uint8_t> m;
        for (;;) {
            const int r = c.in.next(m);
            if (r == 0) break;
            if (r < 0) {
                fail(index);
                return false;
            }
            const std::uint16_t type = get16(m.data() + 8);
            if (type == kEchoRq) {
                send_msg(index, echo_reply(get32(m.data() + 12)));
                continue;
            }
            switch (c.state) {
                case CallState::WaitSccrp:
                    if (type != kSccrp || m.size() < 156 || m[14] != 1) {
                        fail(index);
                        return false;
                    }
                    c.state = CallState::WaitOcrp;
                    send_msg(index, ocrq(c.own, static_cast<std::uint16_t>(index + 1)));
                    break;
                case CallState::WaitOcrp:
                    // Peer's Call ID must be ours again (a NAT translated it back).
                    if (type != kOcrp || m.size() < 32 || m[16] != 1 || get16(m.data() + 14) != c.own) {
                        std::fprintf(stderr, "pptp-bench pns: call %u: bad OCRP (type %u, peer id %u, result %u)\n",
                                     index, type, m.size() >= 16 ? get16(m.data() + 14) : 0, m.size() > 16 ? m[16] : 0);
                        fail(index);
                        return false;
                    }
                    c.peer = get16(m.data() + 12);
                    on_established(index);
                    return true;
                case CallState::WaitCdn:
                    if (type != kCdn) break;
                    if (get16(m.data() + 12) != c.peer) ++cdn_wrong_call_;
                    c.state = CallState::WaitStopRp;
                    send_msg(index, stop_message(kStopRq));
                    break;
                case CallState::WaitStopRp:
                    if (type != kStopRp) break;
                    epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
                    close(c.fd);
                    c.fd = -1;
                    c.state = CallState::Done;
                    return true;
                default: break;
            }
            if (c.state == CallState::Failed) return false;
        }
        if (eof && c.state != CallState::Done && c.state != CallState::Up) {
            fail(index);
        }
        (void)setup_phase;
        return false;
    }

    // Runs the epoll loop until `pending` reaches 0 or the deadline passes.
    // `launch` starts the next call (returns false when none is left).
    template <typename Launch>
    void control_loop(std::size_t& in_flight, Launch launch, bool setup_phase, std::uint64_t deadline,
                      std::uint64_t& failed) {
        std::array<epoll_event, 512> events{};
        while (launch() || in_flight > 0) {
            if (mono_ns() > deadline) {
                std::fprintf(stderr, "pptp-bench pns: control phase timed out with %zu in flight\n", in_flight);
                for (std::uint32_t i = 0; i < calls_.size(); ++i) {
                    const CallState s = calls_[i].state;
                    if (s == CallState::Connecting || s == CallState::WaitSccrp || s == CallState::WaitOcrp ||
                        s == CallState::WaitCdn || s == CallState::WaitStopRp) {
                        fail(i);
                        ++failed;
                    }
                }
                in_flight = 0;
                return;
            }
            if (in_flight == 0) continue;
            const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 100);
            for (int k = 0; k < n; ++k) {
                const auto index = static_cast<std::uint32_t>(events[static_cast<std::size_t>(k)].data.u64);
                const std::uint32_t ev = events[static_cast<std::size_t>(k)].events;
                PnsCall& c = calls_[index];
                if (c.fd < 0) continue;
                const CallState before = c.state;
                bool reached = false;
                if (c.state == CallState::Connecting) {
                    int err = 0;
                    socklen_t len = sizeof(err);
                    getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                    if (err != 0 || (ev & (EPOLLERR | EPOLLHUP)) != 0) {
                        fail(index);
                    } else {
                        c.state = CallState::WaitSccrp;
                        if (!c.out.send(c.fd, start_message(kSccrq, 0))) {
                            fail(index);
                        } else {
                            c.want_write = !c.out.pending.empty();
                            watch(index, EPOLLIN | (c.want_write ? EPOLLOUT : 0U), EPOLL_CTL_MOD);
                        }
                    }
                } else {
                    if ((ev & EPOLLOUT) != 0 && !c.out.flush(c.fd)) fail(index);
                    if (c.state != CallState::Failed && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
                        reached = on_readable(index, setup_phase);
                    }
                    if (c.fd >= 0 && c.state != CallState::Failed) {
                        const bool want = !c.out.pending.empty();
                        if (want != c.want_write) {
                            c.want_write = want;
                            watch(index, EPOLLIN | (want ? EPOLLOUT : 0U), EPOLL_CTL_MOD);
                        }
                    }
                }
                if (reached) {
                    --in_flight;
                } else if (c.state == CallState::Failed && before != CallState::Failed) {
                    --in_flight;
                    ++failed;
                }
            }
        }
    }

    // Sets up calls [begin, end), at most --window at a time; they join *active_.
    double setup(std::uint32_t begin, std::uint32_t end) {
        const std::uint64_t start = mono_ns();
        const auto deadline = start + static_cast<std::uint64_t>(o_.setup_timeout * 1e9);
        const std::size_t up0 = active_->size();
        std::uint32_t next = begin;
        std::size_t in_flight = 0;
        auto launch = [&] {
            bool any = false;
            while (in_flight < o_.window && next < end) {
                if (start_connect(next)) {
                    ++in_flight;
                } else {
                    ++setup_failed_;
                }
                ++next;
                any = true;
            }
            return any || next < end;
        };
        const std::uint64_t failed0 = setup_failed_;
        control_loop(in_flight, launch, true, deadline, setup_failed_);
        const double s = static_cast<double>(mono_ns() - start) / 1e9;
        const std::size_t up = active_->size() - up0;
        std::fprintf(stderr, "pptp-bench pns: %zu of %u calls up in %.3f s (%.0f calls/s), %" PRIu64 " failed\n", up,
                     end - begin, s, static_cast<double>(up) / s, setup_failed_ - failed0);
        return s;
    }

    // Tears down the calls in `list` (those up), at most --window at a time.
    double teardown(const std::vector<std::uint32_t>& list) {
        const std::uint64_t start = mono_ns();
        const auto deadline = start + static_cast<std::uint64_t>(o_.setup_timeout * 1e9);
        std::size_t next = 0;
        std::size_t in_flight = 0;
        auto launch = [&] {
            while (in_flight < o_.window && next < list.size()) {
                const std::uint32_t index = list[next++];
                PnsCall& c = calls_[index];
                if (c.fd < 0 || c.state != CallState::Up) {
                    ++teardown_failed_;
                    continue;
                }
                c.state = CallState::WaitCdn;
                send_msg(index, ccrq(c.own));
                if (c.state == CallState::Failed) {
                    ++teardown_failed_;
                } else {
                    ++in_flight;
                }
            }
            return next < list.size();
        };
        const std::uint64_t failed0 = teardown_failed_;
        control_loop(in_flight, launch, false, deadline, teardown_failed_);
        std::uint64_t down = 0;
        for (const std::uint32_t index : list) {
            if (calls_[index].state == CallState::Done) ++down;
        }
        torn_down_ += down;
        for (auto& c : calls_) {
            if (c.fd >= 0) {
                close(c.fd);
                c.fd = -1;
            }
        }
        const double s = static_cast<double>(mono_ns() - start) / 1e9;
        std::fprintf(stderr, "pptp-bench pns: %" PRIu64 " calls torn down in %.3f s, %" PRIu64 " failed\n", down, s,
                     teardown_failed_ - failed0);
        if (&list == &up_) {
            main_torn_down_ = down;
            main_teardown_failed_ = teardown_failed_ - failed0;
        }
        return s;
    }

    // Echoes of the one packet each call sent when it came up.
    void collect_primes() {
        const std::uint64_t deadline = mono_ns() + 3000000000ULL;
        std::array<std::uint8_t, kMaxPacket> buffer{};
        while (primes_echoed_ + prime_bad_key_ < primes_sent_ && mono_ns() < deadline) {
            const ssize_t n = recv(gre_, buffer.data(), buffer.size(), 0);
            if (n <= 0) continue;
            std::size_t off = 0;
            const auto g = parse_gre_packet(buffer.data(), static_cast<std::size_t>(n), &off);
            if (!g || g->payload_length < kPayloadHeader || get32(g->payload) != kPrimeMagic) continue;
            const std::uint32_t index = get32(g->payload + 4);
            if (index >= calls_.size()) continue;
            if (g->call_id != calls_[index].own) {
                ++prime_bad_key_;
                continue;
            }
            if (!calls_[index].prime_echoed) {
                calls_[index].prime_echoed = true;
                ++primes_echoed_;
            }
        }
        std::fprintf(stderr,
                     "pptp-bench pns: %" PRIu64 " of %" PRIu64 " first packets echoed, %" PRIu64 " with a wrong key\n",
                     primes_echoed_, primes_sent_, prime_bad_key_);
    }

    // ---- data plane
    struct RxShared {
        std::atomic<bool> stop{false};
        std::atomic<std::uint64_t> activity{0};
        std::atomic<std::uint64_t> origin{0};  // when sending began (mono ns): second 0 of the slices
    };

    void receive_loop(PhaseResult& r, RxShared& shared, std::uint32_t phase, std::uint64_t cap,
                      std::vector<std::uint64_t>& seen) {
        const double cpu0 = thread_cpu_seconds();
        constexpr unsigned kBatch = 64;
        constexpr std::size_t kControl = CMSG_SPACE(sizeof(timespec)) + 64;
        std::vector<std::array<std::uint8_t, kMaxPacket>> buffers(kBatch);
        std::vector<std::array<std::uint8_t, kControl>> controls(kBatch);
        std::array<mmsghdr, kBatch> msgs{};
        std::array<iovec, kBatch> iov{};
        std::array<sockaddr_in, kBatch> from{};
        const std::uint32_t n_up = static_cast<std::uint32_t>(up_.size());
        std::vector<std::uint16_t> expected_key(calls_.size());
        for (std::size_t i = 0; i < calls_.size(); ++i) expected_key[i] = calls_[i].own;
        while (!shared.stop.load(std::memory_order_relaxed)) {
            for (unsigned i = 0; i < kBatch; ++i) {
                iov[i] = {buffers[i].data(), buffers[i].size()};
                msgs[i].msg_hdr = {};
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
                msgs[i].msg_hdr.msg_control = controls[i].data();
                msgs[i].msg_hdr.msg_controllen = kControl;
            }
            const int n = recvmmsg(gre_, msgs.data(), kBatch, MSG_WAITFORONE, nullptr);
            if (n <= 0) continue;
            // CLOCK_MONOTONIC of a CLOCK_REALTIME kernel receive stamp.
            const std::uint64_t mono_now = mono_ns();
            const std::uint64_t real_now = clock_ns(CLOCK_REALTIME);
            const auto offset = static_cast<std::int64_t>(real_now - mono_now);
            for (int k = 0; k < n; ++k) {
                const auto i = static_cast<std::size_t>(k);
                std::uint64_t rx = mono_now;
                for (cmsghdr* cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm != nullptr;
                     cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                        timespec ts{};
                        std::memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
                        const auto real = static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
                        rx = static_cast<std::uint64_t>(real - offset);
                        r.kernel_timestamps = true;
                    }
                }
                if (ntohl(from[i].sin_addr.s_addr) != o_.server) {
                    ++r.bad_source;
                    continue;
                }
                std::size_t off = 0;
                const auto g = parse_gre_packet(buffers[i].data(), msgs[i].msg_len, &off);
                if (!g || g->payload_length < kPayloadHeader) {
                    ++r.not_pptp;
                    continue;
                }
                const std::uint32_t magic = get32(g->payload);
                if (magic == kPrimeMagic) {
                    ++r.late_primes;
                    continue;
                }
                if (magic != kDataMagic) {
                    ++r.unknown;
                    continue;
                }
                if (get32(g->payload + 24) != phase) {
                    ++r.stale;
                    continue;
                }
                const std::uint32_t index = get32(g->payload + 4);
                const std::uint64_t seq = get64(g->payload + 8);
                const std::uint64_t sent_at = get64(g->payload + 16);
                if (index >= calls_.size() || seq >= cap) {
                    ++r.unknown;
                    continue;
                }
                if (g->call_id != expected_key[index]) {
                    ++r.bad_key;
                    continue;
                }
                if (up_[seq % n_up] != index) {
                    ++r.wrong_call;
                    continue;
                }
                std::uint64_t& word = seen[seq / 64U];
                const std::uint64_t bit = 1ULL << (seq % 64U);
                if ((word & bit) != 0) {
                    ++r.duplicates;
                    continue;
                }
                word |= bit;
                ++r.received;
                r.bytes_received += g->payload_length;
                r.rtt.add(static_cast<std::int64_t>(rx) - static_cast<std::int64_t>(sent_at));
                const std::uint64_t origin = shared.origin.load(std::memory_order_acquire);
                if (origin != 0 && sent_at >= origin) {
                    const std::uint64_t slice = (sent_at - origin) / 1000000000ULL;
                    if (slice < r.slices.size()) {
                        r.slices[slice].add(static_cast<std::int64_t>(rx) - static_cast<std::int64_t>(sent_at));
                    }
                }
            }
            shared.activity.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
        }
        r.receiver_cpu = thread_cpu_seconds() - cpu0;
    }

    PhaseResult traffic(const std::string& name, double rate, double seconds, std::uint32_t phase) {
        PhaseResult r;
        r.name = name;
        r.target_rate = rate;
        if (up_.empty()) return r;
        sync((name + "_start").c_str());
        const auto n_up = static_cast<std::uint32_t>(up_.size());
        // Bounded memory: one bit per packet, at most 4 Mpps for the phase.
        const auto cap = static_cast<std::uint64_t>(4e6 * seconds) + 1000000U;
        std::vector<std::uint64_t> seen(cap / 64U + 1, 0);
        RxShared shared;
        r.slices.resize(static_cast<std::size_t>(std::ceil(seconds)));
        const std::uint64_t drops0 = raw_socket_drops(gre_);
        std::thread receiver([&] { receive_loop(r, shared, phase, cap, seen); });

        const unsigned batch = std::max(1U, std::min(o_.batch, 64U));
        std::vector<std::vector<std::uint8_t>> packets(batch, std::vector<std::uint8_t>(kGreHeader + o_.payload));
        std::vector<mmsghdr> msgs(batch);
        std::vector<iovec> iov(batch);
        sockaddr_in to = sockaddr_of(o_.server, 0);
        for (unsigned i = 0; i < batch; ++i) {
            for (std::size_t b = kGreHeader + kPayloadHeader; b < packets[i].size(); ++b) {
                packets[i][b] = static_cast<std::uint8_t>(b);
            }
            iov[i] = {packets[i].data(), packets[i].size()};
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &to;
            msgs[i].msg_hdr.msg_namelen = sizeof(to);
        }
        const double cpu0 = thread_cpu_seconds();
        const std::uint64_t start = mono_ns();
        shared.origin.store(start, std::memory_order_release);
        const std::uint64_t end = start + static_cast<std::uint64_t>(seconds * 1e9);
        std::uint64_t seq = 0;
        std::uint64_t now = start;
        while (now < end && seq + batch < cap) {
            unsigned count = batch;
            if (rate > 0) {
                // Packets due by now; sleep until the next one when none is.
                const auto due = static_cast<std::uint64_t>(static_cast<double>(now - start) * rate / 1e9) + 1;
                if (due <= seq) {
                    const auto next_at = start + static_cast<std::uint64_t>(static_cast<double>(seq) * 1e9 / rate);
                    timespec ts{static_cast<time_t>(next_at / 1000000000ULL),
                                static_cast<long>(next_at % 1000000000ULL)};
                    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
                    now = mono_ns();
                    continue;
                }
                count = static_cast<unsigned>(std::min<std::uint64_t>(due - seq, batch));
            }
            for (unsigned i = 0; i < count; ++i) {
                const std::uint64_t s = seq + i;
                const std::uint32_t index = up_[s % n_up];
                fill_gre(packets[i].data(), calls_[index].peer, static_cast<std::uint32_t>(s));
                fill_payload(packets[i].data() + kGreHeader, kDataMagic, index, s, mono_ns(), phase);
            }
            const int sent = sendmmsg(gre_, msgs.data(), count, 0);
            const unsigned ok = sent > 0 ? static_cast<unsigned>(sent) : 0U;
            r.sent += ok;
            r.send_errors += count - ok;
            seq += count;  // unsent sequence numbers are simply never echoed
            now = mono_ns();
        }
        r.seconds = static_cast<double>(now - start) / 1e9;
        r.sender_cpu = thread_cpu_seconds() - cpu0;
        // Drain: until nothing arrived for 200 ms, at most 2 s.
        const std::uint64_t drain_end = mono_ns() + 2000000000ULL;
        std::uint64_t last = shared.activity.load();
        std::uint64_t quiet_since = mono_ns();
        while (mono_ns() < drain_end) {
            usleep(20000);
            const std::uint64_t a = shared.activity.load();
            if (a != last) {
                last = a;
                quiet_since = mono_ns();
            } else if (mono_ns() - quiet_since > 200000000ULL) {
                break;
            }
        }
        shared.stop.store(true);
        receiver.join();
        r.rx_socket_drops = raw_socket_drops(gre_) - drops0;
        std::fprintf(
            stderr,
            "pptp-bench pns: %s: sent %" PRIu64 " (%.0f pps offered), echoed %" PRIu64
            " (%.0f pps), loss %.2f%%, bad key %" PRIu64 ", p50 %.0f us, p99 %.0f us\n",
            name.c_str(), r.sent, static_cast<double>(r.sent) / r.seconds, r.received,
            static_cast<double>(r.received) / r.seconds,
            r.sent ? 100.0 * static_cast<double>(r.sent - std::min(r.sent, r.received)) / static_cast<double>(r.sent)
                   : 0.0,
            r.bad_key, r.rtt.quantile(0.5), r.rtt.quantile(0.99));
        sync((name + "_done").c_str());
        return r;
    }

    PnsOptions o_;
    int gre_ = -1;
    int epoll_ = -1;
    std::vector<PnsCall> calls_;
    std::vector<std::uint32_t> up_;              // the main calls that came up (the traffic goes over these)
    std::vector<std::uint32_t> rate_up_;         // those of the setup-rate phase
    std::vector<std::uint32_t>* active_ = &up_;  // where calls coming up go
    std::uint64_t setup_failed_ = 0, teardown_failed_ = 0, torn_down_ = 0, cdn_wrong_call_ = 0;
    std::uint64_t primes_sent_ = 0, primes_echoed_ = 0, prime_bad_key_ = 0;
    // The main calls' own figures (before the setup-rate phase adds to the totals).
    std::uint64_t main_setup_failed_ = 0, main_primes_sent_ = 0, main_primes_echoed_ = 0, main_prime_bad_key_ = 0;
    std::uint64_t main_torn_down_ = 0, main_teardown_failed_ = 0;
};

// ---------------------------------------------------------------- options

void usage(int rc) {
    std::fprintf(rc == 0 ? stdout : stderr,
                 "usage:\n"
                 "  pptp-bench pac --listen ADDR [--first-call-id ID]\n"
                 "  pptp-bench pns --server ADDR [--calls N] [--payload BYTES] [--seconds T] [--rate PPS]\n"
                 "                 [--paced-rate PPS --paced-seconds T] [--first-call-id ID] [--window W]\n"
                 "                 [--batch B] [--setup-calls M] [--setup-timeout S] [--sync] [--json]\n"
                 "--rate 0 (default): as fast as the generator goes. --payload: PPP payload bytes (>= %zu).\n"
                 "--setup-calls M: after the teardown, set up M more calls and tear them down (setup rate).\n"
                 "--sync: print 'SYNC <label>' at each phase boundary and wait for a line on stdin.\n",
                 kPayloadHeader);
    std::exit(rc);
}

double number(const char* text, const char* what) {
    char* end = nullptr;
    const double v = std::strtod(text, &end);
    if (end == text || *end != '\0' || v < 0) die(std::string("bad ") + what + ": " + text);
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) usage(1);
    const std::string role = argv[1];
    if (role == "-h" || role == "--help") usage(0);
    auto value = [&](int& i) -> const char* {
        if (i + 1 >= argc) die(std::string("missing value for ") + argv[i]);
        return argv[++i];
    };
    if (role == "pac") {
        PacOptions o;
        bool have_listen = false;
        for (int i = 2; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--listen") {
                o.listen = parse_ip(value(i));
                have_listen = true;
            } else if (a == "--first-call-id") {
                o.first_call_id = static_cast<std::uint16_t>(number(value(i), "--first-call-id"));
            } else {
                usage(1);
            }
        }
        if (!have_listen) usage(1);
        return Pac(o).run();
    }
    if (role == "pns") {
        PnsOptions o;
        bool have_server = false;
        for (int i = 2; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--server") {
                o.server = parse_ip(value(i));
                have_server = true;
            } else if (a == "--calls") {
                o.calls = static_cast<std::uint32_t>(number(value(i), "--calls"));
            } else if (a == "--payload") {
                o.payload = static_cast<std::size_t>(number(value(i), "--payload"));
            } else if (a == "--seconds") {
                o.seconds = number(value(i), "--seconds");
            } else if (a == "--rate") {
                o.rate = number(value(i), "--rate");
            } else if (a == "--paced-rate") {
                o.paced_rate = number(value(i), "--paced-rate");
            } else if (a == "--paced-seconds") {
                o.paced_seconds = number(value(i), "--paced-seconds");
            } else if (a == "--first-call-id") {
                o.first_call_id = static_cast<std::uint16_t>(number(value(i), "--first-call-id"));
            } else if (a == "--window") {
                o.window = std::max(1U, static_cast<unsigned>(number(value(i), "--window")));
            } else if (a == "--batch") {
                o.batch = static_cast<unsigned>(number(value(i), "--batch"));
            } else if (a == "--setup-timeout") {
                o.setup_timeout = number(value(i), "--setup-timeout");
            } else if (a == "--setup-calls") {
                o.setup_calls = static_cast<std::uint32_t>(number(value(i), "--setup-calls"));
            } else if (a == "--sync") {
                o.sync = true;
            } else if (a == "--json") {
                // JSON is always the last line of stdout; kept for scripts.
            } else {
                usage(1);
            }
        }
        if (!have_server) usage(1);
        return Pns(o).run();
    }
    usage(1);
}
