// pptp-fixupctl: asks a running pptp-fixupd over its control socket and
// prints the answer as a table for people or as JSON for scripts.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace po = boost::program_options;
using nlohmann::json;

namespace {

constexpr const char* kDefaultSocket = "/run/pptp-fixup/pptp-fixupd.sock";

constexpr const char* kHelp = R"(pptp-fixupctl - audit and control a running pptp-fixupd

SYNOPSIS
  pptp-fixupctl [--socket PATH] [--json] COMMAND [ARGS]

COMMANDS
  sessions [--inside ADDR] [--outside ADDR]
      one row per live PPTP call: inside peer and its Call ID, the public
      address and the Call ID the outside peer sees on the wire, the outside
      peer and its Call ID, state, age, idle time, packets and bytes in
      (toward the inside peer) and out.
  connections
      control connections (TCP) with their state and number of calls.
  stats
      counters: packets seen, accepted, rewritten, dropped by reason, calls
      built and torn down, the agent's queue statistics and the kernel's
      (queue length, packets the kernel dropped because the queue was full
      or the agent was not reading: /proc/net/netfilter/nfnetlink_queue).
  metrics
      the same counters in the Prometheus text format.
  fixup list | fixup enable PORT | fixup disable PORT
      the TCP ports whose PPTP control connections are inspected, like
      "fixup protocol pptp PORT" / "no fixup protocol pptp PORT". Takes
      effect at once; the daemon updates the queue rules (pptp-fixup-rules).
      Disabling a port tears down its control connections and their calls.
  clear session ID | clear all
      tear down one call (ID from "sessions") or every call and connection.
  ha adopt | ha status
      with pptp-fixupd --ha-sync connlabel: adopt now the calls that the
      conntrack table's labels name (after conntrackd committed the other
      gateway's entries; keepalived's notify script runs it), or show the
      label counters.
  events
      follow what happens as it happens, one line each, until interrupted
      (like conntrack -E): calls built, torn down, refused and left in the
      kernel at a shutdown; control-message violations and dropped packets
      by reason (as often as the log reports them: once per reason per 10
      s, with how many more came); fixup port changes. --json prints each
      event as one JSON object per line (for log shippers). A follower that
      cannot keep up is told how many events it lost ("lost").

EXIT STATUS
  0 when the daemon answered ok, 1 otherwise (with one line on stderr).

EXAMPLES
  pptp-fixupctl sessions --inside 198.18.0.11
  pptp-fixupctl --json sessions | jq '.sessions[].public_call_id'
  pptp-fixupctl fixup enable 1724

OPTIONS)";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

int connect_to(const std::string& path) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) {
        close(fd);
        throw std::runtime_error("socket path too long: " + path);
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
        const std::string reason = std::strerror(errno);
        close(fd);
        throw std::runtime_error("cannot connect to " + path + ": " + reason + " (is pptp-fixupd running?)");
    }
    return fd;
}

std::string describe_event(const json& e) {
    const std::string kind = e.value("event", std::string("?"));
    std::ostringstream s;
    s << e.value("time", std::string()) << ' ' << kind;
    if (e.contains("session")) {
        const json& c = e["session"];
        s << " call " << c.value("id", 0) << ' ' << c.value("inside_address", std::string()) << '/'
          << c.value("inside_call_id", 0) << " -> " << c.value("public_address", std::string()) << '/'
          << c.value("public_call_id", 0) << " -> " << c.value("outside_address", std::string()) << '/'
          << c.value("outside_call_id", 0);
    }
    for (const char* key : {"reason", "inside_address", "outside_address", "call_id", "port", "enabled", "source",
                            "destination", "more_since_last", "count"}) {
        if (e.contains(key) && !(e.contains("session") && std::string(key).find("address") != std::string::npos)) {
            s << ' ' << key << ' ' << (e[key].is_string() ? e[key].get<std::string>() : e[key].dump());
        }
    }
    return s.str();
}

// Follows the event stream until the daemon closes it. Returns the exit code.
int follow_events(const std::string& path, bool as_json) {
    const int fd = connect_to(path);
    const std::string line = json{{"command", "events"}}.dump() + "\n";
    if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
        close(fd);
        throw std::runtime_error("cannot send request to " + path);
    }
    std::string pending;
    char buffer[4096];
    bool first = true;
    for (;;) {
        const ssize_t n = read(fd, buffer, sizeof(buffer));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        pending.append(buffer, static_cast<std::size_t>(n));
        for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
            const std::string text = pending.substr(0, nl);
            pending.erase(0, nl + 1);
            const json e = json::parse(text, nullptr, false);
            if (first) {
                first = false;
                if (!e.is_object() || !e.value("ok", false)) {
                    std::cerr << "pptp-fixupctl: " << (e.is_object() ? e.value("error", text) : text) << '\n';
                    close(fd);
                    return 1;
                }
                continue;
            }
            if (as_json) {
                std::cout << text << std::endl;
            } else {
                std::cout << (e.is_object() ? describe_event(e) : text) << std::endl;
            }
        }
    }
    close(fd);
    std::cerr << "pptp-fixupctl: pptp-fixupd closed the event stream\n";
    return 1;
}

json ask(const std::string& path, const json& request) {
    const int fd = connect_to(path);
    timeval timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    const std::string line = request.dump() + "\n";
    if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
        close(fd);
        throw std::runtime_error("cannot send request to " + path);
    }
    std::string reply;
    char buffer[4096];
    for (;;) {
        const ssize_t n = read(fd, buffer, sizeof(buffer));
        if (n <= 0) {
            break;
        }
        reply.append(buffer, static_cast<std::size_t>(n));
    }
    close(fd);
    if (reply.empty()) {
        throw std::runtime_error("no answer from " + path);
    }
    return json::parse(reply);
}

std::string duration(double seconds) {
    const auto s = static_cast<long long>(seconds);
    std::ostringstream out;
    out << s / 3600 << ':' << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ':' << std::setw(2) << s % 60;
    return out.str();
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> width(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) {
        width[i] = header[i].size();
    }
    for (const auto& row : rows) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            width[i] = std::max(width[i], row[i].size());
        }
    }
    auto print_row = [&](const std::vector<std::string>& row) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            std::cout << std::left << std::setw(static_cast<int>(width[i])) << row[i]
                      << (i + 1 == row.size() ? "\n" : "  ");
        }
    };
    print_row(header);
    for (const auto& row : rows) {
        print_row(row);
    }
}

std::string str(const json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
}

void print_sessions(const json& reply) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& s : reply["sessions"]) {
        rows.push_back({str(s["id"]), str(s["inside_address"]), str(s["inside_call_id"]), str(s["public_address"]),
                        str(s["public_call_id"]), str(s["outside_address"]), str(s["outside_call_id"]), str(s["state"]),
                        duration(s["age_seconds"].get<double>()), duration(s["idle_seconds"].get<double>()),
                        str(s["packets_in"]), str(s["packets_out"]), str(s["bytes_in"]), str(s["bytes_out"])});
    }
    print_table({"ID", "INSIDE", "CALL-ID", "PUBLIC", "CALL-ID", "OUTSIDE", "CALL-ID", "STATE", "AGE", "IDLE",
                 "PKTS-IN", "PKTS-OUT", "BYTES-IN", "BYTES-OUT"},
                rows);
    std::cout << rows.size() << " session(s)\n";
}

void print_connections(const json& reply) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& c : reply["connections"]) {
        rows.push_back({str(c["id"]), str(c["inside_address"]) + ":" + str(c["inside_port"]),
                        str(c["outside_address"]) + ":" + str(c["outside_port"]), str(c["state"]), str(c["calls"]),
                        str(c["messages"]), duration(c["age_seconds"].get<double>()),
                        duration(c["idle_seconds"].get<double>())});
    }
    print_table({"ID", "INSIDE", "OUTSIDE", "STATE", "CALLS", "MESSAGES", "AGE", "IDLE"}, rows);
    std::cout << rows.size() << " connection(s)\n";
}

void print_stats(const json& reply) {
    std::cout << "live calls " << reply["live_calls"] << ", live control connections " << reply["live_connections"]
              << "\n\ncounters\n";
    for (const auto& [name, value] : reply["counters"].items()) {
        std::cout << "  " << std::left << std::setw(34) << name << value << '\n';
    }
    std::cout << "\ndropped (non-zero)\n";
    for (const auto& [name, value] : reply["dropped"].items()) {
        if (value.get<std::uint64_t>() != 0) {
            std::cout << "  " << std::left << std::setw(34) << name << value << '\n';
        }
    }
    if (reply.contains("queue")) {
        for (const auto& [layer, values] : reply["queue"].items()) {
            std::cout << "\nqueue (" << layer << ")\n";
            for (const auto& [name, value] : values.items()) {
                std::cout << "  " << std::left << std::setw(34) << name << value << '\n';
            }
        }
    }
    if (reply.contains("fixup_ports")) {
        std::cout << "\nfixup ports " << reply["fixup_ports"].dump() << '\n';
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string socket_path;
    bool as_json = false;
    std::string command;
    std::vector<std::string> rest;
    po::options_description visible;
    visible.add_options()("help,h", "print this help and exit")(
        "socket,s", po::value<std::string>(&socket_path)->default_value(kDefaultSocket),
        "control socket of pptp-fixupd")("json,j", po::bool_switch(&as_json),
                                         "print the daemon's JSON answer instead of a table");
    try {
        po::variables_map vm;
        // Options of a command (sessions --inside A) are not ours: keep them,
        // in order, with the command's other words.
        const auto parsed = po::command_line_parser(argc, argv).options(visible).allow_unregistered().run();
        po::store(parsed, vm);
        po::notify(vm);
        const auto words = po::collect_unrecognized(parsed.options, po::include_positional);
        if (!words.empty()) {
            command = words[0];
            rest.assign(words.begin() + 1, words.end());
        }
        if (vm.count("help") != 0U || command.empty()) {
            std::cout << kHelp << '\n' << visible << '\n';
            return command.empty() && vm.count("help") == 0U ? 1 : 0;
        }
        json request{{"command", command}};
        auto need_args = [&](std::size_t n, const char* usage) {
            if (rest.size() != n) {
                throw UsageError(std::string("usage: pptp-fixupctl ") + usage);
            }
        };
        auto port_or_id = [](const std::string& text, const char* what) -> std::uint64_t {
            try {
                std::size_t used = 0;
                const unsigned long long v = std::stoull(text, &used);
                if (used == text.size()) {
                    return v;
                }
            } catch (const std::exception&) {
            }
            throw UsageError(std::string("invalid ") + what + " '" + text + "'");
        };
        if (command == "sessions") {
            for (std::size_t i = 0; i < rest.size(); ++i) {
                if ((rest[i] == "--inside" || rest[i] == "--outside") && i + 1 < rest.size()) {
                    request[rest[i].substr(2)] = rest[i + 1];
                    ++i;
                } else {
                    throw UsageError("unknown argument to sessions: " + rest[i]);
                }
            }
        } else if (command == "fixup") {
            if (rest.empty() || rest[0] == "list") {
                need_args(rest.empty() ? 0 : 1, "fixup list");
                request["action"] = "list";
            } else if (rest[0] == "enable" || rest[0] == "disable") {
                need_args(2, "fixup enable|disable PORT");
                const std::uint64_t port = port_or_id(rest[1], "port");
                if (port < 1 || port > 65535) {
                    throw UsageError("invalid port '" + rest[1] + "': expected 1-65535");
                }
                request["action"] = rest[0];
                request["port"] = port;
            } else {
                throw UsageError("usage: pptp-fixupctl fixup list|enable PORT|disable PORT");
            }
        } else if (command == "clear") {
            if (rest.size() == 1 && rest[0] == "all") {
                request["all"] = true;
            } else if (rest.size() == 2 && rest[0] == "session") {
                request["session"] = port_or_id(rest[1], "session ID");
            } else {
                throw UsageError("usage: pptp-fixupctl clear session ID | clear all");
            }
        } else if (command == "ha") {
            if (rest.size() != 1 || (rest[0] != "adopt" && rest[0] != "status")) {
                throw UsageError("usage: pptp-fixupctl ha adopt|status");
            }
            request["action"] = rest[0];
        } else if (command == "events") {
            if (!rest.empty()) {
                throw UsageError("'events' takes no arguments");
            }
            return follow_events(socket_path, as_json);
        } else if (command != "connections" && command != "stats" && command != "metrics") {
            throw UsageError("unknown command '" + command + "' (see --help)");
        } else if (!rest.empty()) {
            throw UsageError("'" + command + "' takes no arguments");
        }
        const json reply = ask(socket_path, request);
        if (as_json) {
            std::cout << reply.dump(2) << '\n';
        } else if (!reply.value("ok", false)) {
            std::cerr << "pptp-fixupctl: " << reply.value("error", std::string("request failed")) << '\n';
        } else if (command == "sessions") {
            print_sessions(reply);
        } else if (command == "connections") {
            print_connections(reply);
        } else if (command == "metrics") {
            std::cout << reply.value("metrics", std::string());
        } else if (command == "fixup") {
            std::cout << "fixup protocol pptp:";
            for (const auto& p : reply["fixup_ports"]) {
                std::cout << ' ' << p;
            }
            std::cout << (reply["fixup_ports"].empty() ? " (none)\n" : "\n");
        } else if (command == "ha" && reply.contains("ha")) {
            for (const auto& [name, value] : reply["ha"].items()) {
                std::cout << name << ' ' << (value.is_string() ? value.get<std::string>() : value.dump()) << '\n';
            }
        } else if (command == "ha") {
            std::cout << "adopted " << reply.value("adopted", 0) << " call(s) from "
                      << reply.value("labelled_connections", 0) << " labelled connection(s); "
                      << reply.value("already_known", 0) << " already here, " << reply.value("conflicts", 0)
                      << " in conflict, " << reply.value("invalid_labels", 0) << " label(s) not ours or damaged, "
                      << reply.value("ended_elsewhere", 0) << " call(s) here that ended on the other gateway\n";
        } else if (command == "clear") {
            std::cout << "cleared " << reply.value("cleared", 0) << " session(s)\n";
        } else {
            print_stats(reply);
        }
        return reply.value("ok", false) ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "pptp-fixupctl: " << e.what() << '\n';
        return 1;
    }
}
