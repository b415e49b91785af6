#include "daemon/rules.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace agent {
namespace {

std::string run(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        return std::string("cannot create a pipe: ") + std::strerror(errno);
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // The daemon blocks these for its signalfd; the child must not inherit that.
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(pipe_fds[1]);
    if (rc != 0) {
        close(pipe_fds[0]);
        return "cannot run " + argv[0] + ": " + std::strerror(rc);
    }
    std::string output;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{pipe_fds[0], POLLIN, 0};
        if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) {
            kill(pid, SIGKILL);
            output += " (timed out)";
            break;
        }
        std::array<char, 512> buffer{};
        const ssize_t n = read(pipe_fds[0], buffer.data(), buffer.size());
        if (n <= 0) {
            break;
        }
        output.append(buffer.data(), static_cast<std::size_t>(n));
    }
    close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return {};
    }
    while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) {
        output.pop_back();
    }
    if (const auto nl = output.rfind('\n'); nl != std::string::npos) {
        output = output.substr(nl + 1);  // the last line says what failed
    }
    return argv[0] + " failed: " + (output.empty() ? "exit status " + std::to_string(WEXITSTATUS(status)) : output);
}

}  // namespace

std::string installer_path(const std::string& command) {
    if (command.empty() || command.find('/') != std::string::npos) {
        return command;
    }
    std::array<char, 4096> self{};
    const ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
    if (n <= 0) {
        return command;
    }
    std::string beside(self.data(), static_cast<std::size_t>(n));
    beside = beside.substr(0, beside.rfind('/') + 1) + command;
    return access(beside.c_str(), X_OK) == 0 ? beside : command;
}

std::string apply_rules(const RulesSettings& settings, const std::vector<std::uint16_t>& ports,
                        std::chrono::seconds timeout) {
    if (ports.empty()) {
        return remove_rules(settings, timeout);
    }
    std::string list;
    for (std::uint16_t p : ports) {
        list += (list.empty() ? "" : ",") + std::to_string(p);
    }
    std::array<char, 16> mark{};
    (void)std::snprintf(mark.data(), mark.size(), "0x%08x", settings.offload_mark);
    std::string outsides;
    for (const auto& name : settings.outside_interfaces) {
        outsides += (outsides.empty() ? "" : ",") + name;
    }
    std::vector<std::string> args{
        settings.command, "install", "--outside",      outsides,   "--queue", std::to_string(settings.queue),
        "--ports",        list,      "--offload-mark", mark.data()};
    if (settings.conntrack_labels) {
        args.emplace_back("--conntrack-labels");
    }
    return run(args, timeout);
}

std::string remove_rules(const RulesSettings& settings, std::chrono::seconds timeout) {
    // The running agent keeps its offload table (its calls are withdrawn
    // one by one); only a stop for good deletes it.
    return run({settings.command, "remove", "--keep-offload"}, timeout);
}

}  // namespace agent
