"""Fixtures shared across the test folders, and the ``requires_data`` marker: a test marked
with it is skipped, with the reason, when the reference data folder is absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge.datapaths import DATA_DIR_ENV, data_root
from tests.postgres import Postgres


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
