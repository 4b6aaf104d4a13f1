"""Front-end throughput in x real time: streaming classes, batch functions and references.

    make bench            # or: python -m bench.frontend [--seconds 60] [--repeats 5]

On one core at 8 kHz, 64 bands, chunks of 256 samples: each kind's streaming class and batch
function against a SciPy reference (stft + dense mel matrix + log) and librosa's
melspectrogram, measured in the same run; targets are ratios to them, never absolute times.
Writes bench/results/frontend.{md,json}.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.signal

from bench import median_seconds, target_records, write_results
from edge.features import FEATURE_KINDS, FeatureSpec, extract, make_stream
from edge.features.fft import FFT_BACKEND
from edge.features.logmel import mel_filterbank
from lungwatch.cli import ArgumentParser

CHUNK_SAMPLES = 256
TARGET_VS_SCIPY = 1.0  # streaming log-mel / scipy batch reference
TARGET_VS_LIBROSA = 2.0  # streaming log-mel / librosa
TARGET_XRT = 200.0  # gammatone and cwt streaming, x real time


def test_signal(seconds: float, rate: int) -> np.ndarray:
    """Breath-like noise with tones and clicks (content barely matters for these kernels)."""
    rng = np.random.default_rng(2022)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t) ** 2
    x = 0.05 * envelope * rng.standard_normal(n) + 0.05 * np.sin(2 * np.pi * 400 * t)
    x[rng.integers(0, n, n // 800)] += 0.5
    return x.astype(np.float32)


def streaming_runner(spec: FeatureSpec, x: np.ndarray) -> Callable[[], object]:
    stream = make_stream(spec)

    def run() -> int:
        stream.reset()
        frames = 0
        for start in range(0, x.size, CHUNK_SAMPLES):
            frames += stream.push(x[start : start + CHUNK_SAMPLES]).shape[0]
        return frames

    return run


def scipy_reference(spec: FeatureSpec, x: np.ndarray) -> Callable[[], object]:
    mel = np.array(mel_filterbank(spec))
    window = scipy.signal.get_window("hann", spec.frame_samples)

    def run() -> np.ndarray:
        _, _, Z = scipy.signal.stft(
            x,
            fs=spec.sample_rate_hz,
            window=window,
            nperseg=spec.frame_samples,
            noverlap=spec.frame_samples - spec.hop_samples,
            nfft=spec.n_fft,
            boundary=None,
            padded=False,
            detrend=False,
        )
        return np.log(mel @ (Z.real**2 + Z.imag**2) + spec.log_offset)

    return run


def librosa_reference(spec: FeatureSpec, x: np.ndarray) -> Callable[[], object] | None:
    try:
        import librosa
    except ImportError:
        return None

    def run() -> np.ndarray:
        S = librosa.feature.melspectrogram(
            y=x,
            sr=spec.sample_rate_hz,
            n_fft=spec.n_fft,
            hop_length=spec.hop_samples,
            win_length=spec.frame_samples,
            window="hann",
            center=False,
            power=2.0,
            n_mels=spec.n_bands,
            fmin=spec.fmin_hz,
            fmax=spec.fmax_hz,
            htk=True,
            norm=None,
        )
        return np.log(S + spec.log_offset)

    return run


def measure(seconds: float, repeats: int) -> dict[str, float]:
    spec = FeatureSpec()
    x = test_signal(seconds, spec.sample_rate_hz)
    runners: dict[str, Callable[[], object] | None] = {}
    for kind in FEATURE_KINDS:
        kind_spec = spec.replace(kind=kind)
        runners[f"{kind} streaming"] = streaming_runner(kind_spec, x)
        runners[f"{kind} batch"] = partial(extract, x, kind_spec)
    runners["scipy stft+mel reference"] = scipy_reference(spec, x)
    runners["librosa melspectrogram"] = librosa_reference(spec, x)
    return {
        name: seconds / median_seconds(run, repeats, warmups=1)  # JIT / cache load, plans
        for name, run in runners.items()
        if run is not None
    }


def verdicts(xrt: dict[str, float]) -> list[tuple[str, float, float, bool]]:
    references = (
        ("scipy reference", "scipy stft+mel reference", TARGET_VS_SCIPY),
        ("librosa", "librosa melspectrogram", TARGET_VS_LIBROSA),
    )
    rows = [
        (f"logmel streaming / {name}", xrt["logmel streaming"] / xrt[key], wanted)
        for name, key, wanted in references
        if key in xrt
    ]
    rows += [
        (f"{kind} streaming x real time", xrt[f"{kind} streaming"], TARGET_XRT)
        for kind in ("gammatone", "cwt")
    ]
    return [(name, value, wanted, value >= wanted) for name, value, wanted in rows]


def render(xrt: dict[str, float], checks: list[tuple[str, float, float, bool]], header: str) -> str:
    lines = [header, "", "| front end | x real time |", "|---|---:|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in xrt.items()]
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
    lines += [
        f"| {name} | {value:,.2f} | >= {wanted:g} | {'yes' if ok else 'NO'} |"
        for name, value, wanted, ok in checks
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="signal length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median is kept)")
    args = parser.parse_args(argv)
    xrt = measure(args.seconds, args.repeats)
    checks = verdicts(xrt)
    header = (
        f"Front-end throughput, 8 kHz, 64 bands, chunk {CHUNK_SAMPLES} samples, "
        f"{args.seconds:g} s signal, median of {args.repeats}; {platform.machine()}, "
        f"Python {platform.python_version()}, FFT {FFT_BACKEND}"
    )
    record = {"header": header, "x_real_time": xrt, "targets": target_records(checks)}
    write_results("frontend", record, render(xrt, checks, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
