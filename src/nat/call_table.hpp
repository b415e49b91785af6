// Control connections, calls and the public Call ID allocator. Owns all
// translation state; lookups on the GRE path are O(1) hash probes that never
// allocate. Time comes from an injected Clock; nothing here does I/O.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "nat/clock.hpp"
#include "nat/counters.hpp"
#include "stream/tcp_follower.hpp"

namespace nat {

enum class CallIdAllocation : std::uint8_t {
    // Keep the inside peer's own Call ID when it is free, as PAT keeps ports.
    Preserve,
    // A random free public Call ID for every call, as MASQUERADE --random
    // does for ports: the outside cannot predict or count inside calls.
    Random,
};

struct TableConfig {
    // Host byte order. When set, every call uses it (--public-address);
    // when 0, each connection's own, learned from the kernel's NAT.
    std::uint32_t public_address = 0;
    CallIdAllocation call_id_allocation = CallIdAllocation::Preserve;
    // Seeds the random allocator; 0 takes a seed from the kernel.
    std::uint64_t random_seed = 0;
    // Range handed out as public Call IDs. 0 is left out by default: some
    // peers treat Call ID 0 as "none".
    std::uint16_t call_id_min = 1;
    std::uint16_t call_id_max = 65535;
    // Idle timeouts, as the kernel's PPTP helper has them for GRE: an
    // established call whose GRE went both ways lasts 5 hours idle
    // (PPTP_GRE_STREAM_TIMEOUT), one that never saw GRE both ways 10 minutes
    // (PPTP_GRE_TIMEOUT); setup and closing states are short-lived.
    Seconds call_idle_timeout{18000};
    Seconds call_unreplied_timeout{600};
    Seconds call_setup_timeout{120};
    Seconds control_idle_timeout{3600};
    // A control connection that has not completed its TCP handshake and
    // Start-Control-Connection exchange this long after it opened is forgotten.
    Seconds control_setup_timeout{30};
    Seconds closing_linger{10};
    // A Call ID of the gateway's own PPTP stays out of the allocator this
    // long after its last GRE (the unreplied GRE timeout).
    Seconds gateway_call_id_hold{600};
    std::size_t max_calls = 65536;
    std::size_t max_calls_per_connection = 256;
    // Per host that opened the control connections (the PNS side): one host
    // cannot take the whole call budget or an outside peer's Call ID space.
    std::size_t max_calls_per_host = 1024;
    std::size_t max_connections = 16384;
    // Per host that opened them: an inside client, or an outside client of
    // a server behind a port forward.
    std::size_t max_connections_per_host = 64;
};

// TCP control connection, keyed as seen in the FORWARD path: the inside
// peer's real address, the outside peer's address.
struct ConnectionKey {
    std::uint32_t inside_address = 0;
    std::uint32_t outside_address = 0;
    std::uint16_t inside_port = 0;
    std::uint16_t outside_port = 0;
    bool operator==(const ConnectionKey&) const = default;
};

enum class ConnectionState : std::uint8_t {
    TcpOnly,         // TCP seen, no Start-Control-Connection yet
    WaitStartReply,  // Start-Control-Connection-Request seen
    Established,     // Start-Control-Connection-Reply with result 1
    Stopping,        // Stop-Control-Connection-Request seen
    Closed,          // stopped or TCP closed; lingers for retransmissions
    Reset,           // the agent ended it (a violation, a refused call): RSTs to both peers, no byte passes
};

enum class CallState : std::uint8_t {
    Requested,    // Outgoing/Incoming-Call-Request seen, reply pending
    Established,  // both Call IDs known, reply said connected
    Clearing,     // Call-Clear-Request seen
};

enum class TeardownReason : std::uint8_t {
    CallDisconnectNotify,
    CallRejected,
    StopControlConnection,
    TcpFin,
    TcpReset,
    IdleTimeout,
    ConnectionReplaced,
    Cleared,
    Shutdown,
    CallIdSpaceExhausted,
    FixupDisabled,
    ProtocolViolation,
    CallRefused,
    NotInHaLabel,  // ended on the other gateway of an HA pair (its label no longer names it)
};

[[nodiscard]] std::string_view state_name(ConnectionState s) noexcept;
[[nodiscard]] std::string_view state_name(CallState s) noexcept;
[[nodiscard]] std::string_view teardown_reason_name(TeardownReason r) noexcept;

// Where one direction of a control connection stands in PPTP's message
// framing; the TCP side of it is the follower's (stream::DirectionState).
struct MessageCursor {
    static constexpr std::size_t kPrefixSize = 20;  // header, Call IDs, result code
    std::uint16_t message_offset = 0;               // bytes of the current message taken
    std::uint16_t message_length = 0;               // 0 while the header is incomplete
    std::array<std::uint8_t, kPrefixSize> prefix{};
    // The current message broke the protocol and passes on by policy
    // ("accept"): its Call IDs are translated, its state ignored.
    bool message_ignored = false;
    // The call the current message is about (its serial), once its Call ID
    // fields are decided; looked up again when the message completes.
    std::uint64_t message_call = 0;
    // The first byte of the current message's (only) Call ID field went on
    // alone, as `split_sent`; the second decides the rest to match it.
    bool split = false;
    std::uint8_t split_sent = 0;
};

struct Call;

struct ControlConnection {
    std::uint64_t id = 0;
    ConnectionKey key;
    ConnectionState state = ConnectionState::TcpOnly;
    Instant created{};
    Instant last_activity{};
    // The host that opened it (the PNS side, normally): limits are its.
    std::uint32_t initiator_address = 0;
    // The address the outside peer talks to, as the kernel's NAT mapped the
    // connection (its conntrack entry); 0 while unknown.
    std::uint32_t public_address = 0;
    bool opened_from_outside = false;
    // Picked up mid-stream (no SYN seen): it counts as opening, with the
    // short setup timeout, until both peers have sent data the agent took,
    // so spoofed segments cannot fill the connection limits for an hour.
    bool picked_up = false;
    stream::Flow tcp;                        // sides indexed by Direction
    std::array<MessageCursor, 2> framing{};  // indexed by Direction
    // State Reset: whether the peer that sends in each Direction has been
    // sent its RST.
    std::array<bool, 2> reset_sent{};
    // Another gateway carried the stream for a while (an HA takeover): at the
    // next data segment of each direction, one that starts a message where
    // the follower expects none is picked up there instead of waiting for
    // bytes that went elsewhere.
    std::array<bool, 2> resync_pending{};
    std::vector<Call*> calls;
    std::uint64_t messages = 0;
    // Which side (a Direction value: 0 = inside sends, 1 = outside sends)
    // sent Start-Control-Connection-Request, and which side is the PNS
    // (learned from the first call message); -1 while unknown.
    std::int8_t start_requester = -1;
    std::int8_t pns_side = -1;
    std::uint64_t violations = 0;
    // Calls that ended while the peers may still talk about them (cleared,
    // idle, refused): their IDs keep being translated in control messages
    // (no GRE), so a late Call-Clear-Request or Call-Disconnect-Notify does
    // not lose its meaning. As many as the connection may hold calls.
    struct EndedCall {
        std::uint16_t inside_call_id = 0;
        std::uint16_t public_call_id = 0;
        std::uint16_t outside_call_id = 0;
        bool outside_known = false;
    };
    static constexpr std::size_t kEndedCallsKept = 8;
    std::vector<EndedCall> ended_calls;
};

struct Call {
    std::uint64_t id = 0;
    ControlConnection* connection = nullptr;
    std::uint32_t inside_address = 0;
    std::uint32_t outside_address = 0;
    std::uint32_t public_address = 0;
    std::uint16_t inside_call_id = 0;
    std::uint16_t public_call_id = 0;
    std::uint16_t outside_call_id = 0;
    bool inside_known = false;     // inside peer announced its Call ID
    bool outside_known = false;    // outside peer announced its Call ID
    bool outgoing = true;          // Outgoing-Call-Request (else Incoming-Call-Request)
    bool answered = false;         // the reply (OCRP / ICRP) has been seen
    bool public_assigned = false;  // public_call_id is taken in the allocator
    CallState state = CallState::Requested;
    Instant created{};
    Instant last_activity{};
    std::uint64_t packets_in = 0;   // toward the inside peer
    std::uint64_t packets_out = 0;  // toward the outside peer
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
    // Its GRE is translated in the kernel (CallOffload); the counters above
    // are then `offload_base` (what the queue path counted before) plus the
    // kernel's, read now and then.
    bool offloaded = false;
    // Rises with every call offloaded: a reading of the kernel's counters
    // that began before this call was offloaded cannot be this call's.
    std::uint64_t offload_serial = 0;
    struct Traffic {
        std::uint64_t packets_in = 0;
        std::uint64_t bytes_in = 0;
        std::uint64_t packets_out = 0;
        std::uint64_t bytes_out = 0;
    } offload_base;
};

// Translates the GRE of established calls somewhere faster than the queue
// (the kernel's nf_tables). The table asks when a call is established and
// tells when it ends; what it does not take stays on the queue path.
class CallOffload {
public:
    virtual ~CallOffload() = default;
    // True when the call's GRE no longer comes to the queue.
    virtual bool offload(const Call& call) = 0;
    // The call ends: its GRE goes back to the queue path (where it finds no
    // call). May bring the call's counters up to date first.
    virtual void withdraw(Call& call) = 0;
};

// An established call found where an earlier run of the agent left it (in
// the kernel's offload): taken into the table as it was.
struct AdoptedCall {
    ConnectionKey connection;
    bool opened_from_outside = false;
    bool outgoing = true;
    std::int8_t pns_side = -1;  // as ControlConnection::pns_side
    std::uint32_t public_address = 0;
    std::uint16_t inside_call_id = 0;
    std::uint16_t public_call_id = 0;
    std::uint16_t outside_call_id = 0;
    Instant created{};
    Call::Traffic base;     // counted before it was offloaded
    Call::Traffic offload;  // the kernel's counters now
};

// Notified of what the table does, so the daemon can log it; the table itself
// never logs.
class TableObserver {
public:
    virtual ~TableObserver() = default;
    virtual void call_built(const Call& call) = 0;
    virtual void call_torn_down(const Call& call, TeardownReason reason) = 0;
};

enum class CallError : std::uint8_t { None, CallLimit, HostCallLimit, CallIdSpaceExhausted, NatUnknown };

struct CallResult {
    Call* call = nullptr;
    CallError error = CallError::None;
};

class CallTable {
public:
    CallTable(TableConfig config, const Clock& clock, Counters& counters, TableObserver* observer);
    ~CallTable();
    CallTable(const CallTable&) = delete;
    CallTable& operator=(const CallTable&) = delete;

    [[nodiscard]] const TableConfig& config() const noexcept { return config_; }
    // New limits and timeouts apply from now on; live calls stay. The public
    // address is kept.
    void set_config(TableConfig config);
    // Established calls go to `offload` from now on (nullptr: none). Set to
    // nullptr before clear_all() to leave offloaded calls where they are.
    void set_offload(CallOffload* offload) noexcept { offload_ = offload; }
    [[nodiscard]] std::uint64_t offload_serial() const noexcept { return offload_serial_; }
    // Takes in a call an earlier run left offloaded, with its control
    // connection (made if missing, Established, picked up at its next
    // message). nullptr when it conflicts with a call already here or a
    // limit is reached; the call is then not the table's.
    Call* adopt_call(const AdoptedCall& adopted);
    // Hands an established call that owns both its GRE keys to the offload
    // (set_offload); true when it took it. mark_established does this.
    bool offer_offload(Call& call);
    // New calls get this public address; live calls keep theirs.
    void set_public_address(std::uint32_t address) noexcept { config_.public_address = address; }
    [[nodiscard]] Instant now() const { return clock_.now(); }

    [[nodiscard]] ControlConnection* find_connection(const ConnectionKey& key) noexcept;
    [[nodiscard]] ControlConnection* find_connection(std::uint64_t id) noexcept;
    // nullptr when max_connections or max_connections_per_host is reached.
    // `opened_from_outside`: the outside peer opened it (a port forward).
    ControlConnection* create_connection(const ConnectionKey& key, bool opened_from_outside = false);
    // Ends every call of the connection; the connection lingers as Closed.
    void close_connection(ControlConnection& conn, TeardownReason reason);
    void remove_connection(ControlConnection& conn, TeardownReason reason);

    // Calls of one connection, by either peer's Call ID.
    [[nodiscard]] Call* find_by_inside_id(const ControlConnection& conn, std::uint16_t id) const noexcept;
    [[nodiscard]] Call* find_by_public_id(const ControlConnection& conn, std::uint16_t id) const noexcept;
    [[nodiscard]] Call* find_by_outside_id(const ControlConnection& conn, std::uint16_t id) const noexcept;

    // The inside peer announced a Call ID: make a call with a unique public ID.
    CallResult create_call_from_inside(ControlConnection& conn, std::uint16_t inside_id);
    // The inside peer's new Call ID is known by its high byte only so far (its
    // sender waits for an ACK before it sends the rest): a call whose public
    // Call ID has a high byte decided now, which stays.
    CallResult create_call_from_inside_by_high_byte(ControlConnection& conn, std::uint8_t inside_high);
    // Its whole inside Call ID. Under preserve the public one becomes the
    // inside one where that is free (it has the same high byte).
    void complete_inside_id(Call& call, std::uint16_t inside_id);
    // The outside peer announced a Call ID first (inside peer answers later).
    CallResult create_call_from_outside(ControlConnection& conn, std::uint16_t outside_id);
    // An inside answer to an outside-initiated call: give it a public ID.
    CallError assign_inside_id(Call& call, std::uint16_t inside_id);
    void set_outside_id(Call& call, std::uint16_t outside_id);
    void mark_established(Call& call);
    void remove_call(Call& call, TeardownReason reason);
    // An ended call of the connection, by the ID as the message carries it.
    [[nodiscard]] static const ControlConnection::EndedCall* find_ended(const ControlConnection& conn, bool by_inside,
                                                                        bool by_public, std::uint16_t id) noexcept;

    // GRE lookups, O(1). Inbound GRE names the public address it came to:
    // Call IDs are unique per (public address, outside peer) only.
    [[nodiscard]] Call* find_inbound(std::uint32_t outside_address, std::uint32_t public_address,
                                     std::uint16_t public_id) const noexcept;
    // The public address of a connection's calls: --public-address when set,
    // else what the kernel's NAT chose for it (0 while unknown).
    [[nodiscard]] std::uint32_t public_address_of(const ControlConnection& conn) const noexcept {
        return config_.public_address != 0 ? config_.public_address : conn.public_address;
    }
    [[nodiscard]] Call* find_outbound(std::uint32_t inside_address, std::uint32_t outside_address,
                                      std::uint16_t outside_id) const noexcept;

    // GRE of no call reached the gateway itself: Call ID `call_id` at
    // (`local_address`, `outside_address`) is a call of the gateway's own
    // (its control connection is not ours to see). No call of ours gets it
    // as its public Call ID while it is in use (seen within
    // gateway_call_id_hold). Bounded: kMaxGatewayCallIds in all, the oldest
    // goes first.
    void note_gateway_call_id(std::uint32_t local_address, std::uint32_t outside_address, std::uint16_t call_id);
    [[nodiscard]] std::size_t gateway_call_ids() const noexcept { return gateway_ids_.size(); }
    static constexpr std::size_t kMaxGatewayCallIds = 4096;
    // Drops what has been idle longer than its timeout. Returns calls expired.
    std::size_t expire();
    void clear_all(TeardownReason reason);
    [[nodiscard]] Call* find_call(std::uint64_t id) noexcept;
    // Removes every control connection (and its calls) on a TCP port.
    std::size_t remove_connections_on_port(std::uint16_t port, TeardownReason reason);

    [[nodiscard]] std::size_t call_count() const noexcept { return calls_.size(); }
    [[nodiscard]] std::size_t connection_count() const noexcept { return connections_.size(); }
    void for_each_call(const std::function<void(const Call&)>& fn) const;
    void for_each_connection(const std::function<void(const ControlConnection&)>& fn) const;

private:
    struct ConnectionKeyHash {
        std::size_t operator()(const ConnectionKey& k) const noexcept;
    };
    // A GRE key as the table indexes it: an address of ours (the public
    // address inbound, the inside peer's outbound), the outside peer's, and
    // the Call ID the packet carries.
    struct GreKey {
        std::uint32_t ours = 0;
        std::uint32_t outside = 0;
        std::uint16_t call_id = 0;
        bool operator==(const GreKey&) const = default;
    };
    struct GreKeyHash {
        std::size_t operator()(const GreKey& k) const noexcept;
    };
    static std::uint64_t address_pair(std::uint32_t public_address, std::uint32_t outside) noexcept {
        return (static_cast<std::uint64_t>(public_address) << 32U) | outside;
    }

    CallResult new_call(ControlConnection& conn);
    CallError allocate_public_id(Call& call, std::uint16_t preferred);
    CallError allocate_public_id_by_high_byte(Call& call, std::uint8_t preferred_high);
    void take_public_id(Call& call, std::uint16_t id);
    [[nodiscard]] bool public_id_free(std::uint32_t public_address, std::uint32_t outside_address,
                                      std::uint32_t id) const;
    void set_inside_id(Call& call, std::uint16_t inside_id);
    void unlink_call(Call& call);
    void link_outbound(Call& call);
    void unlink_outbound(Call& call);

    TableConfig config_;
    const Clock& clock_;
    Counters& counters_;
    TableObserver* observer_;
    CallOffload* offload_ = nullptr;
    std::uint64_t offload_serial_ = 0;
    std::uint64_t next_call_serial_ = 1;
    std::uint64_t next_connection_serial_ = 1;
    std::unordered_map<ConnectionKey, ControlConnection, ConnectionKeyHash> connections_;
    std::unordered_map<std::uint64_t, ConnectionKey> connection_keys_;  // by serial
    std::unordered_map<std::uint64_t, Call> calls_;
    // (public address, outside peer, public Call ID): inbound GRE, uniqueness.
    std::unordered_map<GreKey, Call*, GreKeyHash> by_public_;
    // (inside peer, outside peer, outside Call ID): outbound GRE.
    std::unordered_map<GreKey, Call*, GreKeyHash> by_outbound_;
    // The gateway's own calls' Call IDs, when last seen.
    std::unordered_map<GreKey, Instant, GreKeyHash> gateway_ids_;
    // Public IDs in use per (public address, outside peer), to refuse at once
    // when the space is full.
    std::unordered_map<std::uint64_t, std::uint32_t> ids_in_use_;
    // Control connections and calls per opening host, for the per-host limits.
    std::unordered_map<std::uint32_t, std::uint32_t> connections_per_host_;
    std::unordered_map<std::uint32_t, std::uint32_t> calls_per_host_;
    std::uint32_t allocation_cursor_ = 0;
    std::mt19937_64 random_;
};

}  // namespace nat
