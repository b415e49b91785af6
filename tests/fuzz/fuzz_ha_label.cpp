// libFuzzer target: the conntrack label a standby's agent adopts calls from
// (bits conntrackd carried from another gateway, or anyone with
// CAP_NET_ADMIN set).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ha/connection_label.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size != ha::kLabelBytes) {
        return 0;
    }
    ha::LabelBytes bytes{};
    std::memcpy(bytes.data(), data, bytes.size());
    ha::LabelError error = ha::LabelError::None;
    const auto label = ha::decode_label(bytes, error);
    if (!label) {
        if (error == ha::LabelError::None) {
            std::abort();
        }
        return 0;
    }
    // What is accepted is exactly what encoding it gives back: nothing is
    // read that the writer did not put there, nothing is lost.
    if (ha::encode_label(*label) != bytes) {
        std::abort();
    }
    return 0;
}
