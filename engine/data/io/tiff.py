"""TIFFs Pillow cannot open or decode (big-endian 16-bit min-is-white, 12-bit and other odd
layouts), read with tifffile under the same rules as engine.data.io.raster."""
from __future__ import annotations

import io

import numpy as np

from engine.data.io.common import _BT601, ImageMeta, ImageReadError, _check_expansion, _check_size, _minmax
from engine.data.io.orientation import apply_orientation


def _read_tiff_tifffile(data: bytes, name: str, pillow_error: BaseException) -> tuple[np.ndarray, ImageMeta]:
    """TIFFs Pillow cannot open or decode, read with tifffile (TIFF 6.0 baseline + extensions)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            pages = tf.pages
            if len(pages) > 1:
                raise ImageReadError(f"{name} holds {len(pages)} images (multi-page TIFF); scarce-cxr reads "
                                     f"single-image files: save the radiograph you want on its own.")
            page = pages.first
            _check_size(int(page.imagewidth), int(page.imagelength), name)
            photometric = int(page.photometric)
            bits = int(page.bitspersample)
            _check_expansion(int(page.imagewidth), int(page.imagelength),
                             max(1, int(page.samplesperpixel)) * max(1, -(-bits // 8)), len(data), name)
            compression = getattr(page.compression, "name", str(page.compression))
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else 1
            try:
                arr = page.asarray()
            except ImageReadError:
                raise
            except Exception as e:  # tifffile raises NotImplementedError/ValueError/... per codec
                variant = f"{bits}-bit, {compression} compression"
                if isinstance(e, NotImplementedError) or "imagecodecs" in str(e):
                    raise ImageReadError(
                        f"{name} is a TIFF ({variant}) that Pillow cannot read ({pillow_error}) and tifffile can "
                        f"only decode with the 'imagecodecs' package, which is not installed ({e}). Install it "
                        f"(pip install imagecodecs), or save the image as a 16-bit TIFF or PNG and import that.") from e
                raise ImageReadError(
                    f"{name} is a TIFF ({variant}) that neither Pillow ({pillow_error}) nor tifffile "
                    f"({type(e).__name__}: {e}) can decode: the data is truncated or corrupt. Re-export or "
                    f"download it again.") from e
            colormap = page.colormap
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"{name} starts like a TIFF file but neither Pillow ({pillow_error}) nor tifffile "
                             f"({type(e).__name__}: {e}) can read it: the file is truncated or corrupt. Re-export or "
                             f"download it again.") from e
    img = _tifffile_to_unit_gray(arr, photometric, bits, colormap, name)
    img = apply_orientation(img, orientation if 1 <= orientation <= 8 else 1)
    kind = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette"}.get(photometric, str(photometric))
    return img, ImageMeta(source_format="tiff", width=img.shape[1], height=img.shape[0], bits=bits,
                          photometric=f"{arr.dtype.str.lstrip('<>|=')} {kind}")


def _tifffile_to_unit_gray(arr: np.ndarray, photometric: int, bits: int, colormap, name: str) -> np.ndarray:
    """tifffile page array -> float32 HxW in [0, 1] under the module's raster rules (TIFF 6.0 tag 262)."""
    if photometric in (0, 1):                                   # WhiteIsZero / BlackIsZero, HxW
        if arr.ndim == 3 and arr.shape[-1] > 1:
            arr = arr[..., 0]                                   # extra samples (alpha) dropped
        if arr.ndim != 2:
            raise ImageReadError(f"{name}: greyscale TIFF decoded to shape {arr.shape}, expected HxW.")
        if arr.dtype.kind == "f":
            img = arr.astype(np.float32)
            if not np.isfinite(img).all():
                raise ImageReadError(f"{name} contains NaN or infinite pixel values; re-export it from the source.")
            if not (img.size and img.min() >= 0.0 and img.max() <= 1.0):
                img = _minmax(img)
        elif arr.dtype == bool:
            img = arr.astype(np.float32)
        elif bits <= 8:
            img = arr.astype(np.float32) * np.float32(1.0 / (2 ** bits - 1))   # container maximum
        else:
            img = _minmax(arr)                                  # raw detector values
        if photometric == 0:
            img = np.subtract(np.float32(1.0), img, out=img)
        return np.clip(img, 0.0, 1.0, out=img)
    if photometric == 3 and colormap is not None:               # palette: colormap (3, 2**bits) uint16
        rgb = np.moveaxis(colormap[:, arr], 0, -1).astype(np.float32) / np.float32(65535.0)
        return np.clip(rgb @ _BT601, 0.0, 1.0)
    if photometric == 2 and arr.ndim == 3 and arr.shape[-1] >= 3:
        top = np.float32(1.0) if arr.dtype.kind == "f" else np.float32(2 ** bits - 1)
        return np.clip(arr[..., :3].astype(np.float32) @ _BT601 / top, 0.0, 1.0)
    raise ImageReadError(f"{name} is a TIFF with photometric interpretation {photometric} and shape {arr.shape}, "
                         f"which scarce-cxr does not read; save it as a greyscale (min-is-black) TIFF or PNG.")
