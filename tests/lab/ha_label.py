"""The conntrack label pptp-fixupd --ha-sync connlabel writes, as the tests
and the benchmark build and check it (the format: src/ha/connection_label.cpp)."""

import struct


def crc8(label):
    """CRC-8 (polynomial 0x07, initial 0) of every byte but byte 3."""
    crc = 0
    for i, byte in enumerate(label):
        if i == 3:
            continue
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def one_call_label(inside_id, public_id, outside_id):
    """The label of a connection opened from the inside, PNS inside, with one
    outgoing established call."""
    b = bytearray(16)
    b[0] = 0xB7
    b[1] = (1 << 4) | (1 << 1)      # version 1, not opened from outside, PNS side 0 (+1)
    b[2] = 0x01 | 0x10              # one call, outgoing
    b[4:10] = struct.pack("!HHH", inside_id, public_id, outside_id)
    b[3] = crc8(b)
    return bytes(b)


def label_calls(label):
    """The (inside, public, outside) Call IDs a label of the agent's names."""
    assert label[0] == 0xB7 and label[1] >> 4 == 1 and crc8(label) == label[3], label.hex()
    return [struct.unpack("!HHH", label[4 + 6 * i:10 + 6 * i]) for i in range(label[2] & 3)]
