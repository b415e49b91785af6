"""PPP FCS-16 (RFC 1662) and async-HDLC framing, stdlib only."""

FLAG = 0x7E
ESC = 0x7D


def _make_fcs_table():
    table = []
    for b in range(256):
        v = b
        for _ in range(8):
            v = (v >> 1) ^ 0x8408 if v & 1 else v >> 1
        table.append(v & 0xFFFF)
    return table


_FCS_TABLE = _make_fcs_table()
FCS_INIT = 0xFFFF
FCS_GOOD = 0xF0B8


def fcs16(data, fcs=FCS_INIT):
    for b in data:
        fcs = (fcs >> 8) ^ _FCS_TABLE[(fcs ^ b) & 0xFF]
    return fcs


def ppp_frame(protocol, payload, acfc=False):
    """A PPP frame without HDLC framing: FF 03 (unless acfc), protocol, payload."""
    head = b"" if acfc else b"\xff\x03"
    return head + protocol.to_bytes(2, "big") + bytes(payload)


def hdlc_encode(frame):
    """Async-HDLC encode one PPP frame (FF 03 ... included by the caller)."""
    fcs = fcs16(frame) ^ 0xFFFF
    raw = bytes(frame) + bytes((fcs & 0xFF, fcs >> 8))
    out = bytearray([FLAG])
    for b in raw:
        if b in (FLAG, ESC) or b < 0x20:
            out += bytes((ESC, b ^ 0x20))
        else:
            out.append(b)
    out.append(FLAG)
    return bytes(out)


class HdlcDecoder:
    """Incremental async-HDLC decoder.

    ``feed(data)`` returns a list of PPP frames (FCS checked and removed).
    Frames with a bad FCS are counted in ``bad_fcs`` and dropped.
    """

    def __init__(self):
        self._buf = bytearray()
        self._esc = False
        self.bad_fcs = 0

    def feed(self, data):
        frames = []
        for b in data:
            if b == FLAG:
                if len(self._buf) >= 3:
                    if fcs16(self._buf) == FCS_GOOD:
                        frames.append(bytes(self._buf[:-2]))
                    else:
                        self.bad_fcs += 1
                elif self._buf:
                    self.bad_fcs += 1
                self._buf.clear()
                self._esc = False
            elif b == ESC:
                self._esc = True
            else:
                if self._esc:
                    b ^= 0x20
                    self._esc = False
                self._buf.append(b)
        return frames


def split_ppp(frame):
    """(protocol, payload) of a PPP frame, tolerating ACFC and PFC."""
    if frame[:2] == b"\xff\x03":
        frame = frame[2:]
    if not frame:
        return None, b""
    if frame[0] & 1:  # protocol field compressed to one byte
        return frame[0], frame[1:]
    if len(frame) < 2:
        return None, b""
    return int.from_bytes(frame[:2], "big"), frame[2:]


# LCP Configure-Request, id 1, options: MRU 1500, magic number 0x5046_4c42.
LCP_CONFREQ = ppp_frame(
    0xC021,
    bytes([1, 1, 0, 14, 1, 4, 0x05, 0xDC, 5, 6, 0x50, 0x46, 0x4C, 0x42]),
)
