"""A sink that appends each event as one JSON line (``Event.to_json``) to a file: a restarted
runtime continues it, and it is flushed per line or group, so ``tail -f`` sees events as they
happen. Metrics go to ``metrics_path`` when given, else nowhere (the file holds events only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edge.sinks import SinkError
from lungwatch.events import Event, metrics_payload


class JsonlSink:
    def __init__(
        self,
        path: str | Path,
        metrics_path: str | Path | None = None,
        site: str = "site",
        device_id: str = "device",
    ) -> None:
        self.path = Path(path)
        self.metrics_path = None if metrics_path is None else Path(metrics_path)
        self._site, self._device_id = site, device_id
        self._file = _open_append(self.path)
        self._metrics_file = None if self.metrics_path is None else _open_append(self.metrics_path)
        self._closed = False

    def publish(self, event: Event) -> None:
        self._write(self._file, event.to_json())

    def publish_many(self, events: Sequence[Event]) -> None:
        if events:
            self._write(self._file, "\n".join(event.to_json() for event in events))

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        if self._metrics_file is not None:
            payload = metrics_payload(self._site, self._device_id, stream_id, metrics)
            self._write(self._metrics_file, payload)

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self._metrics_file is not None:
            self._metrics_file.close()

    def _write(self, handle: IO[str], line: str) -> None:
        if self._closed:
            raise SinkError(f"JSONL sink {self.path} is closed")
        try:
            handle.write(line + "\n")
            handle.flush()
        except OSError as exc:
            raise SinkError(f"cannot write {handle.name}: {exc.strerror or exc}") from None


def _open_append(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")  # closed by JsonlSink.close
    except OSError as exc:
        raise SinkError(f"cannot open {path} for appending: {exc.strerror or exc}") from None
