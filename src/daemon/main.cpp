// pptp-fixupd: parse options, start the agent, run until told to stop.
#include <cerrno>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "daemon/agent.hpp"
#include "daemon/options.hpp"
#include "nfq/link.hpp"
#include "nfq/queue.hpp"
#include "offload/nft_offload.hpp"

int main(int argc, char** argv) {
    try {
        const auto parsed = daemon_options::parse(argc, argv);
        if (!parsed.options) {
            std::cout << parsed.print_and_exit;
            return 0;
        }
        if (parsed.options->remove_offload) {
            offload::OffloadConfig config;
            config.outside_interfaces = {"lo"};  // not used to delete
            offload::NftOffload nft(config);
            const int error = nft.remove_table();
            if (error != 0 && error != ENOENT) {
                std::cerr << "pptp-fixupd: cannot delete table ip " << config.table << ": " << std::strerror(error)
                          << '\n';
                return 1;
            }
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
