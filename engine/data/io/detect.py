"""Format detection from content (never from the file name), loading a file's bytes, describing
unknown content, and the declared pixel size read from a header alone."""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from engine.data.io.codestream import _jpeg_frame_size
from engine.data.io.common import _DEFLATED_TS, _OPENERS, ImageReadError


def detect_format(head: bytes) -> str | None:
    """'png' | 'jpeg' | 'tiff' | 'dicom' from the first bytes of a file (>= 132 for DICOM), else None."""
    if head[128:132] == b"DICM":  # first: some DICOM preambles are TIFF headers (dual-personality files)
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a tag of group 0002 or 0008, followed by an
    explicit VR (two upper-case letters) or, little-endian only, a 4-byte implicit length."""
    if len(head) < 12:
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    group_le, element_le = struct.unpack_from("<HH", head, 0)
    if group_le in (0x0002, 0x0008) and element_le <= 0x0100:
        (length,) = struct.unpack_from("<I", head, 4)
        return explicit or length < 1 << 16 or length == 0xFFFFFFFF
    group_be, element_be = struct.unpack_from(">HH", head, 0)
    return group_be in (0x0002, 0x0008) and element_be <= 0x0100 and explicit


def _load_bytes(src: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the image data"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = f"'{path}'"
        if not path.exists():
            raise ImageReadError(f"{name} does not exist; check the path.")
        if path.is_dir():
            raise ImageReadError(f"{name} is a folder, not an image file; pick a file inside it.")
        if not path.is_file():  # a FIFO would block the read forever; sockets and devices are no images
            raise ImageReadError(f"{name} is not a regular file (a named pipe, socket or device); pick an image "
                                 "file.")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageReadError(f"{name} cannot be read ({e.strerror}); check its permissions.") from e
    else:
        raise TypeError(f"read_image takes a path or bytes, not {type(src).__name__}")
    if not data:
        raise ImageReadError(f"{name} is empty (0 bytes); the copy or download probably failed, fetch it again.")
    return data, name


def describe_content(data: bytes) -> str:
    head = data[:64]
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive; extract it or import it as a ZIP"
    for magic, kind in ((b"BM", "BMP"), (b"GIF8", "GIF"), (b"RIFF", "WebP/RIFF"), (b"%PDF", "PDF"),
                        (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream")):
        if head.startswith(magic):
            return f"its content is {kind}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"its content starts with bytes {head[:8].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return "it contains text, whatever its file name says"
    return f"its content starts with bytes {head[:8].hex(' ')}"


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from a file's header alone, without decoding any pixels, or None
    when the content is no PNG/JPEG/TIFF/DICOM or its header cannot be parsed (read_image then says
    why). Cheap (microseconds for raster headers, a partial parse for DICOM); used to budget an
    upload's total pixels before decoding any of it. Deflated DICOM is not inflated here: None."""
    fmt = detect_format(data[:1024])
    try:
        if fmt == "png":
            if data[12:16] != b"IHDR" or len(data) < 24:
                return None
            w, h = struct.unpack_from(">II", data, 16)
            return fmt, int(w), int(h)
        if fmt == "jpeg":
            found = _jpeg_frame_size(data)
            return None if found is None else (fmt, found[0], found[1])
        if fmt == "tiff":
            im = _OPENERS["tiff"](io.BytesIO(data))
            return fmt, int(im.width), int(im.height)
        if fmt == "dicom":
            if _DEFLATED_TS in data[:4096]:
                return None
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True,
                                 specific_tags=["Rows", "Columns"])
            rows, cols = ds.get("Rows"), ds.get("Columns")
            return (fmt, int(cols), int(rows)) if rows and cols else None
    except Exception:  # any parse failure: unknown size, read_image reports what is wrong
        return None
    return None
