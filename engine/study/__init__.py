"""The seed study in one command: pretrain each method, few-shot sweeps against baselines, Grad-CAM, one report.

`StudyConfig` (engine.study.config) says what to run; `run_study` (engine.study.runner) runs it
stage by stage, resumably, into one folder; `write_report` (engine.study.report) turns that folder
into `report.md` + `report.html`. CLI: `python -m engine study`; app: the Benchmark page.
"""
