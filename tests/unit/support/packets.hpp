// Test-side packet construction. Checksums here come from a reference
// implementation written independently of src/pptp/inet.cpp, so a test that
// compares the two really checks the rewrite.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace testpkt {

using Bytes = std::vector<std::uint8_t>;

inline void put16(Bytes& b, std::size_t at, std::uint16_t v) {
    b[at] = static_cast<std::uint8_t>(v >> 8);
    b[at + 1] = static_cast<std::uint8_t>(v);
}
inline void put32(Bytes& b, std::size_t at, std::uint32_t v) {
    put16(b, at, static_cast<std::uint16_t>(v >> 16));
    put16(b, at + 2, static_cast<std::uint16_t>(v));
}
inline std::uint16_t get16(const Bytes& b, std::size_t at) {
    return static_cast<std::uint16_t>((b[at] << 8) | b[at + 1]);
}
inline std::uint32_t get32(const Bytes& b, std::size_t at) {
    return (static_cast<std::uint32_t>(get16(b, at)) << 16) | get16(b, at + 2);
}

// RFC 1071, the straightforward way: 32-bit accumulator, fold at the end.
inline std::uint16_t reference_checksum(const std::uint8_t* data, std::size_t len, std::uint32_t sum = 0) {
    for (std::size_t i = 0; i < len; ++i) {
        sum += (i % 2 == 0) ? static_cast<std::uint32_t>(data[i]) << 8 : data[i];
    }
    while (sum >> 16) {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    return static_cast<std::uint16_t>(~sum);
}

inline bool ipv4_checksum_ok(const Bytes& p) {
    const std::size_t ihl = (p[0] & 0x0F) * 4u;
    return reference_checksum(p.data(), ihl) == 0;
}

inline bool tcp_checksum_ok(const Bytes& p) {
    const std::size_t ihl = (p[0] & 0x0F) * 4u;
    const std::size_t tcp_len = get16(p, 2) - ihl;
    std::uint32_t pseudo =
        get16(p, 12) + get16(p, 14) + get16(p, 16) + get16(p, 18) + 6u + static_cast<std::uint32_t>(tcp_len);
    return reference_checksum(p.data() + ihl, tcp_len, pseudo) == 0;
}

inline Bytes ipv4(std::uint32_t src, std::uint32_t dst, std::uint8_t proto, const Bytes& l4) {
    Bytes p(20 + l4.size());
    p[0] = 0x45;
    put16(p, 2, static_cast<std::uint16_t>(p.size()));
    put16(p, 4, 0x1234);
    p[6] = 0x40;  // DF
    p[8] = 64;
    p[9] = proto;
    put32(p, 12, src);
    put32(p, 16, dst);
    put16(p, 10, reference_checksum(p.data(), 20));
    std::copy(l4.begin(), l4.end(), p.begin() + 20);
    return p;
}

enum TcpFlags : std::uint8_t { FIN = 0x01, SYN = 0x02, RST = 0x04, PSH = 0x08, ACK = 0x10 };

inline Bytes tcp_packet(std::uint32_t src, std::uint32_t dst, std::uint16_t sport, std::uint16_t dport,
                        std::uint32_t seq, std::uint8_t flags, const Bytes& payload, std::uint32_t ack = 1) {
    Bytes seg(20 + payload.size());
    put16(seg, 0, sport);
    put16(seg, 2, dport);
    put32(seg, 4, seq);
    put32(seg, 8, ack);
    seg[12] = 0x50;
    seg[13] = flags;
    put16(seg, 14, 64240);
    std::copy(payload.begin(), payload.end(), seg.begin() + 20);
    Bytes p = ipv4(src, dst, 6, seg);
    std::uint32_t pseudo =
        (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6u + static_cast<std::uint32_t>(seg.size());
    put16(p, 20 + 16, reference_checksum(p.data() + 20, seg.size(), pseudo));
    return p;
}

inline Bytes tcp_payload(const Bytes& packet) {
    const std::size_t ihl = (packet[0] & 0x0F) * 4u;
    const std::size_t doff = (packet[ihl + 12] >> 4) * 4u;
    return Bytes(packet.begin() + static_cast<long>(ihl + doff), packet.end());
}

// Enhanced GRE (RFC 2637 4.1) with sequence number and a payload.
inline Bytes gre_packet(std::uint32_t src, std::uint32_t dst, std::uint16_t call_id, const Bytes& payload,
                        std::uint16_t flags = 0x3001 /* K, S, version 1 */, std::uint16_t protocol = 0x880B) {
    Bytes g(12 + payload.size());
    put16(g, 0, flags);
    put16(g, 2, protocol);
    put16(g, 4, static_cast<std::uint16_t>(payload.size()));
    put16(g, 6, call_id);
    put32(g, 8, 1);
    std::copy(payload.begin(), payload.end(), g.begin() + 12);
    return ipv4(src, dst, 47, g);
}

// PPTP control messages, laid out field by field from RFC 2637 section 2.
inline Bytes control(std::uint16_t type, std::size_t size) {
    Bytes m(size);
    put16(m, 0, static_cast<std::uint16_t>(size));
    put16(m, 2, 1);
    put32(m, 4, 0x1A2B3C4D);
    put16(m, 8, type);
    return m;
}
inline Bytes sccrq() {
    Bytes m = control(1, 156);
    put16(m, 12, 0x0100);
    put32(m, 16, 1);  // framing: async
    put32(m, 20, 1);  // bearer: analog
    put16(m, 24, 0);
    put16(m, 26, 1);
    return m;
}
inline Bytes sccrp(std::uint8_t result = 1) {
    Bytes m = control(2, 156);
    put16(m, 12, 0x0100);
    m[14] = result;
    return m;
}
inline Bytes stop_request() {
    return control(3, 16);
}
inline Bytes stop_reply() {
    Bytes m = control(4, 16);
    m[12] = 1;
    return m;
}
inline Bytes echo_request(std::uint32_t id) {
    Bytes m = control(5, 16);
    put32(m, 12, id);
    return m;
}
inline Bytes echo_reply(std::uint32_t id) {
    Bytes m = control(6, 20);
    put32(m, 12, id);
    m[16] = 1;
    return m;
}
inline Bytes ocrq(std::uint16_t call_id, std::uint16_t serial = 1) {
    Bytes m = control(7, 168);
    put16(m, 12, call_id);
    put16(m, 14, serial);
    put32(m, 16, 2400);
    put32(m, 20, 10000000);
    put32(m, 24, 3);
    put32(m, 28, 3);
    put16(m, 32, 64);
    return m;
}
inline Bytes ocrp(std::uint16_t call_id, std::uint16_t peer_call_id, std::uint8_t result = 1) {
    Bytes m = control(8, 32);
    put16(m, 12, call_id);
    put16(m, 14, peer_call_id);
    m[16] = result;
    put32(m, 20, 10000000);
    put16(m, 24, 64);
    return m;
}
inline Bytes icrq(std::uint16_t call_id, std::uint16_t serial = 1) {
    Bytes m = control(9, 220);
    put16(m, 12, call_id);
    put16(m, 14, serial);
    return m;
}
inline Bytes icrp(std::uint16_t call_id, std::uint16_t peer_call_id, std::uint8_t result = 1) {
    Bytes m = control(10, 24);
    put16(m, 12, call_id);
    put16(m, 14, peer_call_id);
    m[16] = result;
    return m;
}
inline Bytes iccn(std::uint16_t peer_call_id) {
    Bytes m = control(11, 28);
    put16(m, 12, peer_call_id);
    return m;
}
inline Bytes ccrq(std::uint16_t call_id) {
    Bytes m = control(12, 16);
    put16(m, 12, call_id);
    return m;
}
inline Bytes cdn(std::uint16_t call_id) {
    Bytes m = control(13, 148);
    put16(m, 12, call_id);
    m[14] = 1;
    return m;
}
inline Bytes wen(std::uint16_t peer_call_id) {
    Bytes m = control(14, 40);
    put16(m, 12, peer_call_id);
    return m;
}
inline Bytes sli(std::uint16_t peer_call_id) {
    Bytes m = control(15, 24);
    put16(m, 12, peer_call_id);
    return m;
}

inline Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) {
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

}  // namespace testpkt
