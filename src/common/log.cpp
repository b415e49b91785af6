#include "common/log.hpp"

#include <sys/stat.h>
#include <sys/uio.h>
// Else sd_journal_sendv() adds CODE_FILE=, CODE_LINE=, CODE_FUNC= of this
// file, the same for every message.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

namespace logging {
namespace {
std::atomic<Level> g_level{Level::Info};

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

// Journal: stderr is the journal's stream, lines go as fields (or, should
// that fail, as "<N>"-prefixed lines on the stream); Terminal: anything else,
// with a time stamp and the level's name.
enum class Sink : std::uint8_t { Terminal, Journal };

Sink sink() {
    // Decided once (thread-safe static initialisation). systemd sets
    // JOURNAL_STREAM when it connects stderr to the journal; a child may
    // inherit the variable with stderr pointing elsewhere, hence the check.
    static const Sink decided = [] {
        const char* stream = std::getenv("JOURNAL_STREAM");
        if (stream == nullptr) {
            return Sink::Terminal;
        }
        struct stat st {};
        if (fstat(STDERR_FILENO, &st) == 0 && journal_stream_matches(stream, static_cast<std::uint64_t>(st.st_dev),
                                                                     static_cast<std::uint64_t>(st.st_ino))) {
            return Sink::Journal;
        }
        return Sink::Terminal;
    }();
    return decided;
}

// "SYSLOG_IDENTIFIER=<program name>", built once.
const std::string& syslog_identifier_field() {
    static const std::string field =
        std::string("SYSLOG_IDENTIFIER=") +
        (program_invocation_short_name != nullptr && *program_invocation_short_name != 0 ? program_invocation_short_name
                                                                                         : "pptp-fixupd");
    return field;
}

bool all_digits(std::string_view text) {
    for (const char c : text) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    return true;
}

// "%PPTP-6-302017: " (or nothing) and the message.
void append_text(std::string& line, Level level, std::string_view id, std::string_view message) {
    if (!id.empty()) {
        line += "%PPTP-";
        line += static_cast<char>('0' + static_cast<int>(level));
        line += '-';
        line += id;
        line += ": ";
    }
    line += message;
}

// One datagram to journald; false when it could not be sent.
bool send_to_journal(Level level, std::string_view id, std::string_view message) {
    constexpr std::string_view kMessage = "MESSAGE=";
    std::string text;
    text.reserve(kMessage.size() + message.size() + 32);
    text += kMessage;
    append_text(text, level, id, message);

    std::array<char, 11> priority{'P', 'R', 'I', 'O', 'R', 'I', 'T', 'Y', '=', '0', 0};
    priority[9] = static_cast<char>('0' + static_cast<int>(level));
    const std::string& identifier = syslog_identifier_field();

    std::array<iovec, 5> fields{};
    std::size_t n = 0;
    auto add = [&](const char* data, std::size_t size) {
        // sd_journal_sendv() reads the fields, never writes them.
        fields[n++] = iovec{const_cast<char*>(data), size};  // NOLINT(cppcoreguidelines-pro-type-const-cast)
    };
    add(text.data(), text.size());
    add(priority.data(), priority.size() - 1);
    add(identifier.data(), identifier.size());

    constexpr std::string_view kEvent = "PPTP_EVENT=";
    constexpr std::string_view kMessageId = "MESSAGE_ID=";
    std::array<char, kEvent.size() + 12> event{};
    std::array<char, kMessageId.size() + 32> message_id_field{};
    if (const MessageId mid = message_id(id); mid[0] != 0) {
        kEvent.copy(event.data(), kEvent.size());
        id.copy(event.data() + kEvent.size(), id.size());
        add(event.data(), kEvent.size() + id.size());
        kMessageId.copy(message_id_field.data(), kMessageId.size());
        std::copy(mid.begin(), mid.end() - 1, message_id_field.begin() + kMessageId.size());
        add(message_id_field.data(), message_id_field.size());
    }
    return sd_journal_sendv(fields.data(), static_cast<int>(n)) >= 0;
}
}  // namespace

MessageId message_id(std::string_view id) noexcept {
    MessageId out{};
    if (id.empty() || id.size() > 12 || !all_digits(id)) {
        return out;
    }
    kMessageIdPrefix.copy(out.data(), kMessageIdPrefix.size());
    const std::size_t pad = 12 - id.size();
    for (std::size_t i = 0; i < pad; ++i) {
        out[kMessageIdPrefix.size() + i] = '0';
    }
    id.copy(out.data() + kMessageIdPrefix.size() + pad, id.size());
    out[32] = 0;
    return out;
}

bool journal_stream_matches(std::string_view journal_stream, std::uint64_t device, std::uint64_t inode) noexcept {
    const std::size_t colon = journal_stream.find(':');
    if (colon == std::string_view::npos || colon == 0 || colon + 1 == journal_stream.size()) {
        return false;
    }
    auto number = [](std::string_view text, std::uint64_t& value) {
        const char* end = text.data() + text.size();
        auto [ptr, ec] = std::from_chars(text.data(), end, value);
        return ec == std::errc{} && ptr == end;
    };
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    return number(journal_stream.substr(0, colon), dev) && number(journal_stream.substr(colon + 1), ino) &&
           dev == device && ino == inode;
}

void set_level(Level level) noexcept {
    g_level.store(level, std::memory_order_relaxed);
}
Level level() noexcept {
    return g_level.load(std::memory_order_relaxed);
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
    if (static_cast<int>(level) > static_cast<int>(logging::level())) {
        return;
    }
    const Sink to = sink();
    if (to == Sink::Journal && send_to_journal(level, id, message)) {
        return;
    }
    std::string line;
    line.reserve(message.size() + 64);
    if (to == Sink::Journal) {
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
    append_text(line, level, id, message);
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
