// The control server's event stream, over a real Unix socket, driven by
// hand the way the daemon's poll loop drives it.
#include "control/server.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace {

class EventStream : public ::testing::Test {
protected:
    void SetUp() override {
        char pattern[] = "/tmp/pptp-fixup-server-test-XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        dir = pattern;
        server = std::make_unique<control::Server>(dir + "/s.sock", [](const nlohmann::json&) {
            return nlohmann::json{{"ok", true}};
        });
    }
    void TearDown() override {
        for (int fd : clients) close(fd);
        server.reset();
        std::string cmd = "rm -rf " + dir;
        (void)std::system(cmd.c_str());
    }
    int follower() {
        const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, (dir + "/s.sock").c_str(), sizeof(addr.sun_path) - 1);
        EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        const std::string request = "{\"command\":\"events\"}\n";
        EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
        clients.push_back(fd);
        return fd;
    }
    // One round of the daemon's loop.
    void turn() {
        for (int i = 0; i < 3; ++i) {
            std::vector<pollfd> fds;
            server->add_poll_fds(fds);
            (void)poll(fds.data(), fds.size(), 20);
            server->handle(fds, 0);
        }
    }
    // Whole lines only; a line cut by the socket waits for its rest.
    std::vector<nlohmann::json> read_lines(int fd) {
        std::string& text = pending[fd];
        char buffer[65536];
        pollfd p{fd, POLLIN, 0};
        while (poll(&p, 1, 20) > 0) {
            const ssize_t n = read(fd, buffer, sizeof(buffer));
            if (n <= 0) break;
            text.append(buffer, static_cast<std::size_t>(n));
        }
        std::vector<nlohmann::json> lines;
        for (auto nl = text.find('\n'); nl != std::string::npos; nl = text.find('\n')) {
            lines.push_back(nlohmann::json::parse(text.substr(0, nl)));
            text.erase(0, nl + 1);
        }
        return lines;
    }
    std::string dir;
    std::unique_ptr<control::Server> server;
    std::vector<int> clients;
    std::map<int, std::string> pending;
};

TEST_F(EventStream, EveryFollowerGetsEveryEventInOrder) {
    const int a = follower();
    const int b = follower();
    turn();
    EXPECT_EQ(server->subscribers(), 2u);
    for (int i = 0; i < 3; ++i) {
        server->publish({{"event", "call-built"}, {"n", i}});
    }
    turn();
    for (int fd : {a, b}) {
        const auto lines = read_lines(fd);
        ASSERT_EQ(lines.size(), 4u);
        EXPECT_EQ(lines[0]["events"], "following");
        for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[static_cast<std::size_t>(i) + 1]["n"], i);
    }
    close(a);
    clients.erase(clients.begin());
    turn();
    EXPECT_EQ(server->subscribers(), 1u);  // a follower that left is gone
}

TEST_F(EventStream, AFollowerThatDoesNotReadLosesEventsAndIsToldHowMany) {
    const int fd = follower();
    turn();
    (void)read_lines(fd);
    const std::string big(1000, 'x');
    const std::size_t sent = 2 * control::Server::kMaxSubscriberBacklog / big.size();
    for (std::size_t i = 0; i < sent; ++i) {
        server->publish({{"event", "drop"}, {"pad", big}});  // not handled: the backlog fills
    }
    for (int i = 0; i < 200; ++i) {  // now it reads
        turn();
        if (read_lines(fd).empty() && i > 20) break;
    }
    server->publish({{"event", "after"}});
    turn();
    const auto lines = read_lines(fd);
    ASSERT_GE(lines.size(), 2u);
    EXPECT_EQ(lines[0]["event"], "lost");
    EXPECT_GT(lines[0]["count"].get<std::size_t>(), 0u);
    EXPECT_EQ(lines[1]["event"], "after");
}

TEST_F(EventStream, RequestsOfAnyShapeAreAnsweredNotThrown) {
    for (const char* request : {"{\"command\": 5}\n", "{\"command\": null}\n", "[\"events\"]\n", "events\n"}) {
        const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, (dir + "/s.sock").c_str(), sizeof(addr.sun_path) - 1);
        ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        ASSERT_GT(write(fd, request, std::strlen(request)), 0);
        clients.push_back(fd);
        ASSERT_NO_THROW(turn()) << request;
        EXPECT_EQ(server->subscribers(), 0u) << request;
    }
}

TEST_F(EventStream, FollowersLeaveRoomForRequests) {
    for (std::size_t i = 0; i < control::Server::kMaxSubscribers; ++i) follower();
    turn();
    const int extra = follower();
    turn();
    const auto lines = read_lines(extra);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_FALSE(lines[0]["ok"].get<bool>());
    EXPECT_EQ(server->subscribers(), control::Server::kMaxSubscribers);
}

}  // namespace
