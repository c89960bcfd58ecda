"""Explanations of few-shot classifiers: class activation maps and how well they localize.

Modules (import them directly; this package stays import-light so `python -m engine --help` is fast):
`gradcam` (ExplainModel, CAMExplainer, explain_image(s)), `camlib` (the one place relying on pytorch-grad-cam
internals), `localization` (energy_in_region, energy_ratio, pointing_hit, topq_iou, scores, aggregate),
`overlay` (overlay, grid, colormap), `study` (GradCAMStudyConfig, run_gradcam_study: one finding across inits,
behind `python -m engine gradcam`), `regions` and `classifiers` (the study's regions and per-init classifiers).
"""
