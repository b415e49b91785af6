// Logging to stderr, which systemd-journald or a terminal picks up. Messages
// that describe events carry a stable ID (like ASA's 302017) so they can be
// grepped and alerted on.
#pragma once

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
void write(Level level, std::string_view id, std::string_view message);

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
