"""The classifier's error types (all ValueErrors, each message in plain words with the fix)."""
from __future__ import annotations


class ClassifierDataError(ValueError):
    """The labeled images cannot make a classifier (one class, too few of a class, bad labels)."""


class ClassifierLoadError(ValueError):
    """A saved classifier file cannot be used here (not a classifier, crafted or damaged, or its backbone changed)."""


class ClassifierScoreError(ValueError):
    """A score came out NaN or infinite: no answer is given for that image."""
