"""Pretrain page section "Import a backbone": a weights file trained elsewhere becomes an init.

The page part of `python -m engine import-backbone` (engine.models.importing): the same layouts, checks and
provenance; errors are shown as messages and nothing is written then.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from engine.models.files import NotAWeightsFileError
from engine.models.importing import BackboneImportError, import_backbone

ARCH_CHOICES = ["resnet18", "resnet50", "densenet121"]
NORMS = {"imagenet": "ImageNet mean/std (torchvision, timm, MoCo, DINO, BarlowTwins, lightly)",
         "xrv": "torchxrayvision ([0, 1] pixels -> [-1024, 1024]: mean 0.5, std 1/2048)"}


def import_section() -> None:
    """The upload form; on submit, imports the file and says what was found (layout, keys left out, stem)."""
    st.caption("A backbone trained elsewhere (a .pth/.pt state dict or a .safetensors file): torchvision or timm "
               "ResNets/DenseNets, official MoCo v2/v3, DINO, BarlowTwins, lightly, or a torchxrayvision DenseNet. "
               "It then appears as an init on every page, with its provenance. Whole pickled models are refused: "
               "save the network's state_dict() instead.")
    with st.form("import_backbone_form", border=True):
        up = st.file_uploader("Weights file", type=["pth", "pt", "tar", "ckpt", "bin", "safetensors"],
                              key="pt_import_file")
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", ARCH_CHOICES, key="pt_import_arch")
        name = c2.text_input("Name", key="pt_import_name", help="A new checkpoint name: letters, digits, '-', '_'.")
        norm = c3.selectbox("Input normalization", list(NORMS), format_func=NORMS.get, key="pt_import_norm")
        source = st.text_input("Source (paper, URL)", key="pt_import_source")
        licence = st.text_input("Licence of the weights", key="pt_import_licence")
        go = st.form_submit_button("Import", icon=":material/upload:")
    if not go:
        return
    if up is None or not name.strip():
        st.error("Choose a weights file and enter a name for the backbone.", icon=":material/error:")
        return
    mean, std = (0.5, 1 / 2048) if norm == "xrv" else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / Path(up.name).name
        f.write_bytes(up.getvalue())
        try:
            with st.spinner("Reading and checking the weights..."):
                r = import_backbone(f, arch, name.strip(), source=source.strip(), licence=licence.strip(),
                                    mean=mean, std=std)
        except (BackboneImportError, NotAWeightsFileError, OSError, ValueError) as e:
            st.error(f"Not imported: {e}", icon=":material/error:")
            return
    st.success(f"Imported **{r.name}** ({r.arch}) from {up.name}: layout {r.layout}; {r.n_dropped} tensors left out "
               f"(heads, other networks){'; ' + r.stem if r.stem else ''}. It is now an init on the Classifier, "
               "Benchmark and Grad-CAM pages.", icon=":material/check_circle:")
