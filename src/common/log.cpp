#include "common/log.hpp"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace logging {
namespace {
Level g_level = Level::Info;

std::string_view level_name(Level l) {
    switch (l) {
        case Level::Error: return "error";
        case Level::Warning: return "warning";
        case Level::Notice: return "notice";
        case Level::Info: return "info";
        case Level::Debug: return "debug";
    }
    return "info";
}

bool to_journal() {
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    static const bool journal = std::getenv("JOURNAL_STREAM") != nullptr;
    return journal;
}
}  // namespace

void set_level(Level level) noexcept {
    g_level = level;
}
Level level() noexcept {
    return g_level;
}

bool parse_level(std::string_view text, Level& out) noexcept {
    for (Level l : {Level::Error, Level::Warning, Level::Notice, Level::Info, Level::Debug}) {
        if (text == level_name(l)) {
            out = l;
            return true;
        }
    }
    return false;
}

void write(Level level, std::string_view id, std::string_view message) {
    if (static_cast<int>(level) > static_cast<int>(g_level)) {
        return;
    }
    std::string line;
    line.reserve(message.size() + 64);
    if (to_journal()) {
        line += '<';
        line += static_cast<char>('0' + static_cast<int>(level));
        line += '>';
    } else {
        std::array<char, 32> stamp{};
        const std::time_t t = std::time(nullptr);
        std::tm tm{};
        gmtime_r(&t, &tm);
        (void)std::strftime(stamp.data(), stamp.size(), "%Y-%m-%dT%H:%M:%SZ ", &tm);
        line += stamp.data();
        line += level_name(level);
        line += ' ';
    }
    if (!id.empty()) {
        line += "%PPTP-";
        line += static_cast<char>('0' + static_cast<int>(level));
        line += '-';
        line += id;
        line += ": ";
    }
    line += message;
    line += '\n';
    // One write per line so concurrent writers never interleave inside a line.
    [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
}

bool RateLimiter::allow(std::uint64_t key, Clock::time_point now, std::uint64_t& suppressed) {
    if (windows_.size() >= kMaxKeys && windows_.find(key) == windows_.end()) {
        windows_.clear();  // bounded memory; at worst a key logs once more
    }
    Window& w = windows_[key];
    suppressed = 0;
    if (now - w.start >= interval_) {
        w.start = now;
        w.used = 0;
    }
    if (w.used < burst_) {
        ++w.used;
        suppressed = w.suppressed;
        w.suppressed = 0;
        return true;
    }
    ++w.suppressed;
    return false;
}

}  // namespace logging
