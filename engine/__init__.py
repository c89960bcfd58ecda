"""scarce-cxr engine: SSL pretraining, few-shot classifiers and Grad-CAM for chest X-rays.

Never imports streamlit (tests/test_headless.py enforces it).
"""

__version__ = "0.1.0"
