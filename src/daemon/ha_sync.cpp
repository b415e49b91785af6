#include "daemon/ha_sync.hpp"

#include <cerrno>
#include <cstring>
#include <vector>

#include "nat/packet_handler.hpp"
#include "pptp/inet.hpp"

namespace agent {

ha::ConnectionLabel label_of(const nat::ControlConnection& conn, const nat::Call* leaving) {
    ha::ConnectionLabel label;
    label.opened_from_outside = conn.opened_from_outside;
    label.pns_side = conn.pns_side;
    for (const nat::Call* call : conn.calls) {
        if (call == leaving || call->state != nat::CallState::Established || !call->inside_known ||
            !call->outside_known) {
            continue;
        }
        if (label.call_count == ha::ConnectionLabel::kMaxCalls) {
            break;
        }
        label.calls[label.call_count++] = {call->inside_call_id, call->public_call_id, call->outside_call_id,
                                           call->outgoing};
    }
    return label;
}

std::optional<nat::AdoptedCall> connection_of(const nfq::LabelledEntry& entry, const ha::ConnectionLabel& label,
                                              std::optional<std::uint32_t> public_address) {
    nat::AdoptedCall adopted;
    adopted.opened_from_outside = label.opened_from_outside;
    adopted.pns_side = label.pns_side;
    // As FORWARD sees the connection: the inside peer after DNAT, the
    // outside peer before SNAT.
    if (label.opened_from_outside) {
        adopted.connection = {entry.tuples.reply_source, entry.tuples.original_source, entry.reply_source_port,
                              entry.original_source_port};
    } else {
        adopted.connection = {entry.tuples.original_source, entry.tuples.reply_source, entry.original_source_port,
                              entry.reply_source_port};
    }
    const nat::NatMapping mapping{entry.tuples.original_source, entry.tuples.original_destination,
                                  entry.tuples.reply_source, entry.tuples.reply_destination};
    adopted.public_address =
        public_address.value_or(nat::public_address_for(mapping, adopted.connection.outside_address));
    if (adopted.public_address == 0 || adopted.connection.inside_port == 0 || adopted.connection.outside_port == 0) {
        return std::nullopt;
    }
    return adopted;
}

HaLabelSync::HaLabelSync() = default;

void HaLabelSync::call_built(const nat::Call& call) {
    write(*call.connection, nullptr);
}

void HaLabelSync::call_torn_down(const nat::Call& call, nat::TeardownReason reason) {
    if (reason != nat::TeardownReason::Shutdown) {
        write(*call.connection, &call);
    }
}

void HaLabelSync::write(const nat::ControlConnection& conn, const nat::Call* leaving) {
    const ha::ConnectionLabel label = label_of(conn, leaving);
    std::size_t live = 0;
    for (const nat::Call* call : conn.calls) {
        live += call != leaving && call->state == nat::CallState::Established ? 1 : 0;
    }
    if (live > label.call_count) {
        calls_not_synced_ += live - label.call_count;
    }
    if (conntrack_.set_tcp_label(conn.key.inside_address, conn.key.inside_port, conn.key.outside_address,
                                 conn.key.outside_port, ha::encode_label(label))) {
        ++labels_written_;
        return;
    }
    if (leaving != nullptr && conntrack_.last_error() == ENOENT) {
        return;  // the connection's entry went first (an RST): nothing left to carry
    }
    ++label_write_failures_;
    last_write_error_ = conntrack_.last_error();
    std::uint64_t suppressed = 0;
    if (failure_limiter_.allow(0, std::chrono::steady_clock::now(), suppressed)) {
        const int e = last_write_error_;
        logging::write(
            logging::Level::Warning, "400010",
            "cannot label the conntrack entry of PPTP control connection " +
                pptp::format_ipv4(conn.key.inside_address) + ":" + std::to_string(conn.key.inside_port) + " - " +
                pptp::format_ipv4(conn.key.outside_address) + ":" + std::to_string(conn.key.outside_port) + ": " +
                std::strerror(e) +
                (e == ENOSPC ? " (the entry has no label space: install the rules with "
                               "--conntrack-labels before connections open)"
                             : "") +
                "; its calls would not survive a failover" +
                (suppressed > 0 ? "; " + std::to_string(suppressed) + " more since the last report" : std::string()));
    }
}

namespace {

bool names(const ha::ConnectionLabel& label, const nat::Call& call) {
    for (std::size_t i = 0; i < label.call_count; ++i) {
        const ha::LabelledCall& labelled = label.calls[i];
        if (labelled.inside_call_id == call.inside_call_id && labelled.public_call_id == call.public_call_id &&
            labelled.outside_call_id == call.outside_call_id) {
            return true;
        }
    }
    return false;
}

}  // namespace

AdoptionReport HaLabelSync::adopt(nat::CallTable& table, nat::PacketHandler& handler,
                                  std::span<const std::uint16_t> ports, std::optional<std::uint32_t> public_address) {
    AdoptionReport report;
    ++adoption_runs_;
    const nat::Instant now = table.now();
    // Read first, adopt after: adopting may write labels (a call torn down)
    // over the same socket, which must not happen inside the dump.
    std::vector<nfq::LabelledEntry> entries;
    report.dump_failed = !conntrack_.for_each_labelled_tcp(
        ports, [&entries](const nfq::LabelledEntry& entry) { entries.push_back(entry); });
    report.kernel_filter = conntrack_.kernel_filter_used();
    for (const nfq::LabelledEntry& entry : entries) {
        ++report.entries;
        ha::LabelError error = ha::LabelError::None;
        const auto label = ha::decode_label(entry.label, error);
        std::optional<nat::AdoptedCall> adopted;
        if (label) {
            adopted = connection_of(entry, *label, public_address);
        }
        if (!adopted) {
            ++report.invalid_labels;
            continue;
        }
        adopted->created = now;
        if (nat::ControlConnection* known = table.find_connection(adopted->connection); known != nullptr) {
            if (label->call_count < ha::ConnectionLabel::kMaxCalls) {
                std::vector<nat::Call*> ended;
                for (nat::Call* call : known->calls) {
                    if (call->state == nat::CallState::Established && !names(*label, *call)) {
                        ended.push_back(call);
                    }
                }
                for (nat::Call* call : ended) {
                    table.remove_call(*call, nat::TeardownReason::NotInHaLabel);
                    ++report.ended_elsewhere;
                }
            }
            handler.resynchronize(*known);
            ++report.resynchronized;
        }
        for (std::size_t i = 0; i < label->call_count; ++i) {
            const ha::LabelledCall& labelled = label->calls[i];
            adopted->outgoing = labelled.outgoing;
            adopted->inside_call_id = labelled.inside_call_id;
            adopted->public_call_id = labelled.public_call_id;
            adopted->outside_call_id = labelled.outside_call_id;
            if (const nat::ControlConnection* conn = table.find_connection(adopted->connection); conn != nullptr) {
                const nat::Call* known = table.find_by_public_id(*conn, labelled.public_call_id);
                if (known != nullptr && known->inside_call_id == labelled.inside_call_id &&
                    known->outside_call_id == labelled.outside_call_id) {
                    ++report.already_known;
                    continue;
                }
            }
            nat::Call* call = table.adopt_call(*adopted);
            if (call == nullptr) {
                ++report.conflicts;
                continue;
            }
            // adopt_call takes calls as offloaded by an earlier run; these
            // come from another gateway's kernel, so they start on the
            // queue path and go to this one's offload if it takes them.
            call->offloaded = false;
            (void)table.offer_offload(*call);
            ++report.adopted;
        }
    }
    if (report.dump_failed) {
        report.error = conntrack_.last_error();
    }
    adopted_total_.entries += report.entries;
    adopted_total_.adopted += report.adopted;
    adopted_total_.already_known += report.already_known;
    adopted_total_.conflicts += report.conflicts;
    adopted_total_.invalid_labels += report.invalid_labels;
    adopted_total_.ended_elsewhere += report.ended_elsewhere;
    adopted_total_.resynchronized += report.resynchronized;
    return report;
}

nlohmann::json HaLabelSync::stats() const {
    return {{"mode", "connlabel"},
            {"labels_written", labels_written_},
            {"label_write_failures", label_write_failures_},
            {"last_write_error", last_write_error_ != 0 ? std::strerror(last_write_error_) : ""},
            {"calls_not_synced", calls_not_synced_},
            {"adoption_runs", adoption_runs_},
            {"labelled_entries_seen", adopted_total_.entries},
            {"calls_adopted", adopted_total_.adopted},
            {"calls_already_known", adopted_total_.already_known},
            {"calls_in_conflict", adopted_total_.conflicts},
            {"invalid_labels", adopted_total_.invalid_labels},
            {"calls_ended_elsewhere", adopted_total_.ended_elsewhere},
            {"connections_resynchronized", adopted_total_.resynchronized}};
}

}  // namespace agent
