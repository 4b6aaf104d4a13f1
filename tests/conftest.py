"""Fixtures shared across the test folders, and the ``requires_data`` marker: a test marked
with it is skipped, with the reason, when the reference data folder is absent. Files with a
``slow`` test run first, each file's tests in their order: ``make test`` hands whole files to
its workers in this order, so the longest files (the fleet's rollouts) start at once instead of
running alone at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge.datapaths import DATA_DIR_ENV, data_root
from tests.postgres import Postgres


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay whole
    root = data_root()
    if root.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {root} (set {DATA_DIR_ENV})")
    for item in items:
        if "requires_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the whole run, started the first time a test asks."""
    server = Postgres()
    yield server
    server.stop()
