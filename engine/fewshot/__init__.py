"""Few-shot engine: embedding cache, k-shot episodes, linear probe, finetuning, sweeps, metrics, classifier.

Modules (import them directly; this package stays import-light so `python -m engine --help` is fast):
`features` (embed), `episodes` (test_split, sample_episode), `probe` (fit_probe), `finetune`
(FinetuneConfig, finetune, finetune_many, double_finetune), `augment` (draw_augment, apply_augment),
`fast_finetune` (FastFinetune: the Classifier's cached last-stage finetune), `head_recipe` (the one recipe
that fits a head on an episode: probe, finetune, full_finetune; every caller's), `modes` (what the mode names
mean, torch-free), `metrics`, `trials` (trial rows, evaluate_trial, summarize, readers that rename old modes),
`sweep` (SweepConfig, run_sweep), `stage_one` (double full finetune's stage one in a sweep), `plots`
(auc_vs_shots_figure), `classifier` (a package: build_classifier, Classifier).
"""
