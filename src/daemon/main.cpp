// pptp-fixupd: parse options, start the agent, run until told to stop.
#include <iostream>
#include <string>
#include <vector>

#include "daemon/agent.hpp"
#include "daemon/options.hpp"
#include "nfq/link.hpp"
#include "nfq/queue.hpp"

int main(int argc, char** argv) {
    try {
        const auto parsed = daemon_options::parse(argc, argv);
        if (!parsed.options) {
            std::cout << parsed.print_and_exit;
            return 0;
        }
        agent::Agent agent(*parsed.options, std::vector<std::string>(argv, argv + argc));
        return agent.run();
    } catch (const daemon_options::UsageError& e) {
        std::cerr << "pptp-fixupd: " << e.what() << " (see --help)\n";
    } catch (const std::exception& e) {
        std::cerr << "pptp-fixupd: " << e.what() << '\n';
    }
    return 1;
}
