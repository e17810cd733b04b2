"""Tests of ``n2w_pipeline.corrections``, one module per module of the package."""
