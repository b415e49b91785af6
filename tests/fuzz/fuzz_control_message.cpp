// libFuzzer target: the PPTP control message codec on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "pptp/control_message.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> bytes(data, size);
    if (size < pptp::kHeaderSize) {
        return 0;
    }
    const auto check = pptp::check_header(bytes);
    if (check.error != pptp::HeaderError::None) {
        (void)pptp::header_error_name(check.error);
        return 0;
    }
    // A valid header promises a known type whose fixed size fits the length.
    const auto& h = check.header;
    if (h.length < h.spec.size || h.length > pptp::kMaxMessageLength || h.control_type == 0 ||
        h.control_type > pptp::kMaxControlType) {
        std::abort();
    }
    const std::size_t region = pptp::call_id_region_end(h.spec);
    if (region != 0 && (region < 14 || region > pptp::kCallIdRegionEnd)) {
        std::abort();
    }
    const auto ids = pptp::read_call_ids(h.spec, bytes);
    if (size >= pptp::kCallIdRegionEnd && (ids.own.has_value() != (h.spec.own_call_id_offset != 0))) {
        std::abort();
    }
    (void)pptp::read_result_code(h.control_type, bytes);
    (void)pptp::read_protocol_version(bytes);
    (void)pptp::control_type_name(h.control_type);
    return 0;
}
