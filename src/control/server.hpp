// The control API: a Unix stream socket, one JSON request per line, one JSON
// response per line. Non-blocking throughout, driven by the daemon's poll
// loop, so a slow or hostile client never stalls the data path.
#pragma once

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace control {

// Turns a request into a response. Must not throw for bad input: it returns
// {"ok": false, "error": "..."} instead.
using RequestHandler = std::function<nlohmann::json(const nlohmann::json& request)>;

class ServerError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Server {
public:
    static constexpr std::size_t kMaxClients = 16;
    static constexpr std::size_t kMaxRequestBytes = 4096;

    // Creates the socket (mode 0600) and its directory; throws ServerError.
    Server(std::string path, RequestHandler handler);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Sends one event line to every client that asked for "events". A
    // client that does not keep up loses events (it is told how many)
    // rather than holding the daemon's memory.
    void publish(const nlohmann::json& event);
    [[nodiscard]] std::size_t subscribers() const noexcept;
    static constexpr std::size_t kMaxSubscriberBacklog = std::size_t{256} * 1024U;
    static constexpr std::size_t kMaxSubscribers = 8;  // of kMaxClients

    // Appends the descriptors to watch; call handle() with the results.
    void add_poll_fds(std::vector<pollfd>& fds) const;
    void handle(const std::vector<pollfd>& fds, std::size_t first);

    [[nodiscard]] const std::string& path() const noexcept { return path_; }

private:
    struct Client {
        int fd = -1;
        std::string input;
        std::string output;
        bool closing = false;
        bool subscribed = false;  // "events": the connection stays open
        std::uint64_t lost = 0;   // events not queued since the last told
    };
    void accept_clients();
    void read_client(Client& c);
    void write_client(Client& c);

    std::string path_;
    RequestHandler handler_;
    int listen_fd_ = -1;
    std::vector<Client> clients_;
};

// Parses one request line and runs it; errors become {"ok":false,...}.
[[nodiscard]] std::string respond(const RequestHandler& handler, const std::string& line);

}  // namespace control
