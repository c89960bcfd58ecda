"""The clinician's path: a handful of labeled images -> a saved classifier with an honest AUC estimate,
calibrated probabilities, a chosen operating point and a warning for images unlike the training set.

`build_classifier` embeds the images with a chosen init, fits the probe (or finetunes the last stage on
cached activations, see `engine.fewshot.finetune.FastFinetune`) on all of them, and estimates how well
that procedure works by **repeated stratified k-fold cross-validation** (k = min(5, images in the smaller
class); patient-grouped when a manifest gives several images per patient):

* each repeat pools the out-of-fold (OOF) scores of all images and computes one AUC; the estimate is the
  mean over `cv_repeats` repeats;
* the 95% interval is a percentile bootstrap over *images*: 500 resamples of the images (the same
  resample for every repeat), the repeat-averaged AUC of each resample, its 2.5-97.5 percentiles,
  floored by `engine.fewshot.metrics.floor_interval` (the hull with Newcombe's 2006 small-sample interval
  for the positives and negatives labeled): perfectly separated OOF scores of 8 images give a wide
  interval, not [1, 1], and `Estimate.ci_note` / the sentence say it was widened.

**Calibration.** The classifier's raw score is a logit fitted on the very images it is scored on, so
`sigmoid(logit)` is overconfident. The probability shown is a map fitted on the *OOF* logits (pooled over
repeats, each repeat weighted 1/R), i.e. on scores of images the scoring model did not see:

* `platt` (default): p = 1 / (1 + exp(-(a * s + b))) fitted by maximum likelihood with Platt's smoothed
  targets t+ = (N+ + 1) / (N+ + 2), t- = 1 / (N- + 2) (Platt 1999, "Probabilistic outputs for support
  vector machines", section 2.2). Two parameters: the right choice with tens of images (Niculescu-Mizil &
  Caruana, ICML 2005, found Platt better than isotonic below ~1000 calibration samples). A slope a <= 0
  (OOF scores no better than chance) is replaced by a = 0: every image then gets the smoothed prevalence.
* `isotonic`: the monotone step function of the OOF scores that best fits the labels (pool adjacent
  violators; Zadrozny & Elkan, KDD 2002), via scikit-learn's IsotonicRegression, interpolated linearly
  between its breakpoints and clipped to [1 / (N + 2), (N + 1) / (N + 2)] so no image is called certain.

**Operating point.** Sensitivity and specificity are computed on the calibrated OOF probabilities (pooled
over repeats) at every candidate cut (midpoints between distinct values); a probability >= the cut is
called positive. The default cut maximizes Youden's J; `Classifier.operating_point("sensitivity", 0.9)`
gives the highest cut whose CV sensitivity is >= 0.9 (the best specificity at that sensitivity), and
`("specificity", v)` the lowest cut whose CV specificity is >= v. The verdict compares the *same*
calibrated probability that is shown with the cut, so the headline number and the verdict always agree.

**Unfamiliar images** (out-of-distribution flag). Features are the backbone's pooled output in probe mode
and, in finetune mode, the pooled input of its last stage (the frozen stages, which finetuning leaves as
pretrained: the finetuned last stage has learned the task and forgets what the images look like; measured
on 23 Kermany training images, it flagged 32 of 60 adult NIH images against 51 of 60 for the frozen
stages), L2-normalized; an image's score is the Euclidean
distance to its k-th nearest training image, k = 1 (the deep nearest-neighbour rule of Sun, Ming, Zhu &
Li, "Out-of-distribution detection with deep nearest neighbors", ICML 2022). The threshold is calibrated
on the training images by leave-one-out: each training image's distance to its nearest *other* training
image, and the cut is the r-th smallest of those n distances with r = ceil((n + 1)(1 - alpha)), alpha =
0.05, capped at n (the conformal rank: Vovk, Gammerman & Shafer 2005; Angelopoulos & Bates 2021). A new
image from the same source as the training images then exceeds the cut with probability about alpha
(at most 1 / (n + 1) more when r is capped, i.e. for n < 19). Such images are flagged `unfamiliar`:
the estimate and calibration say nothing about them.

It refuses (ClassifierDataError, plain words) a single class or fewer than 3 images of either class,
and warns below 10 per class. `Classifier.save` writes one safetensors file: tensors (head, probe,
finetuned backbone when there is one, the OOF probabilities and labels, the training features of the
familiarity rule) plus JSON metadata -- no pickle anywhere. `Classifier.load` checks the metadata against
a schema with bounds and every tensor for non-finite values before using any of it (ClassifierLoadError).

Modules (one concept each): `build` (fitting and cross-validation: `build_classifier`, `estimate_seconds`),
`estimate` (label checks, folds, `Estimate`), `calibration` (calibration and operating points),
`familiarity` (the unfamiliar-image flag), `inputs` (images -> uint8 squares -> features), `model` (the
`Classifier`: prediction, save/load), `schema` (the file format and its checks), `errors`. Import the names
from this package: `from engine.fewshot.classifier import build_classifier, Classifier`.
"""

from __future__ import annotations

from engine.fewshot.classifier.build import (DEFAULT_REPEATS, build_classifier, default_fast_finetune,
                                             estimate_seconds, recipe_of)
from engine.fewshot.classifier.calibration import (CALIBRATIONS, TARGETS, Calibration, OperatingPoint,
                                                   choose_operating_point, fit_calibration, operating_curve)
from engine.fewshot.classifier.errors import ClassifierDataError, ClassifierLoadError, ClassifierScoreError
from engine.fewshot.classifier.estimate import (MIN_PER_CLASS, WARN_PER_CLASS, Estimate, check_counts, cv_folds,
                                                sentence)
from engine.fewshot.classifier.familiarity import OOD_ALPHA, OOD_K, Familiarity, fit_familiarity
from engine.fewshot.classifier.inputs import ImageInput
from engine.fewshot.classifier.model import Classifier
from engine.fewshot.classifier.schema import FORMAT, FORMAT_VERSION, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_metadata

__all__ = [
    "CALIBRATIONS", "DEFAULT_REPEATS", "FORMAT", "FORMAT_VERSION", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "MIN_PER_CLASS",
    "OOD_ALPHA", "OOD_K", "TARGETS", "WARN_PER_CLASS", "Calibration", "Classifier", "ClassifierDataError",
    "ClassifierLoadError", "ClassifierScoreError", "Estimate", "Familiarity", "ImageInput",
    "OperatingPoint", "build_classifier", "check_counts", "check_metadata", "choose_operating_point", "cv_folds",
    "default_fast_finetune", "estimate_seconds", "fit_calibration", "fit_familiarity", "operating_curve", "recipe_of",
    "sentence",
]
