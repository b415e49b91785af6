// The fixup's dispatcher: one IPv4 packet in, a verdict out, rewritten in
// place when needed. GRE is translated here; TCP control segments go through
// the stream follower (stream/) to the PPTP control inspector, and connections
// the agent ends are reset here. No I/O: the netfilter layer feeds it and
// carries out the verdicts, including those of segments held back earlier.
#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "nat/call_table.hpp"
#include "nat/control_inspector.hpp"
#include "nat/counters.hpp"
#include "pptp/inet.hpp"
#include "stream/tcp_follower.hpp"

namespace nat {

struct Verdict {
    bool accept = true;
    bool modified = false;
    // The packet was copied and held back; its verdict comes later through
    // DeferredVerdicts. Nothing is to be sent for it now.
    bool held = false;
    // New packet length when modified and shortened (a segment turned into a
    // bare RST or ACK); 0 = unchanged.
    std::size_t length = 0;
    DropReason reason = DropReason::none;
};

using DeferredVerdicts = stream::DeferredVerdicts;

struct HandlerConfig {
    ViolationPolicy on_violation = ViolationPolicy::Reset;
    stream::HoldLimits holds;
    // Inbound GRE of no call addressed to the gateway itself (its own PPTP
    // client or server): Pass goes on untranslated to the gateway's own
    // input rules, Drop drops it as any GRE of no call, Auto passes it only
    // while the gateway has a GRE socket of its own (set_gateway_gre): else
    // the gateway's stack would answer junk GRE with ICMP protocol
    // unreachable, which makes the raw GRE socket of a PPTP peer that the
    // junk claims to come from fail, and its call with it.
    enum class LocalGre : std::uint8_t { Auto, Pass, Drop };
    LocalGre local_gre = LocalGre::Auto;
};

// A control connection's conntrack entry, as the kernel's NAT mapped it
// (host byte order): where its public address comes from.
struct NatMapping {
    std::uint32_t original_source = 0;
    std::uint32_t original_destination = 0;
    std::uint32_t reply_source = 0;
    std::uint32_t reply_destination = 0;
};

// The address `outside_peer` talks to on a connection mapped so: the
// original destination when the outside peer opened it (a port forward),
// the reply destination when an inside host did (its SNAT source); 0 when
// the outside peer is in neither tuple.
[[nodiscard]] std::uint32_t public_address_for(const NatMapping& nat, std::uint32_t outside_peer) noexcept;

// Asks the kernel how it mapped a control connection (the netfilter layer
// implements it with a conntrack lookup).
class NatLookup {
public:
    virtual ~NatLookup() = default;
    [[nodiscard]] virtual std::optional<NatMapping> mapping_of(const ConnectionKey& key) = 0;
};

class PacketHandler final : private stream::EventSink {
public:
    PacketHandler(CallTable& table, Counters& counters, DropObserver* observer = nullptr, HandlerConfig config = {});

    void enable_port(std::uint16_t port) noexcept { ports_.set(port); }
    void disable_port(std::uint16_t port) noexcept { ports_.reset(port); }
    [[nodiscard]] bool port_enabled(std::uint16_t port) const noexcept { return ports_.test(port); }
    void set_config(const HandlerConfig& config) noexcept;
    [[nodiscard]] const HandlerConfig& config() const noexcept { return config_; }
    // Without a sink nothing is held: segments that would be are dropped
    // (TCP resends them).
    void set_deferred_verdicts(DeferredVerdicts* sink) noexcept { follower_.set_deferred_verdicts(sink); }

    // `packet` starts at the IPv4 header; `packet_id` names it for a later
    // verdict if it is held. Rewrites happen in place.
    Verdict handle(Direction direction, std::span<std::uint8_t> packet, std::uint32_t packet_id = 0);
    // Without one (and without a fixed public address) no call can be made.
    void set_nat_lookup(NatLookup* lookup) noexcept { nat_lookup_ = lookup; }

    // The gateway's own IPv4 addresses (any interface), for GRE addressed to
    // the gateway itself.
    void set_local_addresses(std::vector<std::uint32_t> addresses);
    // Whether a process on the gateway holds a raw GRE socket (LocalGre::Auto).
    void set_gateway_gre(bool open) noexcept { gateway_gre_ = open; }

    // The connection's stream went through another gateway meanwhile (an HA
    // takeover): its held segments are dropped (TCP resends them) and each
    // direction is picked up again at its next segment that starts a message
    // out of sequence; one in sequence goes on as before.
    void resynchronize(ControlConnection& conn);

    // Held segments past their time: cut before an incomplete field, or
    // dropped. Call a few times a second.
    std::size_t expire_held();
    [[nodiscard]] std::size_t held_segments() const noexcept { return follower_.held_segments(); }

private:
    Verdict handle_control(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                           std::uint32_t source, std::uint32_t destination, std::uint32_t packet_id);
    void learn_public_address(ControlConnection& conn);
    [[nodiscard]] bool is_local(std::uint32_t address) const noexcept;
    Verdict handle_gre(Direction dir, std::span<std::uint8_t> packet, std::size_t ip_header_length,
                       std::uint32_t source, std::uint32_t destination);
    // Ends a connection the agent cannot follow: its calls go, the segment
    // becomes an RST to its receiver at `sequence`, the peers' later
    // segments are answered so that both ends reset (see reset_segment).
    Verdict start_reset(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet, std::size_t tcp_offset,
                        std::uint32_t sequence, TeardownReason reason);
    // The connection ends; no byte of it passes from now on (reset_segment).
    void enter_reset(ControlConnection& conn, TeardownReason reason);
    Verdict reset_segment(ControlConnection& conn, Direction dir, std::span<std::uint8_t> packet,
                          std::size_t tcp_offset, const pptp::TcpHeader& tcp);
    void stream_event(stream::Event event) override;
    Verdict drop(DropReason reason, std::uint32_t source, std::uint32_t destination);
    Verdict refuse_connection(std::uint32_t source, std::uint32_t destination);  // a connection limit

    CallTable& table_;
    Counters& counters_;
    DropObserver* observer_;
    HandlerConfig config_;
    ControlInspector inspector_;
    stream::Follower follower_;
    std::bitset<65536> ports_;
    std::vector<std::uint32_t> local_addresses_;  // sorted
    NatLookup* nat_lookup_ = nullptr;
    bool gateway_gre_ = false;
};

// Makes a TCP segment a bare one (no payload) with `flags` and `sequence`,
// checksums right; returns its new length. For RSTs and ACKs of our own.
std::size_t strip_segment(std::span<std::uint8_t> packet, std::size_t tcp_offset, std::uint8_t flags,
                          std::uint32_t sequence) noexcept;

}  // namespace nat
