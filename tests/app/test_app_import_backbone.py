"""The Pretrain page's "Import a backbone" section: an upload becomes an init; a bad file is refused in words."""
from __future__ import annotations

import io

import torch
import torchvision.models as tvm

from engine.models import list_inits
from tests.app.test_app_pages import _no_autopretrain, start, submit, texts  # noqa: F401


def test_upload_imports_a_moco_checkpoint_and_refuses_a_pickle():
    torch.manual_seed(0)
    sd = tvm.resnet18(weights=None).state_dict()
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}, buf)
    at = start("app_pages/pretrain.py")
    at.file_uploader(key="pt_import_file").set_value(("moco.pth", buf.getvalue(), "application/octet-stream"))
    at.text_input(key="pt_import_name").set_value("uploaded-moco")
    at.text_input(key="pt_import_licence").set_value("CC-BY-NC 4.0")
    submit(at, "Import")
    assert not at.exception, [e.value for e in at.exception]
    assert "Imported **uploaded-moco**" in texts(at) and "MoCo v2" in texts(at)
    info = {i.name: i for i in list_inits()}["uploaded-moco"]
    assert info.method == "imported" and info.info["imported"]["licence"] == "CC-BY-NC 4.0"
    at.file_uploader(key="pt_import_file").set_value(("junk.pt", b"\x80\x04junk", "application/octet-stream"))
    at.text_input(key="pt_import_name").set_value("junk")
    submit(at, "Import")
    assert not at.exception and "Not imported" in texts(at) and "not a valid weights file" in texts(at)
    assert "junk" not in {i.name for i in list_inits()}
