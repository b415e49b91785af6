// libFuzzer target: the call record a restarted agent reads back from the
// kernel's map elements (user data anyone with CAP_NET_ADMIN could have set).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "offload/nft_offload.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    offload::CallRecord record;
    if (!offload::decode_record(data, size, record)) {
        return 0;
    }
    // What is accepted is exactly what encoding it gives back: no field is
    // read from outside the record, none is lost (flag bits not in use are
    // the only bytes allowed to differ).
    const auto again = offload::encode_record(record);
    if (again.size() != size) {
        std::abort();
    }
    for (std::size_t i = 0; i < size; ++i) {
        const bool spare = i == 3 || (i >= 26 && i < 28);
        if (!spare && again[i] != data[i]) {
            std::abort();
        }
    }
    offload::CallRecord back;
    if (!offload::decode_record(again.data(), again.size(), back) || !(back == record)) {
        std::abort();
    }
    return 0;
}
