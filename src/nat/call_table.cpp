#include "nat/call_table.hpp"

#include <algorithm>

namespace nat {

std::string_view state_name(ConnectionState s) noexcept {
    switch (s) {
        case ConnectionState::TcpOnly: return "tcp";
        case ConnectionState::WaitStartReply: return "wait-start-reply";
        case ConnectionState::Established: return "established";
        case ConnectionState::Stopping: return "stopping";
        case ConnectionState::Closed: return "closed";
        case ConnectionState::Reset: return "reset";
    }
    return "unknown";
}

std::string_view state_name(CallState s) noexcept {
    switch (s) {
        case CallState::Requested: return "requested";
        case CallState::Established: return "established";
        case CallState::Clearing: return "clearing";
    }
    return "unknown";
}

std::string_view teardown_reason_name(TeardownReason r) noexcept {
    switch (r) {
        case TeardownReason::CallDisconnectNotify: return "call-disconnect-notify";
        case TeardownReason::CallRejected: return "call-rejected";
        case TeardownReason::StopControlConnection: return "stop-control-connection";
        case TeardownReason::TcpFin: return "tcp-fin";
        case TeardownReason::TcpReset: return "tcp-reset";
        case TeardownReason::IdleTimeout: return "idle-timeout";
        case TeardownReason::ConnectionReplaced: return "connection-replaced";
        case TeardownReason::Cleared: return "cleared";
        case TeardownReason::Shutdown: return "shutdown";
        case TeardownReason::CallIdSpaceExhausted: return "call-id-space-exhausted";
        case TeardownReason::FixupDisabled: return "fixup-disabled";
        case TeardownReason::ProtocolViolation: return "protocol-violation";
        case TeardownReason::CallRefused: return "call-refused";
        case TeardownReason::NotInHaLabel: return "not-in-ha-label";
    }
    return "unknown";
}

std::size_t CallTable::ConnectionKeyHash::operator()(const ConnectionKey& k) const noexcept {
    const std::uint64_t a = (static_cast<std::uint64_t>(k.inside_address) << 32U) | k.outside_address;
    const std::uint64_t b = (static_cast<std::uint64_t>(k.inside_port) << 16U) | k.outside_port;
    return std::hash<std::uint64_t>{}(a * 0x9E3779B97F4A7C15ULL ^ b);
}

std::size_t CallTable::GreKeyHash::operator()(const GreKey& k) const noexcept {
    const std::uint64_t a = (static_cast<std::uint64_t>(k.ours) << 32U) | k.outside;
    return std::hash<std::uint64_t>{}(a * 0x9E3779B97F4A7C15ULL ^ k.call_id);
}

CallTable::CallTable(TableConfig config, const Clock& clock, Counters& counters, TableObserver* observer)
    : config_(config),
      clock_(clock),
      counters_(counters),
      observer_(observer),
      random_(config.random_seed != 0 ? config.random_seed : std::random_device{}()) {
    if (config_.call_id_min > config_.call_id_max) {
        std::swap(config_.call_id_min, config_.call_id_max);
    }
}

CallTable::~CallTable() = default;

ControlConnection* CallTable::find_connection(const ConnectionKey& key) noexcept {
    auto it = connections_.find(key);
    return it == connections_.end() ? nullptr : &it->second;
}

ControlConnection* CallTable::find_connection(std::uint64_t id) noexcept {
    auto it = connection_keys_.find(id);
    return it == connection_keys_.end() ? nullptr : find_connection(it->second);
}

ControlConnection* CallTable::create_connection(const ConnectionKey& key, bool opened_from_outside) {
    if (auto* existing = find_connection(key)) {
        remove_connection(*existing, TeardownReason::ConnectionReplaced);
    }
    const std::uint32_t initiator = opened_from_outside ? key.outside_address : key.inside_address;
    std::uint32_t& per_host = connections_per_host_[initiator];
    if (connections_.size() >= config_.max_connections || per_host >= config_.max_connections_per_host) {
        if (per_host == 0) {
            connections_per_host_.erase(initiator);
        }
        return nullptr;
    }
    ++per_host;
    // In its map node, like calls: one allocation, a stable address.
    ControlConnection* raw = &connections_.try_emplace(key).first->second;
    raw->id = next_connection_serial_++;
    raw->key = key;
    connection_keys_.emplace(raw->id, key);
    raw->initiator_address = initiator;
    raw->opened_from_outside = opened_from_outside;
    raw->created = raw->last_activity = clock_.now();
    counters_.add(EventCounter::connections_built);
    return raw;
}

void CallTable::close_connection(ControlConnection& conn, TeardownReason reason) {
    while (!conn.calls.empty()) {
        remove_call(*conn.calls.back(), reason);
    }
    if (conn.state != ConnectionState::Closed && conn.state != ConnectionState::Reset) {
        conn.state = ConnectionState::Closed;
        conn.last_activity = clock_.now();
    }
}

void CallTable::remove_connection(ControlConnection& conn, TeardownReason reason) {
    close_connection(conn, reason);
    counters_.add(EventCounter::connections_torn_down);
    const ConnectionKey key = conn.key;  // conn dies inside erase
    connection_keys_.erase(conn.id);
    auto host = connections_per_host_.find(conn.initiator_address);
    if (host != connections_per_host_.end() && --host->second == 0) {
        connections_per_host_.erase(host);
    }
    connections_.erase(key);
}

Call* CallTable::find_by_inside_id(const ControlConnection& conn, std::uint16_t id) const noexcept {
    for (Call* c : conn.calls) {
        if (c->inside_known && c->inside_call_id == id) {
            return c;
        }
    }
    return nullptr;
}

Call* CallTable::find_by_public_id(const ControlConnection& conn, std::uint16_t id) const noexcept {
    for (Call* c : conn.calls) {
        if (c->inside_known && c->public_call_id == id) {
            return c;
        }
    }
    return nullptr;
}

Call* CallTable::find_by_outside_id(const ControlConnection& conn, std::uint16_t id) const noexcept {
    for (Call* c : conn.calls) {
        if (c->outside_known && c->outside_call_id == id) {
            return c;
        }
    }
    return nullptr;
}

CallResult CallTable::new_call(ControlConnection& conn) {
    // A call whose public address is not known cannot be translated: never
    // half of it (its GRE would leave with an address the peer does not know).
    if (public_address_of(conn) == 0) {
        return {nullptr, CallError::NatUnknown};
    }
    if (calls_.size() >= config_.max_calls || conn.calls.size() >= config_.max_calls_per_connection) {
        return {nullptr, CallError::CallLimit};
    }
    std::uint32_t& of_host = calls_per_host_[conn.initiator_address];
    if (of_host >= config_.max_calls_per_host) {
        return {nullptr, CallError::HostCallLimit};
    }
    ++of_host;
    // The call lives in its map node: one allocation per call, and its
    // address stays put while the map grows.
    const std::uint64_t id = next_call_serial_++;
    Call* call = &calls_.try_emplace(id).first->second;
    call->id = id;
    call->connection = &conn;
    call->inside_address = conn.key.inside_address;
    call->outside_address = conn.key.outside_address;
    call->public_address = public_address_of(conn);
    call->created = call->last_activity = clock_.now();
    conn.calls.push_back(call);
    return {call, CallError::None};
}

CallError CallTable::allocate_public_id(Call& call, std::uint16_t preferred) {
    const std::uint32_t lo = config_.call_id_min;
    const std::uint32_t span = static_cast<std::uint32_t>(config_.call_id_max) - lo + 1U;
    if (ids_in_use_[address_pair(call.public_address, call.outside_address)] >= span) {
        return CallError::CallIdSpaceExhausted;
    }
    auto is_free = [&](std::uint32_t id) { return public_id_free(call.public_address, call.outside_address, id); };
    std::uint32_t chosen = 0;
    bool found = false;
    if (config_.call_id_allocation == CallIdAllocation::Preserve) {
        // Keep the inside peer's own ID when it is free, as PAT keeps ports:
        // it makes captures on both sides easy to match up.
        if (preferred >= lo && preferred <= config_.call_id_max && is_free(preferred)) {
            chosen = preferred;
            found = true;
        }
    } else {
        // A few random probes find a free ID at once unless the space is
        // nearly full; the scan below, from a random place, settles the rest.
        for (int probe = 0; !found && probe < 8; ++probe) {
            const std::uint32_t candidate = lo + static_cast<std::uint32_t>(random_() % span);
            if (is_free(candidate)) {
                chosen = candidate;
                found = true;
            }
        }
        allocation_cursor_ = static_cast<std::uint32_t>(random_() % span);
    }
    for (std::uint32_t i = 0; !found && i < span; ++i) {
        const std::uint32_t candidate = lo + (allocation_cursor_ + i) % span;
        if (is_free(candidate)) {
            chosen = candidate;
            allocation_cursor_ = (candidate - lo + 1U) % span;
            found = true;
        }
    }
    if (!found) {
        return CallError::CallIdSpaceExhausted;
    }
    take_public_id(call, static_cast<std::uint16_t>(chosen));
    return CallError::None;
}

void CallTable::take_public_id(Call& call, std::uint16_t id) {
    call.public_call_id = id;
    call.public_assigned = true;
    by_public_.emplace(GreKey{call.public_address, call.outside_address, id}, &call);
    ++ids_in_use_[address_pair(call.public_address, call.outside_address)];
}

CallError CallTable::allocate_public_id_by_high_byte(Call& call, std::uint8_t preferred_high) {
    // Blocks of 256 IDs by high byte: the preferred one first under
    // preserve, a random one under random; the first free ID in the range.
    const std::uint32_t start = config_.call_id_allocation == CallIdAllocation::Random
                                    ? static_cast<std::uint32_t>(random_() % 256U)
                                    : preferred_high;
    for (std::uint32_t b = 0; b < 256; ++b) {
        const std::uint32_t block = (start + b) % 256U;
        for (std::uint32_t low = 0; low < 256; ++low) {
            const std::uint32_t id = block << 8U | low;
            if (id >= config_.call_id_min && id <= config_.call_id_max &&
                public_id_free(call.public_address, call.outside_address, id)) {
                take_public_id(call, static_cast<std::uint16_t>(id));
                return CallError::None;
            }
        }
    }
    return CallError::CallIdSpaceExhausted;
}

CallResult CallTable::create_call_from_inside_by_high_byte(ControlConnection& conn, std::uint8_t inside_high) {
    CallResult result = new_call(conn);
    if (result.call == nullptr) {
        return result;
    }
    if (CallError e = allocate_public_id_by_high_byte(*result.call, inside_high); e != CallError::None) {
        unlink_call(*result.call);
        return {nullptr, e};
    }
    return result;
}

void CallTable::complete_inside_id(Call& call, std::uint16_t inside_id) {
    if (call.inside_known) {
        return;
    }
    const bool same_block = (inside_id >> 8U) == (call.public_call_id >> 8U);
    if (config_.call_id_allocation == CallIdAllocation::Preserve && same_block && inside_id != call.public_call_id &&
        inside_id >= config_.call_id_min && inside_id <= config_.call_id_max &&
        public_id_free(call.public_address, call.outside_address, inside_id)) {
        by_public_.erase(GreKey{call.public_address, call.outside_address, call.public_call_id});
        call.public_call_id = inside_id;
        by_public_.emplace(GreKey{call.public_address, call.outside_address, inside_id}, &call);
    }
    set_inside_id(call, inside_id);
}

bool CallTable::public_id_free(std::uint32_t public_address, std::uint32_t outside_address, std::uint32_t id) const {
    const GreKey key{public_address, outside_address, static_cast<std::uint16_t>(id)};
    return by_public_.find(key) == by_public_.end() && (gateway_ids_.empty() || gateway_ids_.count(key) == 0);
}

void CallTable::note_gateway_call_id(std::uint32_t local_address, std::uint32_t outside_address,
                                     std::uint16_t call_id) {
    const GreKey key{local_address, outside_address, call_id};
    if (auto it = gateway_ids_.find(key); it != gateway_ids_.end()) {
        it->second = clock_.now();
        return;
    }
    if (gateway_ids_.size() >= kMaxGatewayCallIds) {
        // GRE anyone can send: the table stays bounded, the stalest goes.
        auto oldest = std::min_element(gateway_ids_.begin(), gateway_ids_.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
        gateway_ids_.erase(oldest);
    }
    gateway_ids_.emplace(key, clock_.now());
}

void CallTable::set_inside_id(Call& call, std::uint16_t inside_id) {
    call.inside_call_id = inside_id;
    call.inside_known = true;
    if (call.outside_known) {
        link_outbound(call);
    }
}

CallResult CallTable::create_call_from_inside(ControlConnection& conn, std::uint16_t inside_id) {
    CallResult result = new_call(conn);
    if (result.call == nullptr) {
        return result;
    }
    if (CallError e = assign_inside_id(*result.call, inside_id); e != CallError::None) {
        unlink_call(*result.call);
        return {nullptr, e};
    }
    return result;
}

CallResult CallTable::create_call_from_outside(ControlConnection& conn, std::uint16_t outside_id) {
    CallResult result = new_call(conn);
    if (result.call != nullptr) {
        set_outside_id(*result.call, outside_id);
    }
    return result;
}

CallError CallTable::assign_inside_id(Call& call, std::uint16_t inside_id) {
    if (call.inside_known) {
        return CallError::None;
    }
    if (CallError e = allocate_public_id(call, inside_id); e != CallError::None) {
        return e;
    }
    set_inside_id(call, inside_id);
    return CallError::None;
}

void CallTable::link_outbound(Call& call) {
    // First come keeps it: a reply that repeats another call's Call ID (a
    // refusal with Call ID 0, a confused peer) must not take that call's GRE.
    by_outbound_.try_emplace(GreKey{call.inside_address, call.outside_address, call.outside_call_id}, &call);
}

void CallTable::unlink_outbound(Call& call) {
    auto it = by_outbound_.find(GreKey{call.inside_address, call.outside_address, call.outside_call_id});
    if (it != by_outbound_.end() && it->second == &call) {
        by_outbound_.erase(it);
    }
}

void CallTable::set_outside_id(Call& call, std::uint16_t outside_id) {
    if (call.outside_known && call.inside_known) {
        unlink_outbound(call);
    }
    call.outside_call_id = outside_id;
    call.outside_known = true;
    if (call.inside_known) {
        link_outbound(call);
    }
}

bool CallTable::offer_offload(Call& call) {
    // Offloaded only when this call owns both GRE keys: a reply that repeats
    // another call's Call ID leaves its GRE to that call (link_outbound).
    if (offload_ == nullptr || call.offloaded || call.state != CallState::Established || !call.inside_known ||
        !call.outside_known || find_inbound(call.outside_address, call.public_address, call.public_call_id) != &call ||
        find_outbound(call.inside_address, call.outside_address, call.outside_call_id) != &call) {
        return false;
    }
    call.offload_base = {call.packets_in, call.bytes_in, call.packets_out, call.bytes_out};
    call.offloaded = offload_->offload(call);
    call.offload_serial = ++offload_serial_;
    counters_.add(call.offloaded ? EventCounter::calls_offloaded : EventCounter::calls_offload_failed);
    return call.offloaded;
}

void CallTable::mark_established(Call& call) {
    if (call.state == CallState::Established) {
        return;
    }
    call.state = CallState::Established;
    call.last_activity = clock_.now();
    counters_.add(EventCounter::calls_built);
    offer_offload(call);
    if (observer_ != nullptr) {
        observer_->call_built(call);
    }
}

Call* CallTable::adopt_call(const AdoptedCall& adopted) {
    ControlConnection* conn = find_connection(adopted.connection);
    if (conn == nullptr) {
        conn = create_connection(adopted.connection, adopted.opened_from_outside);
        if (conn == nullptr) {
            return nullptr;
        }
        conn->public_address = adopted.public_address;
        // Not `picked_up`: it comes from the agent's own state, not from a
        // segment anyone could send, and keeps the normal idle timeout.
        conn->state = ConnectionState::Established;
        conn->pns_side = adopted.pns_side;
    }
    if (!public_id_free(adopted.public_address, adopted.connection.outside_address, adopted.public_call_id) ||
        find_outbound(adopted.connection.inside_address, adopted.connection.outside_address, adopted.outside_call_id) !=
            nullptr) {
        return nullptr;
    }
    CallResult result = new_call(*conn);
    if (result.call == nullptr) {
        return nullptr;
    }
    Call& call = *result.call;
    call.public_address = adopted.public_address;
    call.outgoing = adopted.outgoing;
    call.answered = true;
    call.created = adopted.created;
    take_public_id(call, adopted.public_call_id);
    call.outside_call_id = adopted.outside_call_id;
    call.outside_known = true;
    set_inside_id(call, adopted.inside_call_id);
    call.state = CallState::Established;
    call.offloaded = true;
    call.offload_serial = ++offload_serial_;
    call.offload_base = adopted.base;
    call.packets_in = adopted.base.packets_in + adopted.offload.packets_in;
    call.bytes_in = adopted.base.bytes_in + adopted.offload.bytes_in;
    call.packets_out = adopted.base.packets_out + adopted.offload.packets_out;
    call.bytes_out = adopted.base.bytes_out + adopted.offload.bytes_out;
    counters_.add(EventCounter::calls_adopted);
    return &call;
}

void CallTable::unlink_call(Call& call) {
    if (call.public_assigned) {
        by_public_.erase(GreKey{call.public_address, call.outside_address, call.public_call_id});
        auto used = ids_in_use_.find(address_pair(call.public_address, call.outside_address));
        if (used != ids_in_use_.end() && --used->second == 0) {
            ids_in_use_.erase(used);
        }
    }
    if (call.inside_known && call.outside_known) {
        unlink_outbound(call);
    }
    if (auto host = calls_per_host_.find(call.connection->initiator_address);
        host != calls_per_host_.end() && --host->second == 0) {
        calls_per_host_.erase(host);
    }
    auto& list = call.connection->calls;
    list.erase(std::remove(list.begin(), list.end(), &call), list.end());
    calls_.erase(call.id);  // destroys `call`
}

void CallTable::remove_call(Call& call, TeardownReason reason) {
    if (call.offloaded && offload_ != nullptr) {
        offload_->withdraw(call);  // at once: its GRE must stop before the call is gone
        call.offloaded = false;
    }
    if (call.state != CallState::Requested) {
        counters_.add(EventCounter::calls_torn_down);
        if (observer_ != nullptr) {
            observer_->call_torn_down(call, reason);
        }
    }
    if (reason == TeardownReason::IdleTimeout) {
        counters_.add(EventCounter::calls_expired);
    }
    // Calls that end while their control connection may still carry
    // messages about them (a half-closed connection, a stop in progress, a
    // Call-Disconnect-Notify the other peer did not take for its call, as
    // pptp-linux does not take accel-ppp's).
    const bool peers_may_still_talk =
        reason == TeardownReason::IdleTimeout || reason == TeardownReason::Cleared ||
        reason == TeardownReason::TcpFin || reason == TeardownReason::StopControlConnection ||
        reason == TeardownReason::CallRejected || reason == TeardownReason::CallDisconnectNotify;
    if (peers_may_still_talk && call.inside_known) {
        auto& ended = call.connection->ended_calls;
        if (ended.size() >= std::max(ControlConnection::kEndedCallsKept, config_.max_calls_per_connection)) {
            ended.erase(ended.begin());
        }
        ended.push_back({call.inside_call_id, call.public_call_id, call.outside_call_id, call.outside_known});
    }
    unlink_call(call);
}

const ControlConnection::EndedCall* CallTable::find_ended(const ControlConnection& conn, bool by_inside, bool by_public,
                                                          std::uint16_t id) noexcept {
    for (auto it = conn.ended_calls.rbegin(); it != conn.ended_calls.rend(); ++it) {
        const bool match = by_inside   ? it->inside_call_id == id
                           : by_public ? it->public_call_id == id
                                       : (it->outside_known && it->outside_call_id == id);
        if (match) {
            return &*it;
        }
    }
    return nullptr;
}

Call* CallTable::find_inbound(std::uint32_t outside_address, std::uint32_t public_address,
                              std::uint16_t public_id) const noexcept {
    auto it = by_public_.find(GreKey{public_address, outside_address, public_id});
    return it == by_public_.end() ? nullptr : it->second;
}

Call* CallTable::find_outbound(std::uint32_t inside_address, std::uint32_t outside_address,
                               std::uint16_t outside_id) const noexcept {
    auto it = by_outbound_.find(GreKey{inside_address, outside_address, outside_id});
    return it == by_outbound_.end() ? nullptr : it->second;
}

std::size_t CallTable::expire() {
    const Instant now = clock_.now();
    std::erase_if(gateway_ids_, [&](const auto& entry) { return now - entry.second > config_.gateway_call_id_hold; });
    std::size_t expired = 0;
    std::vector<Call*> stale_calls;
    for (auto& [id, call] : calls_) {
        Seconds limit = config_.call_setup_timeout;
        if (call.state == CallState::Established) {
            const bool both_ways = call.packets_in > 0 && call.packets_out > 0;
            limit = both_ways ? config_.call_idle_timeout : config_.call_unreplied_timeout;
        } else if (call.state == CallState::Clearing) {
            limit = config_.closing_linger;
        }
        if (now - call.last_activity >= limit) {
            stale_calls.push_back(&call);
        }
    }
    for (Call* call : stale_calls) {
        remove_call(*call, TeardownReason::IdleTimeout);
        ++expired;
    }
    std::vector<ControlConnection*> stale_connections;
    for (auto& [key, conn] : connections_) {
        const bool closed = conn.state == ConnectionState::Closed || conn.state == ConnectionState::Reset;
        const bool confirmed = !conn.picked_up || (conn.tcp.sides[0].data_taken && conn.tcp.sides[1].data_taken);
        const bool opening =
            conn.state == ConnectionState::TcpOnly || conn.state == ConnectionState::WaitStartReply || !confirmed;
        if (closed    ? now - conn.last_activity >= config_.closing_linger
            : opening ? now - conn.created >= config_.control_setup_timeout
                      : now - conn.last_activity >= config_.control_idle_timeout) {
            stale_connections.push_back(&conn);
        }
    }
    for (ControlConnection* conn : stale_connections) {
        remove_connection(*conn, TeardownReason::IdleTimeout);
    }
    return expired;
}

void CallTable::set_config(TableConfig config) {
    config.public_address = config_.public_address;
    if (config.call_id_min > config.call_id_max) {
        std::swap(config.call_id_min, config.call_id_max);
    }
    config_ = config;
}

Call* CallTable::find_call(std::uint64_t id) noexcept {
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : &it->second;
}

std::size_t CallTable::remove_connections_on_port(std::uint16_t port, TeardownReason reason) {
    std::vector<ControlConnection*> doomed;
    for (auto& [key, conn] : connections_) {
        if (key.outside_port == port || key.inside_port == port) {
            doomed.push_back(&conn);
        }
    }
    for (ControlConnection* conn : doomed) {
        remove_connection(*conn, reason);
    }
    return doomed.size();
}

void CallTable::clear_all(TeardownReason reason) {
    while (!connections_.empty()) {
        remove_connection(connections_.begin()->second, reason);
    }
}

void CallTable::for_each_call(const std::function<void(const Call&)>& fn) const {
    for (const auto& [id, call] : calls_) {
        fn(call);
    }
}

void CallTable::for_each_connection(const std::function<void(const ControlConnection&)>& fn) const {
    for (const auto& [key, conn] : connections_) {
        fn(conn);
    }
}

}  // namespace nat
