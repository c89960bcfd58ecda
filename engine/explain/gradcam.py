"""Class activation maps for few-shot classifiers, over pytorch-grad-cam.

The explained model is the backbone and the trained head as one module (`ExplainModel`) whose output is
the positive-class logit (B, 1). `CAMExplainer` wraps one pytorch-grad-cam method on one target layer
and is used as a context manager, so its hooks are released on exit, exceptions included:

    with CAMExplainer(ExplainModel(backbone, probe.as_torch_head()), "layer4", "gradcam", device) as ex:
        maps = ex(x)                                   # (B, 3, S, S) -> np.float32 (B, S, S) in [0, 1]
        heat = explain_image(ex, img, 224, "pad")      # float32 HxW at the image's original size

Methods: Grad-CAM (Selvaraju et al. 2017), Grad-CAM++ (Chattopadhay et al. 2018), and two gradient-free
ones, Score-CAM (Wang et al. 2020) and Ablation-CAM (Desai & Ramaswamy 2020).

Targets. Gradient methods differentiate the raw positive logit (`PositiveLogitTarget`). The gradient-free
methods score perturbed inputs; with a single logit, Score-CAM's softmax over channel scores and
Ablation-CAM's relative drop `(y - y_k) / y` need a positive score, so they use the positive-class
probability sigmoid(logit) (`PositiveProbabilityTarget`), the binary analogue of the papers' softmax.

Efficiency. While explaining, every parameter is frozen and a forward hook makes the target layer's
output a fresh leaf that requires grad: the backward pass then runs only through the layers after the
target (for layer4: pooling and the head), never through the backbone. Gradients w.r.t. the target
activations are unchanged by this. The model is put in eval mode (no BatchNorm statistics updates) and
its training flag and every parameter's `requires_grad` are restored on exit.

One explainer per model at a time: the hooks live on the model's modules.

`ExplainModel` is the one backbone + head module (engine.models.classifier_net, re-exported here; the
few-shot Classifier's `explain_module()` returns it).
Every use of pytorch-grad-cam beyond its documented API goes through `engine.explain.camlib`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM

from engine.explain import camlib
from engine.models.backbones import IMAGENET_MEAN, IMAGENET_STD, prepare_batch
from engine.models.classifier_net import ExplainModel  # noqa: F401  (its old import path)

METHODS = ("gradcam", "gradcam++", "scorecam", "ablationcam")
GRADIENT_FREE = ("scorecam", "ablationcam")


class PositiveLogitTarget:
    """Target for a single-logit classifier: the logit itself. Works per sample ((1,) -> scalar) and per
    batch ((B, 1) -> (B,))."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., 0]


class PositiveProbabilityTarget:
    """sigmoid(positive logit): a positive score for the gradient-free methods (see module docstring)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model_output[..., 0])


# ----------------------------------------------------------------------------------------- layers
def _root(model: nn.Module) -> nn.Module:
    """Where layer names are looked up: the `backbone` of a backbone + head module (ExplainModel, or the
    few-shot Classifier's explain module), else the model itself."""
    bb = getattr(model, "backbone", None)
    return bb if isinstance(bb, nn.Module) else model


def conv_layer_names(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Names of modules holding convolutions, up to `max_depth` dotted levels below the backbone
    (for a ResNet: conv1, layer1 .. layer4 and their blocks). These are the sensible CAM targets."""
    root = _root(model)
    names = []
    for name, mod in root.named_modules():
        if not name or name.count(".") >= max_depth:
            continue
        if any(isinstance(m, nn.Conv2d) for m in mod.modules()):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called `name` (dotted; relative to the backbone, `backbone.` prefix optional).

    Raises ValueError listing the valid convolutional stages when `name` is not one, or holds no
    convolution (e.g. `avgpool`, `fc`): a CAM needs a spatial feature map.
    """
    root = _root(model)
    key = name.removeprefix("backbone.") if root is not model else name
    try:
        layer = root.get_submodule(key) if key else None
    except AttributeError:
        layer = None
    if layer is None or not any(isinstance(m, nn.Conv2d) for m in layer.modules()):
        valid = ", ".join(conv_layer_names(model))
        raise ValueError(f"target layer {name!r} is not a convolutional layer of this backbone; valid names: {valid}")
    return layer


# -------------------------------------------------------------------------------- gradient-free
class _ChunkedGradientFreeCAM(BaseCAM):
    """Shared pieces of the gradient-free methods: chunked, quiet scoring of many perturbed passes.

    pytorch-grad-cam's own ScoreCAM/AblationCAM materialise every masked copy of the input at once,
    print tqdm bars and let their activation hooks accumulate a copy per pass; these score chunk by chunk
    and drop the recorded activations after each chunk, so memory stays bounded.
    """

    def __init__(self, model: nn.Module, target_layers: list[nn.Module], batch_size: int = 32) -> None:
        super().__init__(model, target_layers, reshape_transform=None, uses_gradients=False)
        self.batch_size = batch_size

    def _scores(self, x: torch.Tensor, targets: Sequence[Callable]) -> torch.Tensor:
        out = self.model(x)  # (n, 1)
        camlib.forget_activations(self)  # the hooks recorded this pass's activations: not needed
        return targets[0](out).float()  # (n,)


class ScoreCAM(_ChunkedGradientFreeCAM):
    """Score-CAM (Wang et al. 2020): channel weight = softmax over channels of the target score of the
    input masked by that channel's upsampled, min-max-normalized activation map."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        b, c = activations.shape[:2]
        weights = np.empty((b, c), np.float32)
        size = input_tensor.shape[-2:]
        with torch.no_grad():
            for i in range(b):
                acts = torch.from_numpy(activations[i : i + 1]).to(self.device)  # (1, C, h, w)
                # align_corners=True as pytorch-grad-cam's UpsamplingBilinear2d
                up = nn.functional.interpolate(acts, size=size, mode="bilinear", align_corners=True)[0]  # (C, S, S)
                flat = up.view(c, -1)
                lo, hi = flat.min(1)[0], flat.max(1)[0]  # (C,)
                up = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]  # (C, S, S) in [0, 1]
                # Constant channels all mask the input to zero: score that input once.
                live = torch.nonzero(hi > lo).flatten()
                scores = torch.full((c,), float("nan"), device=self.device)
                for j in range(0, live.numel(), self.batch_size):
                    ch = live[j : j + self.batch_size]
                    masked = input_tensor[i : i + 1] * up[ch, None]  # (n, 3, S, S)
                    scores[ch] = self._scores(masked, targets[i : i + 1])
                if live.numel() < c:
                    scores[hi <= lo] = self._scores(torch.zeros_like(input_tensor[i : i + 1]), targets[i : i + 1])[0]
                weights[i] = torch.softmax(scores, 0).cpu().numpy()
        return weights


class AblationCAM(_ChunkedGradientFreeCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): channel weight = relative drop of the target score when
    that channel of the target layer's output is set to zero, (y - y_k) / y. The ablation is a forward
    hook on the target layer, removed in all cases (the model is never modified; pytorch-grad-cam's
    version swaps the layer out and leaves it swapped if a pass raises)."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        b, c = activations.shape[:2]
        weights = np.empty((b, c), np.float32)
        override: list[torch.Tensor] = []
        handle = target_layer.register_forward_hook(lambda m, a, out: override[0], prepend=True)
        try:
            with torch.no_grad():
                for i in range(b):
                    acts = torch.from_numpy(activations[i : i + 1]).to(self.device)  # (1, C, h, w)
                    override[:] = [acts]
                    y = self._scores(input_tensor[i : i + 1], targets[i : i + 1])  # (1,)
                    # Zeroing an all-zero channel changes nothing (y_k = y, weight 0): skip those passes.
                    live = torch.nonzero(acts[0].flatten(1).abs().amax(1) > 0).flatten()
                    yk = y.expand(c).clone()  # (C,)
                    for j in range(0, live.numel(), self.batch_size):
                        ch = live[j : j + self.batch_size]
                        ablated = acts.repeat(len(ch), 1, 1, 1)  # (n, C, h, w)
                        ablated[torch.arange(len(ch), device=self.device), ch] = 0.0
                        override[:] = [ablated]
                        x = input_tensor[i : i + 1].expand(len(ch), -1, -1, -1)  # (n, 3, S, S)
                        yk[ch] = self._scores(x, targets[i : i + 1])
                    weights[i] = ((y - yk) / y.clamp_min(1e-8)).cpu().numpy()
        finally:
            handle.remove()
        return weights


_CAM_CLASSES: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "ablationcam": AblationCAM,
}


# ------------------------------------------------------------------------------------ explainer
class CAMExplainer:
    """One CAM method on one target layer of an `ExplainModel`; a context manager owning the hooks.

    `explainer(x)` maps a normalized batch (B, 3, S, S) to heatmaps np.float32 (B, S, S), each min-max
    scaled to [0, 1] (an all-zero map stays zero: no positive evidence anywhere). `last_logits` holds the
    positive logits (B,) of the latest call. `batch_size` bounds images per pass (and, for the
    gradient-free methods, perturbed copies per pass). Non-finite logits or maps raise ValueError.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str = "layer4",
        method: str = "gradcam",
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if method not in _CAM_CLASSES:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
        self.model = model
        self.device = torch.device(device)
        self.method = method
        self.layer_name = target_layer
        self.layer = resolve_layer(model, target_layer)
        self.batch_size = max(1, int(batch_size))
        self.mean, self.std = tuple(mean), tuple(std)
        self.last_logits: np.ndarray | None = None
        self._cam: BaseCAM | None = None
        self._cut_handle = None
        self._saved_grad: list[tuple[nn.Parameter, bool]] = []
        self._saved_training = False

    # --- context management
    def __enter__(self) -> "CAMExplainer":
        if self._cam is not None:
            raise RuntimeError("this CAMExplainer is already active; use one `with` block at a time")
        camlib.check_library()
        self._saved_training = self.model.training
        self._saved_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self.model.to(self.device).eval()
            for p, _ in self._saved_grad:
                p.requires_grad_(False)
            # Registered first so the library's hooks see (and hook gradients on) the cut tensor.
            self._cut_handle = self.layer.register_forward_hook(_cut_graph, prepend=True)
            cls = _CAM_CLASSES[self.method]
            if self.method in GRADIENT_FREE:
                self._cam = cls(self.model, [self.layer], batch_size=self.batch_size)
            else:
                self._cam = cls(self.model, [self.layer])
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._restore()
        return False  # never swallow exceptions (BaseCAM.__exit__ would swallow IndexError)

    def _restore(self) -> None:
        if self._cam is not None:
            camlib.release(self._cam)
            self._cam = None
        if self._cut_handle is not None:
            self._cut_handle.remove()
            self._cut_handle = None
        for p, flag in self._saved_grad:
            p.requires_grad_(flag)
        self._saved_grad = []
        self.model.train(self._saved_training)

    # --- explaining
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalized -> np.float32 (B, S, S) in [0, 1]."""
        if self._cam is None:
            raise RuntimeError("CAMExplainer must be used inside `with CAMExplainer(...) as explainer:`")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a normalized batch (B, 3, S, S); got shape {tuple(x.shape)}")
        target = PositiveProbabilityTarget() if self.method in GRADIENT_FREE else PositiveLogitTarget()
        maps, logits = [], []
        step = 1 if self.method in GRADIENT_FREE else self.batch_size
        with torch.enable_grad():
            for i in range(0, x.shape[0], step):
                xb = x[i : i + step].to(self.device)  # (b, 3, S, S)
                maps.append(self._cam(xb, [target] * xb.shape[0]))  # (b, S, S)
                logits.append(camlib.last_outputs(self._cam)[:, 0].float().cpu().numpy())  # (b,)
                camlib.forget_pass(self._cam)
        self.last_logits = np.concatenate(logits)
        out = np.concatenate(maps).astype(np.float32, copy=False)  # (B, S, S)
        if not (np.isfinite(self.last_logits).all() and np.isfinite(out).all()):
            # a NaN map would be min-max scaled and shown as "empty": refuse it as the error it is
            raise ValueError("the model produced non-finite scores or heatmaps (NaN/inf weights or inputs); "
                             "rebuild the classifier, or check the image with `python -m engine info`")
        return np.clip(out, 0.0, 1.0, out=out)

    def prepare(self, u8: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S) -> normalized (B, 3, S, S) on the device, with this init's mean/std."""
        t = torch.from_numpy(np.ascontiguousarray(u8)) if isinstance(u8, np.ndarray) else u8
        return prepare_batch(t, self.device, self.mean, self.std, channels_last=False)


def _cut_graph(module: nn.Module, args, output):
    """Forward hook: make the target activation a leaf that requires grad, so backward stops there."""
    if torch.is_grad_enabled() and isinstance(output, torch.Tensor):
        return output.detach().requires_grad_(True)
    return None


# ----------------------------------------------------------------------------- original size
def _renormalize(m: np.ndarray) -> np.ndarray:
    m = np.clip(m.astype(np.float32, copy=False), 0.0, None)
    hi = float(m.max()) if m.size else 0.0
    return m / hi if hi > 0 else np.zeros_like(m)


def explain_images(
    explainer: CAMExplainer, images: Sequence[np.ndarray], image_size: int, mode: str = "pad"
) -> list[np.ndarray]:
    """Heatmaps for float32 [0, 1] images of any sizes, each at its image's ORIGINAL size (HxW, [0, 1]).

    Images are letterboxed to the working resolution (`fit_square`), explained in batches, and mapped
    back with `unfit`, which drops the padding; each map is then rescaled to [0, 1] over the image
    itself, so padding never holds the maximum.
    """
    from engine.data.transforms import fit_square, unfit

    fitted = [fit_square(np.asarray(img, np.float32), image_size, mode) for img in images]
    out: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    for i in range(0, len(fitted), explainer.batch_size):
        chunk = fitted[i : i + explainer.batch_size]
        x = explainer.prepare(np.stack([u8 for u8, _ in chunk]))  # (b, 3, S, S)
        maps = explainer(x)  # (b, S, S)
        logits.append(explainer.last_logits)
        out += [_renormalize(unfit(m, lb)) for m, (_, lb) in zip(maps, chunk)]
    explainer.last_logits = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    return out


def explain_image(explainer: CAMExplainer, img_f32: np.ndarray, image_size: int, mode: str = "pad") -> np.ndarray:
    """One image (float32 HxW in [0, 1]) -> heatmap float32 HxW in [0, 1] at its original size."""
    return explain_images(explainer, [img_f32], image_size, mode)[0]
