"""Few-shot engine: embedding cache, k-shot episodes, linear probe, finetuning, sweeps, metrics, classifier.

Modules (import them directly; this package stays import-light so `python -m engine --help` is fast):
`features` (embed), `episodes` (test_split, sample_episode), `probe` (fit_probe), `finetune`
(FinetuneConfig, finetune, finetune_many, double_finetune), `metrics`, `sweep` (SweepConfig,
run_sweep), `plots` (auc_vs_shots_figure), `classifier` (build_classifier, Classifier).
"""
