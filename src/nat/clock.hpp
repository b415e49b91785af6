// Time as the translation layer sees it. Injected so that expiry is tested by
// moving a manual clock, never by sleeping.
#pragma once

#include <chrono>

namespace nat {

using Instant = std::chrono::steady_clock::time_point;
using Seconds = std::chrono::seconds;

class Clock {
public:
    virtual ~Clock() = default;
    [[nodiscard]] virtual Instant now() const = 0;
};

class SteadyClock final : public Clock {
public:
    [[nodiscard]] Instant now() const override { return std::chrono::steady_clock::now(); }
};

// Read once per burst of packets instead of once per packet; the hot path
// needs time only to the millisecond.
class CachedClock final : public Clock {
public:
    CachedClock() { refresh(); }
    [[nodiscard]] Instant now() const override { return now_; }
    void refresh() { now_ = std::chrono::steady_clock::now(); }

private:
    Instant now_{};
};

class ManualClock final : public Clock {
public:
    [[nodiscard]] Instant now() const override { return now_; }
    void advance(std::chrono::steady_clock::duration d) { now_ += d; }

private:
    Instant now_{std::chrono::hours(1)};
};

}  // namespace nat
