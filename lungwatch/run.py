"""``lungwatch run``: the bedside runtime (:mod:`edge.runtime.loop`) and, with
``dashboard.enabled: true``, the ward view beside it in the same process
(:func:`wardview.server.serve_beside`), one device its own ward; the runtime knows no view."""

from __future__ import annotations

from edge.runtime.loop import main as run_main
from wardview.server import serve_beside


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, companions=(serve_beside,))
