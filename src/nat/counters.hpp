// Every counter the translation layer keeps, declared once. The control API,
// the logs and the tests all read them by these names.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace nat {

#define PPTP_FIXUP_EVENT_COUNTERS(X)   \
    X(packets_seen)                    \
    X(packets_accepted)                \
    X(packets_dropped)                 \
    X(packets_rewritten)               \
    X(control_packets)                 \
    X(control_messages)                \
    X(control_call_ids_rewritten)      \
    X(control_retransmits_patched)     \
    X(control_segments_held)           \
    X(control_segments_released)       \
    X(control_connections_refused)     \
    X(control_connections_reset)       \
    X(control_messages_of_ended_calls) \
    X(control_call_ids_neutralised)    \
    X(control_segments_cut)            \
    X(control_segments_replaced)       \
    X(control_call_id_fields_split)    \
    X(tcp_resets_ignored)              \
    X(tcp_fins_ignored)                \
    X(tcp_syns_ignored)                \
    X(gre_inbound)                     \
    X(gre_outbound)                    \
    X(gre_to_gateway)                  \
    X(transit_packets)                 \
    X(connections_built)               \
    X(connections_torn_down)           \
    X(calls_built)                     \
    X(calls_torn_down)                 \
    X(calls_expired)                   \
    X(calls_offloaded)                 \
    X(calls_offload_failed)            \
    X(calls_offload_withdraw_failed)   \
    X(calls_adopted)                   \
    X(control_streams_resynchronized)

// Why a packet was dropped. One counter each; names are stable API.
#define PPTP_FIXUP_DROP_REASONS(X)  \
    X(malformed_ipv4)               \
    X(ip_fragment)                  \
    X(malformed_tcp)                \
    X(control_bad_tcp_checksum)     \
    X(control_inconsistent_resend)  \
    X(control_resend_beyond_log)    \
    X(control_window_overflow)      \
    X(control_unframed_stream)      \
    X(control_bad_length)           \
    X(control_not_control_message)  \
    X(control_bad_magic_cookie)     \
    X(control_unknown_message_type) \
    X(control_bad_reserved_field)   \
    X(control_out_of_state)         \
    X(control_wrong_sender)         \
    X(control_bad_protocol_version) \
    X(control_hold_overflow)        \
    X(control_hold_timeout)         \
    X(control_unknown_call_id)      \
    X(control_call_id_undecidable)  \
    X(control_connection_limit)     \
    X(call_limit)                   \
    X(call_limit_per_host)          \
    X(call_id_space_exhausted)      \
    X(control_nat_unknown)          \
    X(gre_truncated)                \
    X(gre_not_version_1)            \
    X(gre_not_ppp)                  \
    X(gre_checksum_present)         \
    X(gre_routing_present)          \
    X(gre_key_missing)              \
    X(gre_bad_flags)                \
    X(gre_bad_payload_length)       \
    X(gre_no_matching_call)

enum class EventCounter : std::uint8_t {
#define PPTP_FIXUP_ENUM(name) name,
    PPTP_FIXUP_EVENT_COUNTERS(PPTP_FIXUP_ENUM)
#undef PPTP_FIXUP_ENUM
        count_
};

enum class DropReason : std::uint8_t {
    none,
#define PPTP_FIXUP_ENUM(name) name,
    PPTP_FIXUP_DROP_REASONS(PPTP_FIXUP_ENUM)
#undef PPTP_FIXUP_ENUM
        count_
};

[[nodiscard]] std::string_view counter_name(EventCounter c) noexcept;
[[nodiscard]] std::string_view drop_reason_name(DropReason r) noexcept;

struct Counters {
    std::array<std::uint64_t, static_cast<std::size_t>(EventCounter::count_)> events{};
    std::array<std::uint64_t, static_cast<std::size_t>(DropReason::count_)> drops{};

    void add(EventCounter c, std::uint64_t n = 1) noexcept { events[static_cast<std::size_t>(c)] += n; }
    void drop(DropReason r) noexcept { drops[static_cast<std::size_t>(r)] += 1; }
    [[nodiscard]] std::uint64_t get(EventCounter c) const noexcept { return events[static_cast<std::size_t>(c)]; }
    [[nodiscard]] std::uint64_t get(DropReason r) const noexcept { return drops[static_cast<std::size_t>(r)]; }
};

}  // namespace nat
