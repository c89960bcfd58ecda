"""The one place that relies on pytorch-grad-cam beyond its documented API.

Documented API used elsewhere: the CAM classes' constructors (`GradCAM(model, target_layers)`), calling
them (`cam(input_tensor, targets)`), and subclassing `BaseCAM` with `get_cam_weights` (the library's
extension hook, used by ScoreCAM / AblationCAM in engine.explain.gradcam).

Undocumented attributes relied on here, checked by `check_library()` (and by a test that fails loudly when
a new grad-cam release changes them; written against grad-cam 1.5.x):

* `BaseCAM.outputs`: `BaseCAM.forward` keeps the model's output of the last call there. Reading it gives the
  logits of the pass that produced the maps, without a second forward pass.
* `BaseCAM.activations_and_grads` (an `ActivationsAndGradients`): `.clear()` drops the activations and
  gradients its hooks recorded (they would otherwise accumulate across the many passes of the
  gradient-free methods), `.release()` removes its hooks (what `BaseCAM.__exit__` does, without that
  method's swallowing of IndexError).
"""
from __future__ import annotations

import torch
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM


class GradCamLibraryChanged(RuntimeError):
    """pytorch-grad-cam no longer has an attribute this engine relies on (see the module docstring)."""


def check_library() -> None:
    """Raise GradCamLibraryChanged when the installed pytorch-grad-cam lacks what this module relies on."""
    missing = [f"ActivationsAndGradients.{m}" for m in ("clear", "release", "__call__")
               if not callable(getattr(ActivationsAndGradients, m, None))]
    if not callable(getattr(BaseCAM, "get_cam_weights", None)):
        missing.append("BaseCAM.get_cam_weights")
    if missing:
        raise GradCamLibraryChanged(f"pytorch-grad-cam changed: {', '.join(missing)} missing; "
                                    "see engine/explain/camlib.py")


def last_outputs(cam: BaseCAM) -> torch.Tensor:
    """The model's output (B, 1) of `cam`'s last call, detached. GradCamLibraryChanged if the library stopped
    keeping it."""
    out = getattr(cam, "outputs", None)
    if not isinstance(out, torch.Tensor):
        raise GradCamLibraryChanged("pytorch-grad-cam changed: BaseCAM no longer keeps the model's output in "
                                    "`.outputs` after a call; see engine/explain/camlib.py")
    return out.detach()


def forget_pass(cam: BaseCAM) -> None:
    """Drop what the last call kept: the output and the recorded activations and gradients."""
    cam.outputs = None
    cam.activations_and_grads.clear()


def forget_activations(cam: BaseCAM) -> None:
    """Drop the activations and gradients the hooks recorded (between perturbed passes)."""
    cam.activations_and_grads.clear()


def release(cam: BaseCAM) -> None:
    """Remove `cam`'s hooks from the model and drop what it kept."""
    cam.activations_and_grads.release()
    cam.outputs = None
