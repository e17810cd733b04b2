"""Fixtures of the correction tests (the database ones are in the parent conftest)."""

from __future__ import annotations

import pytest

# assertion details for the shared checks too (they must be registered before import)
pytest.register_assert_rewrite("n2w_pipeline_tests.corrections.common")


@pytest.fixture
def chans(catalog):  # noqa: ANN001
    """Two channels of group 1 and one of group 3."""
    g1, g3 = catalog.group(1), catalog.group(3)
    return g1.channels[0], g1.channels[1], g3.channels[0]
