"""DICOM (pydicom 3 and its pixel-data plugins) -> float32 HxW in [0, 1]: parsing, the checks
made before decoding (single image, transfer syntax, compressed frame size, deflate bombs) and the
messages for pixel data that does not decode. Values -> [0, 1]: engine.data.io.dicom_values."""
from __future__ import annotations

import io
import zlib
from typing import Final

import numpy as np

from engine.data.io.codestream import _j2k_size, _jpeg_frame_size, jpeg_variant
from engine.data.io.common import (_BT601, _DECODE_ERRORS, _DEFLATED_TS, _INFLATE_FLOOR, MAX_EXPANSION, ImageMeta,
                                   ImageReadError, _check_expansion, _check_size, _code_string, _kib)
from engine.data.io.dicom_values import _monochrome_to_unit, pixel_padding_mask


_DECODER_PACKAGES: Final[tuple[tuple[str, str], ...]] = (
    ("JPEG2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("JPEGLS", "pylibjpeg pylibjpeg-libjpeg"),
    ("JPEG", "pylibjpeg pylibjpeg-libjpeg"),
    ("RLE", "pylibjpeg pylibjpeg-rle"),
    ("HTJ2K", "pylibjpeg pylibjpeg-openjpeg"),
)
_COLOR_PHOTOMETRICS: Final = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


def _read_dicom(data: bytes, name: str) -> tuple[np.ndarray, ImageMeta]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    _refuse_deflate_bomb(data, name)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, *_DECODE_ERRORS, KeyError, IndexError, AttributeError) as e:
        # Only the error type: a parser message may quote a tag value, which could be identifying.
        raise ImageReadError(f"{name} looks like DICOM but cannot be parsed ({type(e).__name__}); the file is "
                             f"corrupt or truncated: export it again from the PACS.") from e
    if len(ds) == 0:  # pydicom gives up silently (with a warning) on data sets cut off mid-element
        raise ImageReadError(f"{name} has a DICOM header but no readable data set: the file is truncated or "
                             f"corrupt. Export it again from the PACS.")
    _ensure_transfer_syntax(ds, name)
    _check_dicom_is_single_image(ds, name)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    _check_size(cols, rows, name)
    _check_compressed_frame(ds, cols, rows, name)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise ImageReadError(f"{name} is a palette-colour DICOM; only greyscale (MONOCHROME1/2) or RGB/YBR "
                             f"radiographs are supported. Export it as MONOCHROME2.")
    if photometric not in _COLOR_PHOTOMETRICS | {"MONOCHROME1", "MONOCHROME2"}:
        raise ImageReadError(f"{name} has an unsupported Photometric Interpretation "
                             f"{_code_string(photometric) or '(missing)'}; expected MONOCHROME1/2, RGB or YBR.")
    stored = _decode_dicom_pixels(ds, name)
    if photometric in _COLOR_PHOTOMETRICS:
        img = _color_dicom_to_gray(stored, ds)
    else:
        padding = pixel_padding_mask(stored, ds)
        if padding is not None and padding.all():
            raise ImageReadError(f"{name}: every pixel equals the Pixel Padding Value, so the image holds no "
                                 f"content; export the radiograph again.")
        img = _monochrome_to_unit(stored, ds, padding)
        if photometric == "MONOCHROME1":
            img = np.subtract(np.float32(1.0), img, out=img)  # inversion after windowing
        if padding is not None:
            img[padding] = 0.0  # padding is background, whatever the window or polarity
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    meta = ImageMeta(source_format="dicom", width=cols, height=rows, bits=bits, photometric=photometric,
                     modality=_code_string(ds.get("Modality")), view=_code_string(ds.get("ViewPosition")))
    return img, meta


def _refuse_deflate_bomb(data: bytes, name: str) -> None:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): pydicom inflates the whole data set in one
    unbounded zlib call. Inflate it here first, 1 MiB at a time without keeping the output, and
    refuse it once it passes MAX_EXPANSION times its compressed size (at least 64 MiB)."""
    if _DEFLATED_TS not in data[:4096]:
        return
    from pydicom import filereader

    fp = io.BytesIO(data)
    try:
        filereader.read_preamble(fp, True)
        meta = filereader._read_file_meta_info(fp)
    except Exception:  # no readable file meta: dcmread reports what is wrong
        return
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED_TS.decode():
        return
    start = fp.tell()
    compressed = len(data) - start
    limit = max(_INFLATE_FLOOR, MAX_EXPANSION * compressed)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = memoryview(data)[start:]
    try:
        for i in range(0, len(view), 1 << 16):
            pending = bytes(view[i:i + (1 << 16)])
            while pending:
                total += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
                if total > limit:
                    raise ImageReadError(
                        f"{name} is a deflated DICOM whose {_kib(compressed)} of compressed data inflate to more "
                        f"than {limit / 2**20:,.0f} MiB (over {MAX_EXPANSION}:1); radiographs compress at most about "
                        f"30:1. The file is corrupt or built to exhaust memory (a decompression bomb), so it was "
                        f"refused before reading it. Export the image again, uncompressed.")
            if inflater.eof:
                break
    except zlib.error:
        return  # corrupt deflate data: dcmread reports it


def _check_compressed_frame(ds, cols: int, rows: int, name: str) -> None:
    """Refuse, before decoding, an encapsulated (compressed) frame whose codestream declares another
    size than Rows x Columns (the decoder allocates what the codestream says), or whose pixels would
    expand more than MAX_EXPANSION times the compressed data (a decompression bomb)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not getattr(tsyntax, "is_compressed", False) or "PixelData" not in ds:
        return
    frame = _first_frame(ds)
    size = None
    if frame is not None:
        if frame[:2] == b"\xff\xd8":
            size = _jpeg_frame_size(frame)
        elif frame[:4] == b"\xff\x4f\xff\x51" or frame[4:8] == b"jP  ":
            size = _j2k_size(frame)
    if size is not None and size != (cols, rows):
        _check_size(*size, name)
        raise ImageReadError(
            f"{name}: its compressed frame declares a {size[0]}x{size[1]} image but the DICOM header says "
            f"{cols}x{rows} (Columns x Rows); the file is corrupt or crafted, so it was refused before decoding. "
            f"Export the image again.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    allocated = int(ds.get("BitsAllocated") or 16)
    try:
        compressed = len(ds.PixelData)
    except (TypeError, AttributeError):
        return
    _check_expansion(cols, rows, samples * max(1, -(-allocated // 8)), compressed, name, "compressed pixel data")


def _ensure_transfer_syntax(ds, name: str) -> None:
    """Files without file meta (no preamble) get the transfer syntax pydicom detected while parsing."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise ImageReadError(f"{name} has no transfer syntax and its encoding cannot be inferred; "
                             f"re-export it as a standard DICOM file (Part 10, with file meta).")
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid


def _sop_class_name(ds) -> str:
    uid = ds.get("SOPClassUID")
    label = getattr(uid, "name", "") if uid is not None else ""
    modality = _code_string(ds.get("Modality"))
    return " ".join(p for p in (label and f"a {label}", modality and f"(modality {modality})") if p) or "a DICOM object"


def _check_dicom_is_single_image(ds, name: str) -> None:
    if "PixelData" not in ds:
        kind = _sop_class_name(ds)
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(f"{name} is {kind} with floating-point pixel data (a parametric map), not a "
                                 f"radiograph; import the X-ray image itself.")
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if rows and cols:
            raise ImageReadError(f"{name} has no pixel data although its header describes a {cols}x{rows} image: "
                                 f"the file is truncated or its pixel data was removed. Export the image again.")
        raise ImageReadError(f"{name} is {kind} with no pixel data, so it is not an image (e.g. a report or "
                             f"presentation state); import the X-ray image itself.")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageReadError(f"{name} is a multi-frame DICOM ({frames} frames); scarce-cxr accepts single-frame "
                             f"radiographs. Export the frame you want as its own DICOM or PNG.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples not in (1, 3):
        raise ImageReadError(f"{name} has {samples} samples per pixel; only greyscale (1) or colour (3) "
                             f"radiographs are supported.")


def _decode_dicom_pixels(ds, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError, *_DECODE_ERRORS, KeyError, IndexError, AttributeError) as e:
        raise ImageReadError(_decode_failure(ds, name, e)) from e


def _decode_failure(ds, name: str, error: BaseException) -> str:
    """The message for pixel data that did not decode: missing decoder, no decoder at all, truncated
    data, or corrupt data / an unsupported variant, decided from the decoder registry and the data."""
    from pydicom.pixels.decoders.base import get_decoder

    tsyntax = ds.file_meta.TransferSyntaxUID
    ts = f"'{tsyntax.name}'"
    if not tsyntax.is_compressed:
        return (f"{name}: the uncompressed pixel data ({ts}) is shorter than its header says or malformed "
                f"({error}); the file is truncated or corrupt: export the image again.")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return (f"{name} uses the {ts} transfer syntax, for which no decoder exists in pydicom; decompress it "
                f"to Explicit VR Little Endian (e.g. `gdcmconv --raw in.dcm out.dcm`) or export it uncompressed.")
    if not decoder.is_available:
        packages = next((pkgs for key, pkgs in _DECODER_PACKAGES if key in tsyntax.keyword.upper()),
                        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")
        return (f"{name} uses the {ts} transfer syntax and no installed decoder can read it (missing decoder: no plugin for it is installed). "
                f"Install one: pip install {packages}")
    plugins = ", ".join(decoder.available_plugins)
    reasons = " ".join(str(error).split())
    frame = _first_frame(ds)
    if frame is not None and _frame_truncated(frame, tsyntax):
        return (f"{name}: the {ts} pixel data is truncated: the compressed image stops before its end-of-image "
                f"marker ({len(frame)} bytes), so the installed decoders ({plugins}) cannot finish it. The file "
                f"was cut short in a copy or export: export it again.")
    variant = jpeg_variant(frame) if frame is not None and frame[:2] == b"\xff\xd8" else None
    hint = f" The image is a {variant[1]}-bit JPEG ({variant[0]})." if variant else ""
    return (f"{name}: the {ts} pixel data is corrupt, or a variant the installed decoders ({plugins}) cannot "
            f"handle.{hint} Their reasons: {reasons}. Export the image again, or uncompressed (Explicit VR "
            f"Little Endian).")


def _first_frame(ds) -> bytes | None:
    """The first encapsulated frame's bytes (PS3.5 A.4), or None when they cannot be separated."""
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # malformed item structure: no frame to inspect
        return None


def _frame_truncated(frame: bytes, tsyntax) -> bool:
    """JPEG, JPEG-LS and JPEG 2000 codestreams end with the marker FFD9 (EOI / EOC; ITU-T T.81 B.2.1,
    T.87, T.800 A.4.4), followed at most by the one 0x00 that pads a DICOM item to even length
    (PS3.5 A.4). RLE has no end marker and is never called truncated here."""
    if "RLE" in tsyntax.keyword.upper():
        return False
    end = frame[:-1] if frame.endswith(b"\x00") else frame
    return not end.endswith(b"\xff\xd9")


def _color_dicom_to_gray(rgb: np.ndarray, ds) -> np.ndarray:
    """HxWx3 RGB (pydicom converts YBR to RGB) -> BT.601 luminance / container max."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(f"colour DICOM decoded to shape {rgb.shape}, expected HxWx3; the file is corrupt.")
    top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    luma = rgb.astype(np.float32) @ _BT601                                       # HxW f32
    return np.clip(luma * np.float32(1.0 / top), 0.0, 1.0)
