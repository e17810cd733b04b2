"""Tests of ``n2w_pipeline.checks``, one file per module; the crafted dataset in ``conftest.py``."""
