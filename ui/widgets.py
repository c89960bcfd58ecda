"""Small shared widgets: headers, empty states, image helpers, init names."""
from __future__ import annotations

import base64
import io
from typing import Any, Iterable

import numpy as np
import streamlit as st
from PIL import Image

from engine.ssl.registry import METHODS as SSL_METHOD_SPECS

PAGE_FILES = {
    "data": "app_pages/data.py",
    "pretrain": "app_pages/pretrain.py",
    "classifier": "app_pages/classifier.py",
    "benchmark": "app_pages/benchmark.py",
    "gradcam": "app_pages/gradcam.py",
}
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom", "zip"]
# The Data page's uploader takes any file (None = no extension filter): DICOM from CDs and PACS often
# has no extension (IM000001), and the store decides by content, reporting non-images per file.
DATA_UPLOAD_TYPES = None
# SSL methods' labels come from their registry entries (engine/ssl/registry.py); builtins' are here.
METHOD_LABEL = {
    **{name: spec.label for name, spec in SSL_METHOD_SPECS.items()},
    "random": "Random weights",
    "imagenet": "ImageNet (supervised)",
}


def page_header(title: str, intro: str) -> None:
    st.title(title)
    st.caption(intro)


def empty_state(message: str, *, link: str | None = None, link_label: str | None = None,
                icon: str = ":material/info:") -> None:
    """A friendly 'nothing here yet' box, optionally with a link to the page that fixes it."""
    st.info(message, icon=icon)
    if link:
        page_link(link, label=link_label or f"Go to {link.title()}", icon=":material/arrow_forward:")


def page_link(page: str, **kwargs: Any) -> None:
    """st.page_link to one of the app's pages (a PAGE_FILES key or a page file) that keeps this session's
    workspace in the address (`?ws=`), so the page it opens, reloaded or opened in a new tab, shows it."""
    from ui.services import WS_PARAM, workspace_param

    st.page_link(PAGE_FILES.get(page, page), query_params={WS_PARAM: workspace_param()}, **kwargs)


def method_label(method: str) -> str:
    return METHOD_LABEL.get(method, method.replace("_", " ").title())


def init_label(info: Any) -> str:
    """'MoCo v2 · resnet18 · moco_v2-resnet18-demo' for a checkpoint; 'Random weights · resnet18' for builtins.
    The tail says where the weights come from, read from `info.kind` (engine.models.InitInfo: the recorded
    training data, never the name): shipped ones and those pretrained on synthetic phantoms say so."""
    if info.kind in ("random", "download-gated"):
        return f"{method_label(info.method)} · {info.arch}"
    if info.kind == "shipped":
        return f"{method_label(info.method)} · {info.arch} · {info.name} · ships with scarce-cxr (real chest X-rays)"
    if info.kind == "synthetic":
        return f"{method_label(info.method)} · {info.arch} · {info.name} · synthetic phantoms, not real X-rays"
    return f"{method_label(info.method)} · {info.arch} · {info.name}"


def is_synthetic_workspace(workspace: Any) -> bool:
    """Whether `workspace` is the demo one (filled with synthetic phantom radiographs on first use)."""
    from pathlib import Path

    from engine.tasks import is_demo_workspace

    return is_demo_workspace(Path(workspace))


def synthetic_notice(workspace: Any) -> None:
    """A plain label on every page that shows the demo workspace's images or what was built from them."""
    if is_synthetic_workspace(workspace):
        st.info("**Demo workspace: synthetic images.** The images here are computer-generated phantom chest "
                "radiographs, not real X-rays. Classifiers, estimates and backbones made from them show how the "
                "tool works; they say nothing about real patients.", icon=":material/science:")


def default_image_size(device_type: str, inits: Iterable[Any] = ()) -> int:
    """Working size a page proposes for a job over `inits` (InitInfos or names): the largest size any of them
    runs at on this device (engine.models.input_size_for: its trained size; random's is the device's), so
    none is judged below the size it was trained at. No inits: the device's working size for `random`."""
    from engine.models import input_size_for

    sizes = [input_size_for(i, device_type) for i in inits]
    return max(sizes) if sizes else input_size_for("random", device_type)


def is_ssl(info: Any) -> bool:
    """A pretrained checkpoint (not `random` / `imagenet`), from the registry's kind, not the name."""
    return info.kind not in ("random", "download-gated")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0,1] or uint8/uint16 image -> uint8 (for display)."""
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return (img.astype(np.float64) / max(float(img.max()), 1.0) * 255.0).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: np.ndarray) -> str:
    """PNG data URI of a small image (for st.column_config.ImageColumn)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def chunks(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def pager(total: int, per_page: int, key: str) -> tuple[int, int]:
    """A page selector; returns the [start, stop) slice of items to show."""
    pages = max(1, -(-total // per_page))
    if pages == 1:
        return 0, total
    c1, c2 = st.columns([1, 5])
    page = c1.number_input("Page", min_value=1, max_value=pages, value=1, step=1, key=key)
    c2.caption(f"\n\n{total} images · {pages} pages of {per_page}")
    start = (int(page) - 1) * per_page
    return start, min(total, start + per_page)


def fmt_time(t: float) -> str:
    """Local date and time of a Unix timestamp, e.g. '2025-03-01 14:05'."""
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(t)))


def label_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "unlabeled"
    return "present" if float(v) >= 0.5 else "absent"
