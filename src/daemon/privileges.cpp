#include "daemon/privileges.hpp"

#include <grp.h>
#include <linux/securebits.h>
#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace agent {
namespace {

std::string errno_text() {
    return std::strerror(errno);
}

// True if the process holds no permitted capability besides CAP_NET_ADMIN
// (e.g. a systemd unit already narrowed it): nothing is left to drop.
bool already_minimal() {
    cap_t caps = cap_get_proc();
    if (caps == nullptr) {
        return false;
    }
    bool minimal = true;
    for (cap_value_t cap = 0; cap <= CAP_LAST_CAP && minimal; ++cap) {
        cap_flag_value_t value = CAP_CLEAR;
        if (cap != CAP_NET_ADMIN && CAP_IS_SUPPORTED(cap) && cap_get_flag(caps, cap, CAP_PERMITTED, &value) == 0 &&
            value == CAP_SET) {
            minimal = false;
        }
    }
    cap_free(caps);
    return minimal;
}

bool has_effective(cap_value_t cap) {
    cap_t caps = cap_get_proc();
    cap_flag_value_t value = CAP_CLEAR;
    const bool ok = caps != nullptr && cap_get_flag(caps, cap, CAP_EFFECTIVE, &value) == 0 && value == CAP_SET;
    cap_free(caps);
    return ok;
}

}  // namespace

void drop_privileges(std::optional<std::string> user) {
    if (!user && already_minimal()) {
        return;
    }
    // Narrow the bounding set first, while CAP_SETPCAP is still ours.
    if (has_effective(CAP_SETPCAP)) {
        for (cap_value_t cap = 0; cap <= CAP_LAST_CAP; ++cap) {
            if (cap != CAP_NET_ADMIN && CAP_IS_SUPPORTED(cap) && cap_get_bound(cap) == 1 && cap_drop_bound(cap) != 0) {
                throw PrivilegeError("cannot drop capabilities from the bounding set: " + errno_text());
            }
        }
    }
    if (user) {
        errno = 0;
        const passwd* pw = getpwnam(user->c_str());
        if (pw == nullptr) {
            throw PrivilegeError("no such user: " + *user);
        }
        if (getuid() == pw->pw_uid && getgid() == pw->pw_gid) {
            user.reset();  // already that user (started so by systemd)
        }
    }
    if (user) {
        const passwd* pw = getpwnam(user->c_str());
        // Keep the permitted set across setuid; it is cut to CAP_NET_ADMIN below.
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) {
            throw PrivilegeError("cannot keep capabilities across setuid: " + errno_text());
        }
        if (setgroups(0, nullptr) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
            throw PrivilegeError("cannot switch to user " + *user + ": " + errno_text());
        }
    }
    cap_t caps = cap_init();
    const cap_value_t keep[] = {CAP_NET_ADMIN};
    cap_set_flag(caps, CAP_EFFECTIVE, 1, keep, CAP_SET);
    cap_set_flag(caps, CAP_PERMITTED, 1, keep, CAP_SET);
    cap_set_flag(caps, CAP_INHERITABLE, 1, keep, CAP_SET);
    const int rc = cap_set_proc(caps);
    cap_free(caps);
    if (rc != 0) {
        throw PrivilegeError("cannot set capabilities: " + errno_text());
    }
    // Ambient, so the rule installer it runs (not root any more, or root
    // with a narrowed bounding set) still has CAP_NET_ADMIN.
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0) != 0) {
        throw PrivilegeError("cannot raise the ambient capability: " + errno_text());
    }
    if (user && prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) {
        throw PrivilegeError("cannot reset keep-capabilities: " + errno_text());
    }
}

}  // namespace agent
