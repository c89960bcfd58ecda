"""Analyses of representations: SVCCA (engine.analysis.svcca) and dataset similarity through a backbone
(engine.analysis.similarity). Imports are lazy: `python -m engine --help` loads no torch."""
