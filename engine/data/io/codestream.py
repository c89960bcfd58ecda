"""Header parsing of JPEG / JPEG-LS (ITU-T T.81, T.87) and JPEG 2000 (T.800) codestreams:
the coding process, sample precision and frame size, read without decoding any pixels."""
from __future__ import annotations

import struct
from typing import Final

# JPEG start-of-frame markers (ITU-T T.81 Table B.1; JPEG-LS: T.87) -> the process they code.
_JPEG_SOF: Final = {
    0xC0: "Baseline", 0xC1: "Extended, process 4", 0xC2: "Progressive", 0xC3: "Lossless, process 14",
    0xC5: "hierarchical sequential", 0xC6: "hierarchical progressive", 0xC7: "hierarchical lossless",
    0xC9: "Extended, arithmetic-coded", 0xCA: "Progressive, arithmetic-coded",
    0xCB: "Lossless, arithmetic-coded", 0xCD: "hierarchical, arithmetic-coded",
    0xCE: "hierarchical progressive, arithmetic-coded", 0xCF: "hierarchical lossless, arithmetic-coded",
    0xF7: "JPEG-LS",
}


def jpeg_variant(data: bytes) -> tuple[str, int] | None:
    """(process name, sample precision in bits) from a JPEG stream's first SOF marker, else None.

    Follows ITU-T T.81 Annex B: marker segments after SOI are walked by their 2-byte lengths until
    a start-of-frame marker (SOF0-SOF15 except DHT/JPG/DAC, or JPEG-LS SOF55), whose first byte
    is the sample precision P.
    """
    i = _sof_offset(data)
    if i is None or i + 4 >= len(data):
        return None
    return _JPEG_SOF[data[i + 1]], data[i + 4]


def _sof_offset(data: bytes) -> int | None:
    """Offset of a JPEG/JPEG-LS stream's first start-of-frame marker (ITU-T T.81 B.2.2), else None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF:
            return i
        if marker == 0xDA or length < 2:
            return None
        i += 2 + length
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG/JPEG-LS frame header: SOF = FFCn, Lf(2), P(1), Y(2), X(2), Nf(1)."""
    i = _sof_offset(data)
    if i is None or i + 9 > len(data):
        return None
    height, width = struct.unpack_from(">HH", data, i + 5)
    return int(width), int(height)


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG 2000 codestream (ITU-T T.800 A.5.1: SOC FF4F, SIZ FF51, Lsiz, Rsiz,
    Xsiz, Ysiz, XOsiz, YOsiz) or of a JP2 file holding one; None when there is none."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096) if not frame.startswith(b"\xff\x4f\xff\x51") else 0
    if at < 0 or at + 24 > len(frame):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, at + 8)
    return int(xsiz - xo), int(ysiz - yo)
