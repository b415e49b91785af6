// Keeps the netfilter rules in line with the agent's fixup ports by running
// pptp-fixup-rules, so the queue rules follow "fixup enable/disable".
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace agent {

struct RulesSettings {
    std::string command;  // pptp-fixup-rules, by path or from PATH
    std::vector<std::string> outside_interfaces;
    std::uint16_t queue = 0;
    std::uint32_t offload_mark = 0x01000000;  // pptp-fixup-rules --offload-mark
    bool conntrack_labels = false;            // pptp-fixup-rules --conntrack-labels (--ha-sync)
};

// The installer to run for `command`: as given when it names a path, else
// the one next to this daemon's own executable when there is one there
// (installed under any prefix, on PATH or not), else `command` from PATH.
[[nodiscard]] std::string installer_path(const std::string& command);

// Installs the rules for `ports` (or removes them when `ports` is empty).
// Returns an empty string on success, else one line saying what failed.
// Runs synchronously, bounded by `timeout`: the kernel holds queued packets
// meanwhile.
std::string apply_rules(const RulesSettings& settings, const std::vector<std::uint16_t>& ports,
                        std::chrono::seconds timeout = std::chrono::seconds(10));
std::string remove_rules(const RulesSettings& settings, std::chrono::seconds timeout = std::chrono::seconds(10));

}  // namespace agent
