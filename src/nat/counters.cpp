#include "nat/counters.hpp"

namespace nat {
namespace {
constexpr std::array<std::string_view, static_cast<std::size_t>(EventCounter::count_)> kEventNames{
#define PPTP_FIXUP_NAME(name) #name,
    PPTP_FIXUP_EVENT_COUNTERS(PPTP_FIXUP_NAME)
#undef PPTP_FIXUP_NAME
};
constexpr std::array<std::string_view, static_cast<std::size_t>(DropReason::count_)> kDropNames{
    "none",
#define PPTP_FIXUP_NAME(name) #name,
    PPTP_FIXUP_DROP_REASONS(PPTP_FIXUP_NAME)
#undef PPTP_FIXUP_NAME
};
}  // namespace

std::string_view counter_name(EventCounter c) noexcept {
    return kEventNames[static_cast<std::size_t>(c)];
}

std::string_view drop_reason_name(DropReason r) noexcept {
    return kDropNames[static_cast<std::size_t>(r)];
}

}  // namespace nat
