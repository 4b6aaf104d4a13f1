"""``lungwatch run``: the bedside runtime (:mod:`edge.runtime.loop`) and, when its config says
``dashboard.enabled: true``, the ward view served beside it in the same process
(:func:`wardview.server.serve_beside`): one device that is its own ward. The runtime itself
knows nothing of the view; this module puts the two together."""

from __future__ import annotations

from edge.runtime.loop import main as run_main
from wardview.server import serve_beside


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, companions=(serve_beside,))
