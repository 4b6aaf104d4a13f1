"""``lungwatch detect FILE...``: events detected in whole recordings, as JSON lines.

Slides the model's window over each recording (a quarter window hop), takes each
adventitious class's probability at every window, and turns those score curves into events
with hysteresis (``--on`` / ``--off`` thresholds) and a minimum duration. Each event is one
line: ``{"file", "start_s", "end_s", "type", "confidence"}`` (confidence: the peak score).

``--plot out.png`` draws the log-mel spectrogram, the class scores and the detected events
against the annotated ones (a SPRSound ``.json`` beside the audio), one panel per file
(``out.png`` for one file, ``out-<stem>.png`` for several).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.detector import hysteresis
from edge.labels import EVENT_LABELS, NORMAL
from firmware_bridge.cliparse import ArgumentParser
from training.inference import WindowClassifier, load_classifier

ON_THRESHOLD = 0.6
OFF_THRESHOLD = 0.4
MIN_EVENT_S = 0.25


@dataclass(frozen=True)
class Detection:
    start_s: float
    end_s: float
    type: str
    confidence: float


@dataclass(frozen=True)
class ScoreTrack:
    """Per-window class probabilities of one recording."""

    times_s: np.ndarray  # (n_windows,) window centres
    half_window_s: float
    classes: tuple[str, ...]
    probs: np.ndarray  # (n_windows, n_classes)


def score_track(classifier: WindowClassifier, path: Path) -> ScoreTrack:
    store = classifier.store()
    spec, frames = classifier.spec, classifier.window_frames
    hop = max(1, frames // 4)
    starts = list(range(0, max(store.n_frames(path) - frames, 0) + hop, hop))
    x = np.stack([store.window(path, s, frames) for s in starts])
    probs = np.concatenate([classifier.probabilities(x[i : i + 64]) for i in range(0, len(x), 64)])
    centre_frames = np.array(starts) + frames / 2
    times = (centre_frames * spec.hop_samples + spec.frame_samples / 2) / spec.sample_rate_hz
    return ScoreTrack(
        times, frames * spec.hop_samples / spec.sample_rate_hz / 2, classifier.classes, probs
    )


def detect_events(
    track: ScoreTrack,
    on: float = ON_THRESHOLD,
    off: float = OFF_THRESHOLD,
    min_event_s: float = MIN_EVENT_S,
) -> list[Detection]:
    """Events of every adventitious class (not Normal, not Poor Quality), by start time.

    The on/off switching is the device's (:func:`edge.detector.hysteresis`); times here are
    the window centres widened by a quarter window, the workstation's convention."""
    events = []
    for c, name in enumerate(track.classes):
        if name == NORMAL or name not in EVENT_LABELS:
            continue
        for first, last in hysteresis(track.probs[:, c], on, off):
            start = max(0.0, float(track.times_s[first]) - track.half_window_s / 2)
            end = float(track.times_s[last]) + track.half_window_s / 2
            if end - start >= min_event_s:
                peak = float(track.probs[first : last + 1, c].max())
                events.append(Detection(round(start, 3), round(end, 3), name, round(peak, 4)))
    return sorted(events, key=lambda e: (e.start_s, e.type))


def annotated_events(path: Path) -> list[tuple[float, float, str]]:
    """The SPRSound events beside ``path`` (``<stem>.json``), or none."""
    annotation = path.with_suffix(".json")
    if not annotation.is_file():
        return []
    from training.datasets.sprsound import read_annotation

    _, events = read_annotation(annotation)
    return [(e.start_ms / 1000, e.end_ms / 1000, e.type) for e in events if e.type != NORMAL]


def plot(
    path: Path, out: Path, classifier: WindowClassifier, track: ScoreTrack, events: list[Detection]
) -> Path:
    """Spectrogram, scores and detected vs annotated events, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = classifier.store().features(path)[0]
    spec = classifier.spec
    duration = features.shape[1] * spec.hop_samples / spec.sample_rate_hz
    fig, axes = plt.subplots(
        3, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    axes[0].imshow(
        features, origin="lower", aspect="auto", extent=(0, duration, 0, features.shape[0])
    )
    axes[0].set_ylabel(f"{spec.kind if len(classifier.kinds) == 1 else classifier.kinds[0]} band")
    for c, name in enumerate(track.classes):
        if name != NORMAL:
            axes[1].plot(track.times_s, track.probs[:, c], label=name)
    axes[1].axhline(ON_THRESHOLD, color="k", lw=0.5, ls="--")
    axes[1].set_ylabel("probability")
    axes[1].legend(fontsize=7, ncol=4, loc="upper right")
    _event_rows(axes[2], events, annotated_events(path))
    axes[2].set_xlabel("time (s)")
    fig.suptitle(path.name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _event_rows(
    ax: Any, detected: list[Detection], annotated: list[tuple[float, float, str]]
) -> None:
    colours = {name: f"C{i}" for i, name in enumerate(EVENT_LABELS)}
    for row, spans in ((1, [(d.start_s, d.end_s, d.type) for d in detected]), (0, annotated)):
        for start, end, kind in spans:
            ax.broken_barh(
                [(start, end - start)],
                (row + 0.1, 0.8),
                color=colours.get(kind, "grey"),
            )
    ax.set_yticks([0.5, 1.5], ["annotated", "detected"])


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch detect", description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", type=Path, help="WAV or FLAC recordings")
    parser.add_argument("--model", type=Path, default=Path("models/edge/model.pt"))
    parser.add_argument("--on", type=float, default=ON_THRESHOLD, help="onset threshold")
    parser.add_argument("--off", type=float, default=OFF_THRESHOLD, help="offset threshold")
    parser.add_argument("--min-event-s", type=float, default=MIN_EVENT_S)
    parser.add_argument("--plot", type=Path, help="PNG of spectrogram, scores and events")
    args = parser.parse_args(argv)
    if not 0.0 < args.off <= args.on < 1.0:
        parser.error(f"need 0 < --off <= --on < 1, got --on {args.on} --off {args.off}")
    classifier = load_classifier(args.model)
    for path in args.audio:
        track = score_track(classifier, path)
        events = detect_events(track, args.on, args.off, args.min_event_s)
        for event in events:
            print(json.dumps({"file": str(path), **event.__dict__}))
        if args.plot:
            out = (
                args.plot
                if len(args.audio) == 1
                else args.plot.with_name(f"{args.plot.stem}-{path.stem}{args.plot.suffix}")
            )
            plot(path, out, classifier, track, events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
