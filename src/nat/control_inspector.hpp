// The PPTP control inspector: frames the messages of a control connection's
// byte streams (fed in order by stream::Follower), follows RFC 2637's
// connection and call states, creates and ends calls in the table, and decides
// every Call ID field: translated, or neutralised when it names no call of
// this connection, so no Call ID the agent did not translate leaves it.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "nat/call_table.hpp"
#include "nat/counters.hpp"
#include "pptp/control_message.hpp"
#include "stream/tcp_follower.hpp"

namespace nat {

// Relative to the outside (public) interface.
enum class Direction : std::uint8_t {
    Outbound = 0,  // inside -> outside
    Inbound = 1,   // outside -> inside
    Transit = 2,   // does not cross the outside interface: left alone
};

// What to do with a well-framed control message that breaks RFC 2637's
// states (out of state, from the wrong peer, a version other than 1.0).
// Framing errors and refused calls always end the connection.
enum class ViolationPolicy : std::uint8_t {
    Reset,   // end the control connection: an RST to each peer (default)
    Accept,  // pass it on, Call IDs translated or neutralised, no state change
};

// Told about every drop and protocol violation, so the daemon can log them
// (rate-limited) with the connection they belong to.
class DropObserver {
public:
    virtual ~DropObserver() = default;
    virtual void packet_dropped(DropReason reason, std::uint32_t source, std::uint32_t destination) = 0;
    virtual void control_violation(const ControlConnection& conn, DropReason reason, std::string_view message,
                                   bool reset) = 0;
    virtual void call_refused(const ControlConnection& conn, std::uint16_t call_id, DropReason reason) = 0;
};

class ControlInspector {
public:
    ControlInspector(CallTable& table, Counters& counters, DropObserver* observer, const ViolationPolicy& policy);

    // The inspector as the follower's consumer, for one connection.
    class Binding final : public stream::StreamConsumer {
    public:
        Binding(ControlInspector& inspector, ControlConnection& conn) : inspector_(inspector), conn_(conn) {}
        [[nodiscard]] std::size_t takeable(std::size_t side, std::span<const std::uint8_t> bytes) const override;
        stream::Take take(std::size_t side, std::span<const std::uint8_t> bytes, stream::FieldWriter& fields) override;
        stream::Take take_field_start(std::size_t side, std::span<const std::uint8_t> bytes,
                                      stream::FieldWriter& fields, std::size_t& taken) override;

    private:
        ControlInspector& inspector_;
        ControlConnection& conn_;
    };

    [[nodiscard]] Binding bind(ControlConnection& conn) { return Binding(*this, conn); }
    // A segment whose payload starts with a valid header: framing is certain
    // there, so a stream the agent did not see open can be picked up.
    [[nodiscard]] static bool starts_message(std::span<const std::uint8_t> payload) noexcept;
    // Why the latest Take::Reset was asked for.
    [[nodiscard]] DropReason reset_reason() const noexcept { return reset_reason_; }

private:
    struct Rewrite {
        std::size_t offset = 0;  // within the message
        std::uint16_t value = 0;
    };
    struct Outcome {
        DropReason violation = DropReason::none;
        bool refuse = false;     // the call cannot be had: end the connection
        bool ignore = false;     // pass the message, no state change
        std::uint64_t call = 0;  // the call the message is about (its serial), 0 if none
        std::array<Rewrite, 2> rewrites{};
        std::size_t rewrite_count = 0;
        void rewrite(std::size_t offset, std::uint16_t value) { rewrites[rewrite_count++] = Rewrite{offset, value}; }
    };

    [[nodiscard]] static std::size_t takeable(const MessageCursor& cursor, std::span<const std::uint8_t> bytes);
    stream::Take take(ControlConnection& conn, Direction dir, std::span<const std::uint8_t> bytes,
                      stream::FieldWriter& fields);
    stream::Take take_field_start(ControlConnection& conn, Direction dir, std::span<const std::uint8_t> bytes,
                                  stream::FieldWriter& fields, std::size_t& taken);
    // The second byte of a split field: the whole decision, made to agree
    // with the first byte that went already.
    Outcome finish_split_field(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                               std::size_t at, stream::FieldWriter& fields);
    // A value with the given high byte that names no call in the receiver's
    // Call ID space on this connection.
    [[nodiscard]] std::uint16_t unused_value(const ControlConnection& conn, Direction dir, std::uint8_t high) const;
    Outcome check_message_start(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header);
    Outcome decide_call_ids(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                            std::span<const std::uint8_t> prefix);
    // The fields of a message about an existing call, translated; a value
    // that names no call of the connection is neutralised.
    Outcome translate_fields(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                             std::span<const std::uint8_t> prefix);
    Outcome message_complete(ControlConnection& conn, Direction dir, const pptp::ControlHeader& header,
                             std::span<const std::uint8_t> prefix, std::uint64_t call_serial);
    Outcome refused(ControlConnection& conn, std::uint16_t call_id, CallError error);
    stream::Take reset(ControlConnection& conn, DropReason reason, std::string_view what);

    CallTable& table_;
    Counters& counters_;
    DropObserver* observer_;
    const ViolationPolicy& policy_;
    DropReason reset_reason_ = DropReason::none;
};

}  // namespace nat
