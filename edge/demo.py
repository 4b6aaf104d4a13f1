"""``lungwatch demo``: the front end on a real recording, streaming against batch.

Runs every configured front-end kind over one recording the way the device will (chunks
through the streaming class) and the way training does (the batch function), prints how
far apart they are and how fast each runs, and writes a picture of the three spectrograms
above the annotated events. Uses SPRSound from ``../shared/data`` when present, else a
synthetic recording with known events (the embedded default).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.audio import read_audio
from edge.config import check, load_config
from edge.datapaths import sprsound_root
from edge.features import FEATURE_KINDS, FeatureSpec, extract, make_stream
from edge.imaging import colourise, write_png

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
EVENT_COLOURS = {
    "Normal": (90, 90, 90),
    "Wheeze": (60, 140, 255),
    "Stridor": (170, 80, 255),
    "Rhonchi": (60, 200, 120),
    "Fine Crackle": (255, 160, 40),
    "Coarse Crackle": (240, 50, 50),
    "Wheeze+Crackle": (255, 60, 200),
}
BAND_SCALE = 2  # picture rows per band
STRIP_ROWS = 14  # picture rows of the event strip


@dataclass(frozen=True)
class DemoConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    kinds: tuple[str, ...] = FEATURE_KINDS
    chunk_samples: int = 256
    record: str = "intra_test/41161556_1.7_0_p2_3062"
    out_dir: str = "out/demo"

    def __post_init__(self) -> None:
        for kind in self.kinds:
            check(kind in FEATURE_KINDS, "kinds", kind, f"one of {FEATURE_KINDS}")
        check(self.chunk_samples >= 1, "chunk_samples", self.chunk_samples, "an integer >= 1")


@dataclass(frozen=True)
class Recording:
    name: str  # for people
    slug: str  # for file names
    samples: np.ndarray  # (n,) float32 at the spec's rate
    events: list[tuple[float, float, str]]  # (start_s, end_s, type)
    label: str


def load_recording(cfg: DemoConfig, audio: str | None) -> Recording:
    """The recording to show: --audio FILE, else the SPRSound record, else synthetic."""
    rate = cfg.features.sample_rate_hz
    if audio:
        return Recording(
            audio, Path(audio).stem, read_audio(audio, target_rate_hz=rate).samples, [], ""
        )
    wav = sprsound_root() / f"{cfg.record}.flac"
    if wav.exists():
        from training.datasets.sprsound import load_sprsound

        records = {r.record_id: r for r in load_sprsound(wav.parent)}
        rec = records[wav.stem]
        events = [(e.start_ms / 1000, e.end_ms / 1000, e.type) for e in rec.events]
        samples = read_audio(wav, target_rate_hz=rate).samples
        return Recording(f"SPRSound {cfg.record}", wav.stem, samples, events, rec.record_label)
    from training.datasets.synthetic import synthesize

    syn = synthesize(10.0, rate, seed=7, crackles=4, wheezes=3)
    return Recording(
        "synthetic (no ../shared/data found)", "synthetic", syn.samples, list(syn.events), ""
    )


def run_kind(spec: FeatureSpec, x: np.ndarray, chunk: int) -> tuple[np.ndarray, dict[str, float]]:
    """Batch and streaming features of ``x``; returns the batch frames and the numbers."""
    stream = make_stream(spec)
    stream.push(np.zeros(spec.frame_samples * 2))  # compile / load the kernel before timing
    stream.reset()
    extract(x[: spec.frame_samples * 4], spec)
    t0 = time.perf_counter()
    batch = extract(x, spec)
    t_batch = time.perf_counter() - t0
    parts = []
    t0 = time.perf_counter()
    for start in range(0, x.size, chunk):
        parts.append(stream.push(x[start : start + chunk]).copy())
    t_stream = time.perf_counter() - t0
    streamed = np.concatenate(parts)
    duration_s = x.size / spec.sample_rate_hz
    diff = float(np.abs(streamed - batch).max()) if batch.size else 0.0
    return batch, {
        "frames": batch.shape[0],
        "bands": batch.shape[1],
        "max_diff": diff,
        "stream_xrt": duration_s / t_stream,
        "batch_xrt": duration_s / t_batch,
    }


def picture(
    features: dict[str, np.ndarray], events: list[tuple[float, float, str]], hop_s: float
) -> np.ndarray:
    """Spectrograms stacked (low bands at the bottom) above an annotated-event strip."""
    width = max(f.shape[0] for f in features.values())
    blocks = []
    for frames in features.values():
        rgb = colourise(frames.T[::-1])
        rgb = np.repeat(rgb, BAND_SCALE, axis=0)
        pad = np.zeros((rgb.shape[0], width - rgb.shape[1], 3), np.uint8)
        blocks += [np.concatenate([rgb, pad], axis=1), np.full((3, width, 3), 255, np.uint8)]
    strip = np.full((STRIP_ROWS, width, 3), 20, np.uint8)
    for start_s, end_s, kind in events:
        lo, hi = int(start_s / hop_s), max(int(end_s / hop_s), int(start_s / hop_s) + 1)
        strip[:, lo:hi] = EVENT_COLOURS.get(kind, (255, 255, 255))
    return np.concatenate([*blocks, strip], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lungwatch demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo YAML file")
    parser.add_argument("--audio", help="a WAV/FLAC file to use instead of the default record")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. features.n_bands=32",
    )
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config, args.set)
    rec = load_recording(cfg, args.audio)
    rate = cfg.features.sample_rate_hz
    print(
        f"lungwatch demo: {rec.name}, {rec.samples.size / rate:.1f} s at {rate} Hz"
        + (f", record label {rec.label!r}" if rec.label else "")
    )
    for start_s, end_s, kind in sorted(rec.events):
        print(f"  annotated {start_s:6.2f}-{end_s:6.2f} s  {kind}")
    print(
        f"\n{'kind':<10} {'frames':>6} {'bands':>5} {'max|stream-batch|':>18} "
        f"{'stream xRT':>11} {'batch xRT':>10}   (chunks of {cfg.chunk_samples} samples)"
    )
    features = {}
    for kind in cfg.kinds:
        spec = cfg.features.replace(kind=kind)
        features[kind], n = run_kind(spec, rec.samples, cfg.chunk_samples)
        print(
            f"{kind:<10} {n['frames']:>6} {n['bands']:>5} {n['max_diff']:>18.2e} "
            f"{n['stream_xrt']:>11.0f} {n['batch_xrt']:>10.0f}"
        )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind, frames in features.items():
        np.save(out / f"{rec.slug}_{kind}.npy", frames)
    png = write_png(
        out / f"{rec.slug}.png", picture(features, rec.events, cfg.features.hop_ms / 1000)
    )
    print(f"\npicture ({' / '.join(cfg.kinds)} above annotated events): {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
