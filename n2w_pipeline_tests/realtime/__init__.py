"""Tests of ``n2w_pipeline.realtime`` (one file per module) and of its sensor; shared
fixtures in ``conftest.py``, helpers in ``helpers.py``."""
