// Logging to stderr, which systemd-journald or a terminal picks up. Messages
// that describe events carry a stable ID (like ASA's 302017) so they can be
// grepped and alerted on. When stderr is the journal's stream (systemd says
// so in JOURNAL_STREAM), each line goes to the journal as structured fields
// instead: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and, for a message with an
// ID, PPTP_EVENT=<ID> and MESSAGE_ID=<message_id(ID)>.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

namespace logging {

enum class Level : std::uint8_t { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

void set_level(Level level) noexcept;
[[nodiscard]] Level level() noexcept;
[[nodiscard]] bool parse_level(std::string_view text, Level& out) noexcept;

// `id` is the stable message ID (e.g. "302017"), or empty for plain messages.
// Thread-safe: one write (or one journal datagram) per line.
void write(Level level, std::string_view id, std::string_view message);

// The journal's MESSAGE_ID (128 bits as 32 lowercase hex digits, NUL
// terminated) of the stable ID `id`: a fixed 20-digit prefix, then `id`
// zero-padded to 12 digits ("302017" -> "7c1e4a0b9d2f4c38a5e6000000302017").
// All NULs when `id` is empty, longer than 12 or not all decimal digits.
inline constexpr std::string_view kMessageIdPrefix = "7c1e4a0b9d2f4c38a5e6";
using MessageId = std::array<char, 33>;
[[nodiscard]] MessageId message_id(std::string_view id) noexcept;

// Whether JOURNAL_STREAM's value ("<device>:<inode>", decimal) names the
// file with this device and inode number: systemd's documented test that
// stderr really is the journal stream and not inherited by a child whose
// stderr went elsewhere.
[[nodiscard]] bool journal_stream_matches(std::string_view journal_stream, std::uint64_t device,
                                          std::uint64_t inode) noexcept;

// Lets the first `burst` events of a key through per `interval`, then counts
// the rest and reports how many were held back when the window reopens.
class RateLimiter {
public:
    using Clock = std::chrono::steady_clock;
    RateLimiter(std::chrono::seconds interval, std::uint32_t burst) : interval_(interval), burst_(burst) {}
    // Returns true if this event may be logged; `suppressed` is set to the
    // number of events of this key held back since the last one logged.
    bool allow(std::uint64_t key, Clock::time_point now, std::uint64_t& suppressed);

private:
    static constexpr std::size_t kMaxKeys = 4096;
    struct Window {
        Clock::time_point start{};
        std::uint32_t used = 0;
        std::uint64_t suppressed = 0;
    };
    std::chrono::seconds interval_;
    std::uint32_t burst_;
    std::unordered_map<std::uint64_t, Window> windows_;
};

}  // namespace logging
