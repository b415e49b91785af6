// Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).
// Run after changing a target's input format:
//   build/fuzz/tests/fuzz/make_seeds tests/fuzz/corpus
// Inputs are laid out for FuzzedDataProvider: bytes taken with ConsumeBytes
// come from the front, integers from the back, last byte first.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/packets.hpp"

using testpkt::Bytes;
namespace fs = std::filesystem;

namespace {

class Provider {
public:
    void bytes(const Bytes& b) { front_.insert(front_.end(), b.begin(), b.end()); }
    // As ConsumeIntegralInRange(min, max) returning `value`.
    void integer(std::uint64_t min, std::uint64_t max, std::uint64_t value) {
        const std::uint64_t range = max - min;
        std::vector<std::uint8_t> be;
        for (unsigned offset = 0; offset < 64 && (range >> offset) > 0; offset += 8) {
            be.insert(be.begin(), static_cast<std::uint8_t>((value - min) >> offset));
        }
        // The first byte consumed is the most significant.
        back_.insert(back_.end(), be.begin(), be.end());
    }
    void boolean(bool b) { integer(0, 255, b ? 1 : 0); }
    void u32(std::uint32_t v) { integer(0, 0xFFFFFFFFULL, v); }
    [[nodiscard]] Bytes data() const {
        Bytes out = front_;
        out.insert(out.end(), back_.rbegin(), back_.rend());
        return out;
    }

private:
    Bytes front_;
    Bytes back_;
};

void write(const fs::path& dir, const std::string& name, const Bytes& data) {
    fs::create_directories(dir);
    std::ofstream(dir / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

struct Cut {
    bool inbound;
    std::size_t start;
    std::size_t length;
};

Bytes stream_seed(const Bytes& out, const Bytes& in, const std::vector<Cut>& cuts) {
    Provider p;
    p.boolean(false);  // public IDs 65530-65535: every Call ID gets rewritten
    p.integer(0, 600, out.size());
    p.bytes(out);
    p.integer(0, 600, in.size());
    p.bytes(in);
    p.u32(0x10000000);
    p.u32(0xFFFFFF00);  // wraps during the stream
    for (const Cut& c : cuts) {
        const Bytes& s = c.inbound ? in : out;
        p.boolean(c.inbound);
        p.integer(0, 15, 1);
        p.integer(0, s.size() - 1, c.start);
        p.integer(1, s.size() - c.start, c.length);
    }
    return p.data();
}

}  // namespace

int main(int argc, char** argv) {
    using namespace testpkt;
    const fs::path root = argc > 1 ? argv[1] : "tests/fuzz/corpus";

    const std::vector<std::pair<std::string, Bytes>> messages = {{"sccrq", sccrq()},
                                                                 {"sccrp", sccrp()},
                                                                 {"stopccrq", stop_request()},
                                                                 {"stopccrp", stop_reply()},
                                                                 {"echorq", echo_request(1)},
                                                                 {"echorp", echo_reply(1)},
                                                                 {"ocrq", ocrq(7)},
                                                                 {"ocrp", ocrp(300, 7)},
                                                                 {"icrq", icrq(500)},
                                                                 {"icrp", icrp(9, 500)},
                                                                 {"iccn", iccn(9)},
                                                                 {"ccrq", ccrq(7)},
                                                                 {"cdn", cdn(300)},
                                                                 {"wen", wen(7)},
                                                                 {"sli", sli(300)}};
    for (const auto& [name, m] : messages) {
        write(root / "fuzz_control_message", name, m);
    }
    Bytes bad = ocrq(7);
    put32(bad, 4, 0xDEADBEEF);
    write(root / "fuzz_control_message", "bad-magic", bad);

    write(root / "fuzz_gre", "gre-data", gre_packet(1, 2, 7, Bytes(20, 0xAA)));
    write(root / "fuzz_gre", "gre-ack", gre_packet(1, 2, 7, {}, 0x2081));
    write(root / "fuzz_gre", "gre-v0", gre_packet(1, 2, 7, Bytes(8, 0), 0x2000, 0x0800));
    write(root / "fuzz_gre", "tcp", tcp_packet(1, 2, 40000, 1723, 1, ACK, ocrq(7)));

    const Bytes out = concat({sccrq(), ocrq(7), echo_request(1), ccrq(7), stop_request()});
    const Bytes in = concat({sccrp(), ocrp(300, 7), echo_reply(1), cdn(300), stop_reply()});
    write(root / "fuzz_stream", "in-order",
          stream_seed(out, in,
                      {{false, 0, 156},
                       {true, 0, 156},
                       {false, 156, 168},
                       {true, 156, 32},
                       {false, 324, out.size() - 324},
                       {true, 188, in.size() - 188}}));
    write(root / "fuzz_stream", "split-call-id",
          stream_seed(out, in, {{false, 0, 169}, {false, 169, 155}, {true, 0, 171}, {true, 171, 17}}));
    write(root / "fuzz_stream", "out-of-order-and-resend",
          stream_seed(out, in, {{false, 200, 124}, {false, 0, 200}, {false, 0, 324}, {true, 0, in.size()}}));

    // The whole handler: handshake, control, then GRE of the live call.
    {
        Provider p;
        p.integer(1, 65535, 1);
        p.integer(1, 65535, 65535);
        p.integer(1, 64, 8);
        p.boolean(true);
        auto control = [&](bool inbound, std::uint8_t flags, const Bytes& payload) {
            p.integer(0, 9, flags == ACK ? 2 : 1);
            p.boolean(inbound);
            p.integer(0, 3, 0);
            if (flags != ACK) {
                p.integer(0, 255, flags);
            }
            p.integer(0, 400, payload.size());
            p.bytes(payload);
            p.integer(0, 7, 1);
        };
        control(false, SYN, {});
        control(true, SYN | ACK, {});
        control(false, ACK, sccrq());
        control(true, ACK, sccrp());
        control(false, ACK, ocrq(7));
        control(true, ACK, ocrp(300, 7));
        for (bool inbound : {true, false}) {
            p.integer(0, 9, 6);
            p.boolean(inbound);
            p.integer(0, 3, 0);
            p.integer(0, 65535, 0);
            p.boolean(true);  // key of a live call
            p.boolean(true);
            const Bytes payload(16, 0x5A);
            p.integer(0, 64, payload.size());
            p.bytes(payload);
            p.boolean(true);
        }
        write(root / "fuzz_packet_handler", "call", p.data());
    }
    return 0;
}
