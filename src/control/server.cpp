#include "control/server.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace control {
namespace {

bool is_events_request(const std::string& line) {
    // Never throws: a request of any shape goes on to respond(), which
    // answers bad ones with an error.
    const auto request = nlohmann::json::parse(line, nullptr, false);
    if (!request.is_object()) {
        return false;
    }
    const auto command = request.find("command");
    return command != request.end() && command->is_string() && command->get<std::string>() == "events";
}

}  // namespace

std::string respond(const RequestHandler& handler, const std::string& line) {
    nlohmann::json response;
    try {
        const auto request = nlohmann::json::parse(line);
        if (!request.is_object() || !request.contains("command") || !request["command"].is_string()) {
            response = {{"ok", false}, {"error", "request must be an object with a string \"command\""}};
        } else {
            response = handler(request);
        }
    } catch (const nlohmann::json::exception& e) {
        response = {{"ok", false}, {"error", std::string("bad request: ") + e.what()}};
    }
    return response.dump() + "\n";
}

Server::Server(std::string path, RequestHandler handler) : path_(std::move(path)), handler_(std::move(handler)) {
    sockaddr_un addr{};
    if (path_.empty() || path_.size() >= sizeof(addr.sun_path)) {
        throw ServerError("control socket path is empty or too long: " + path_);
    }
    std::error_code ec;
    const auto dir = std::filesystem::path(path_).parent_path();
    if (!dir.empty()) {
        std::filesystem::create_directories(dir, ec);
        if (ec) {
            throw ServerError("cannot create " + dir.string() + ": " + ec.message());
        }
    }
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) {
        throw ServerError(std::string("cannot create control socket: ") + std::strerror(errno));
    }
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size());
    // A live daemon on the path keeps it; a stale socket from a crashed run
    // (nobody accepts) is replaced.
    if (const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); probe >= 0) {
        const bool in_use = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
        close(probe);
        if (in_use) {
            close(listen_fd_);
            throw ServerError("control socket " + path_ + " is in use by another process (another pptp-fixupd?)");
        }
    }
    unlink(path_.c_str());
    const mode_t old_mask = umask(0177);  // socket born 0600: root only
    const int rc = bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    umask(old_mask);
    if (rc < 0 || listen(listen_fd_, 8) < 0) {
        const std::string reason = std::strerror(errno);
        close(listen_fd_);
        throw ServerError("cannot listen on control socket " + path_ + ": " + reason);
    }
}

Server::~Server() {
    for (auto& c : clients_) {
        close(c.fd);
    }
    if (listen_fd_ >= 0) {
        close(listen_fd_);
        unlink(path_.c_str());
    }
}

void Server::add_poll_fds(std::vector<pollfd>& fds) const {
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const auto& c : clients_) {
        fds.push_back({c.fd, static_cast<short>(c.output.empty() ? POLLIN : POLLOUT), 0});
    }
}

void Server::handle(const std::vector<pollfd>& fds, std::size_t first) {
    // Clients first (their indices match the order add_poll_fds used).
    for (std::size_t i = 0; i < clients_.size() && first + 1 + i < fds.size(); ++i) {
        const short ev = fds[first + 1 + i].revents;
        if ((ev & (POLLERR | POLLHUP | POLLNVAL)) != 0 && (ev & POLLIN) == 0) {
            clients_[i].closing = true;
        } else if ((ev & POLLIN) != 0) {
            read_client(clients_[i]);
        } else if ((ev & POLLOUT) != 0) {
            write_client(clients_[i]);
        }
    }
    std::erase_if(clients_, [](const Client& c) {
        if (c.closing) {
            close(c.fd);
        }
        return c.closing;
    });
    if ((fds[first].revents & POLLIN) != 0) {
        accept_clients();
    }
}

void Server::accept_clients() {
    for (;;) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        if (clients_.size() >= kMaxClients) {
            static constexpr char kBusy[] = "{\"ok\":false,\"error\":\"too many control clients\"}\n";
            [[maybe_unused]] auto n = write(fd, kBusy, sizeof(kBusy) - 1);
            close(fd);
            continue;
        }
        clients_.push_back(Client{fd, {}, {}, false});
    }
}

void Server::read_client(Client& c) {
    char buffer[1024];
    for (;;) {
        const ssize_t n = read(c.fd, buffer, sizeof(buffer));
        if (n == 0) {
            c.closing = c.output.empty();
            return;
        }
        if (n < 0) {
            c.closing = errno != EAGAIN && errno != EINTR;
            return;
        }
        if (c.subscribed) {
            continue;  // a follower sends nothing more; only its close counts
        }
        c.input.append(buffer, static_cast<std::size_t>(n));
        const auto newline = c.input.find('\n');
        if (newline != std::string::npos && is_events_request(c.input.substr(0, newline)) &&
            subscribers() >= kMaxSubscribers) {
            // Followers never leave by themselves: some room stays for requests.
            c.input.clear();
            c.output = R"({"ok":false,"error":"too many event followers"})"
                       "\n";
            write_client(c);
            return;
        }
        if (newline != std::string::npos && is_events_request(c.input.substr(0, newline))) {
            c.subscribed = true;
            c.input.clear();
            c.output = R"({"ok":true,"events":"following"})"
                       "\n";
            write_client(c);
            continue;
        }
        if (newline != std::string::npos) {
            c.output = respond(handler_, c.input.substr(0, newline));
            c.input.clear();
            write_client(c);
            return;
        }
        if (c.input.size() > kMaxRequestBytes) {
            c.output = R"({"ok":false,"error":"request too long"})"
                       "\n";
            c.input.clear();
            write_client(c);
            return;
        }
    }
}

void Server::write_client(Client& c) {
    while (!c.output.empty()) {
        const ssize_t n = send(c.fd, c.output.data(), c.output.size(), MSG_NOSIGNAL);
        if (n < 0) {
            c.closing = errno != EAGAIN && errno != EINTR;
            return;
        }
        c.output.erase(0, static_cast<std::size_t>(n));
    }
    c.closing = !c.subscribed;  // one request per connection, unless it follows events
}

std::size_t Server::subscribers() const noexcept {
    return static_cast<std::size_t>(
        std::count_if(clients_.begin(), clients_.end(), [](const Client& c) { return c.subscribed; }));
}

void Server::publish(const nlohmann::json& event) {
    std::string line;
    for (auto& c : clients_) {
        if (!c.subscribed || c.closing) {
            continue;
        }
        if (line.empty()) {
            line = event.dump() + "\n";
        }
        if (c.output.size() + line.size() > kMaxSubscriberBacklog) {
            ++c.lost;
            continue;
        }
        if (c.lost > 0) {
            c.output += nlohmann::json{{"event", "lost"}, {"count", c.lost}}.dump() + "\n";
            c.lost = 0;
        }
        c.output += line;
    }
}

}  // namespace control
