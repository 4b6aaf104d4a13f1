"""File source (chunking, end, loop, real-time pacing), open_source, the streaming resampler."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from edge.audio import read_audio
from edge.sources import FileSource, SourceEnded, SourceError, open_source
from edge.sources.mic import StreamingResampler, import_pyaudio

RATE_HZ = 8000


def wav(path: Path, seconds: float, rate_hz: int = RATE_HZ) -> Path:
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal(int(seconds * rate_hz))
    sf.write(path, np.clip(x, -1, 1), rate_hz, subtype="PCM_16")
    return path


def drain(source: FileSource) -> list:
    chunks = []
    while True:
        try:
            chunk = source.read(timeout_s=1.0)
        except SourceEnded:
            return chunks
        if chunk is not None:
            chunks.append(chunk)


def test_file_source_delivers_the_resampled_file_then_ends(tmp_path: Path) -> None:
    path = wav(tmp_path / "a.wav", 1.0, rate_hz=16000)
    source = FileSource(path, "bed-1", RATE_HZ, chunk_samples=300)
    chunks = drain(source)
    expected = read_audio(path, target_rate_hz=RATE_HZ).samples
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), expected)
    assert [c.first_sample for c in chunks] == list(range(0, expected.shape[0], 300))
    assert all(c.samples.dtype == np.float32 and not c.missing for c in chunks)
    with pytest.raises(SourceEnded, match=r"a\.wav: end of file after 8000 samples"):
        source.read(0.0)


def test_file_source_loops_on_one_timeline(tmp_path: Path) -> None:
    source = FileSource(
        wav(tmp_path / "a.wav", 0.1), "bed-1", RATE_HZ, chunk_samples=500, loop=True
    )
    chunks = [source.read(0.0) for _ in range(5)]
    assert [c.first_sample for c in chunks if c is not None] == [0, 500, 800, 1300, 1600]
    np.testing.assert_array_equal(chunks[2].samples, chunks[0].samples)  # type: ignore[union-attr]


def test_file_source_in_real_time_is_paced(tmp_path: Path) -> None:
    source = FileSource(
        wav(tmp_path / "a.wav", 0.5), "bed-1", RATE_HZ, chunk_samples=400, realtime=True
    )
    started = time.monotonic()
    chunks = drain(source)
    elapsed_s = time.monotonic() - started
    assert sum(c.samples.shape[0] for c in chunks) == 4000
    assert elapsed_s >= 0.5 * 0.9


def test_real_time_read_returns_none_before_the_chunk_is_due(tmp_path: Path) -> None:
    source = FileSource(
        wav(tmp_path / "a.wav", 0.5), "bed-1", RATE_HZ, chunk_samples=4000, realtime=True
    )
    assert source.read(timeout_s=0.0) is None  # the whole 0.5 s chunk is not captured yet
    assert source.read(timeout_s=1.0) is not None


def test_a_non_blocking_read_of_a_chunk_not_due_does_not_sleep(tmp_path: Path) -> None:
    """The runtime polls every bed with ``read(0.0)``: a chunk not yet due returns None at
    once (no ``sleep(0)``, which gives up the GIL on every poll); a longer timeout still
    waits, for the chunk or for the timeout."""
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    source = FileSource(
        wav(tmp_path / "a.wav", 0.5), "bed-1", RATE_HZ, chunk_samples=800, realtime=True,
        clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    assert source.read(0.0) is None
    assert source.read(0.0) is None
    assert slept == []
    assert source.read(0.05) is None  # 0.1 s chunk: not due within 0.05 s
    assert slept == [0.05]
    chunk = source.read(0.06)  # due 0.05 s from now
    assert chunk is not None
    assert chunk.first_sample == 0
    assert slept == [0.05, pytest.approx(0.05)]


def test_a_paced_chunk_carries_its_capture_time_and_a_fast_one_none(tmp_path: Path) -> None:
    """In real time a chunk's ``captured_s`` is when its last sample was due on the source's
    clock (the first read at t0, then t0 + end / rate), however late it is read; read as
    fast as possible, a file cannot tell, and says None."""
    now = [100.0]
    path = wav(tmp_path / "a.wav", 0.5)
    source = FileSource(path, "bed-1", RATE_HZ, chunk_samples=800, realtime=True,
                        clock=lambda: now[0], sleep=lambda s: None)  # fmt: skip
    assert source.read(0.0) is None  # starts the clock: t0 = 100.0
    now[0] = 100.35  # read late: three chunks are due
    captured = [source.read(0.0) for _ in range(4)]
    assert [c.captured_s for c in captured[:3]] == pytest.approx([100.1, 100.2, 100.3])
    assert captured[3] is None  # the fourth is due at 100.4
    fast = FileSource(path, "bed-1", RATE_HZ, chunk_samples=800)
    assert [c.captured_s for c in drain(fast)] == [None] * 5


def test_open_source_forms(tmp_path: Path) -> None:
    path = wav(tmp_path / "a.wav", 0.2)
    assert isinstance(open_source(str(path), "s", RATE_HZ), FileSource)
    source = open_source(f"file:{path}", "s", RATE_HZ, chunk_samples=100, realtime=False)
    assert isinstance(source, FileSource)
    assert source.chunk_samples == 100
    with pytest.raises(SourceError, match="no file path given"):
        open_source("file:", "s", RATE_HZ)
    with pytest.raises(SourceError, match=r"missing\.wav: cannot read audio: no such file"):
        open_source(str(tmp_path / "missing.wav"), "s", RATE_HZ)


def test_open_source_bridge_takes_the_bed_id_and_the_model_rate() -> None:
    source = open_source("bridge://udp/127.0.0.1:0?device=3", "bed-7", RATE_HZ)
    try:
        assert source.stream_id == "bed-7"
        assert source.sample_rate_hz == RATE_HZ  # rate= added from the model when not given
    finally:
        source.close()
    with pytest.raises(SourceError, match="the device stream is 16000 Hz"):
        open_source("bridge://udp/127.0.0.1:0?rate=16000", "bed-7", RATE_HZ)
    with pytest.raises(SourceError, match="options in the URL"):
        open_source("bridge://udp/127.0.0.1:0", "bed-7", RATE_HZ, chunk_samples=800)


def test_mic_without_pyaudio_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyaudio(name: str, *args: object, **kwargs: object) -> object:
        if name == "pyaudio":
            raise ImportError("No module named 'pyaudio'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_pyaudio)
    with pytest.raises(SourceError, match=r"pip install 'lungwatch\[mic\]'.*portaudio19-dev"):
        import_pyaudio()


@pytest.mark.parametrize(
    ("from_hz", "to_hz"), [(48000, 8000), (44100, 8000), (16000, 8000), (4000, 8000)]
)
def test_streaming_resampler_equals_resample_poly(from_hz: int, to_hz: int) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(from_hz // 2).astype(np.float32)
    resampler = StreamingResampler(from_hz, to_hz)
    parts, start = [], 0
    for size in rng.integers(0, 2000, 10_000):
        parts.append(resampler.push(x[start : start + size]).copy())
        start += size
        if start >= x.shape[0]:
            break
    streamed = np.concatenate(parts)
    divisor = np.gcd(from_hz, to_hz)
    whole = resample_poly(x.astype(np.float64), to_hz // divisor, from_hz // divisor)
    # Only the last outputs differ: they still wait for input the filter reaches.
    pending = -(-resampler.half_len // resampler.down) + 1
    assert whole.shape[0] - pending <= streamed.shape[0] <= whole.shape[0]
    np.testing.assert_allclose(streamed, whole[: streamed.shape[0]], atol=1e-5, rtol=0)
    resampler.reset()
    again = np.concatenate(
        [resampler.push(x[i : i + 4096]).copy() for i in range(0, x.shape[0], 4096)]
    )
    np.testing.assert_allclose(again, streamed, atol=1e-6, rtol=0)
