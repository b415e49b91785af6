// Giving up what the daemon does not need once its sockets are open: every
// capability but CAP_NET_ADMIN (NFQUEUE verdicts and the rule installer need
// it), and optionally root itself for a dedicated system user.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

namespace agent {

class PrivilegeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Keeps only CAP_NET_ADMIN (effective, permitted, inheritable, ambient, and
// the bounding set, so programs it runs get no more). With `user`, switches
// to that user and its group first. Throws PrivilegeError with one line.
void drop_privileges(std::optional<std::string> user);

}  // namespace agent
