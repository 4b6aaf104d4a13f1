"""A real capture through PortAudio from a virtual ALSA device.

The device is an ALSA ``file`` PCM whose capture side reads a raw S16_LE recording
(``infile``) over a ``null`` slave, declared in a temporary config appended to the system's
``alsa.conf`` through ``ALSA_CONFIG_PATH``. PortAudio lists it like any input. The ``null``
slave is not paced, so capture runs as fast as it is read; after the recording the device goes
on delivering samples (the file again), which the tests cut off. The capture starts exactly at
the recording's first sample (the test searches for the lag instead of assuming it), so the
pipeline's windows, the model's outputs and the detector's events equal those of
:class:`~edge.sources.FileSource` on the same audio.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.bed.detector import DetectorConfig, FrameDetector, FrameGrid, Transition
from edge.bed.pipeline import StreamPipeline, WindowReady
from edge.bed.rules import ClassThreshold
from edge.features import FeatureSpec
from edge.inference import BackendConfig, open_backend
from edge.inference.manifest import load_manifest
from edge.inference.streaming import BedState, infer_beds
from edge.sources import FileSource, SourceChunk, SourceEnded, SourceError
from lungwatch.labels import DETECTED_CLASSES
from tests.streaming_fixture import tiny_streaming_folder

pyaudio = pytest.importorskip("pyaudio", reason="pyaudio is not installed (lungwatch[mic])")
from edge.sources.mic import MicSource  # noqa: E402

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
DEVICE = "lungwatch_capture"
RATE_HZ = 8000
SPEC = FeatureSpec(n_bands=24)
WINDOW_FRAMES, HOP_FRAMES = 100, 25
ALIGN_PROBE = 256  # samples of the recording searched for in the capture
ALIGN_SEARCH = 4096  # within this many captured samples


def recording(seconds: float, rate_hz: int) -> np.ndarray:
    """int16 noise with louder tonal bursts (the tiny model's 'events')."""
    rng = np.random.default_rng(11)
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    loud = (t % 2.0 > 1.0).astype(np.float64)
    x = 0.01 * rng.standard_normal(t.shape[0]) + 0.3 * loud * np.sin(2 * np.pi * 350 * t)
    return np.round(x * 32767).astype(np.int16)


@pytest.fixture
def virtual_mic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[np.ndarray], None]:
    """Installs the virtual device playing the given int16 samples."""
    if not SYSTEM_ALSA_CONF.is_file():
        pytest.skip(f"{SYSTEM_ALSA_CONF} missing: alsa-lib's configuration is not installed")

    def install(samples: np.ndarray) -> None:
        raw = tmp_path / "capture.raw"
        samples.astype("<i2").tofile(raw)
        conf = tmp_path / "asoundrc"
        conf.write_text(
            "pcm.lungwatch_null { type null }\n"
            f'pcm.{DEVICE} {{\n  type file\n  slave.pcm "lungwatch_null"\n'
            f'  file "/dev/null"\n  infile "{raw}"\n  format "raw"\n}}\n'
        )
        monkeypatch.setenv("ALSA_CONFIG_PATH", f"{SYSTEM_ALSA_CONF}:{conf}")
        monkeypatch.setenv("JACK_NO_START_SERVER", "1")  # PortAudio also probes JACK

    return install


def capture(source: MicSource, n_samples: int) -> list[SourceChunk]:
    chunks, total = [], 0
    while total < n_samples:
        chunk = source.read(timeout_s=2.0)
        if chunk is None:
            pytest.fail("the virtual device delivered nothing for 2 s")
        chunks.append(chunk)
        total += chunk.samples.shape[0]
    return chunks


def aligned(chunks: list[SourceChunk], expected: np.ndarray) -> np.ndarray:
    """The captured samples from where the recording starts (the lag is found, not assumed)."""
    captured = np.concatenate([c.samples for c in chunks])
    probe = expected[:ALIGN_PROBE]
    lags = [
        lag
        for lag in range(ALIGN_SEARCH)
        if np.allclose(captured[lag : lag + ALIGN_PROBE], probe, atol=1e-3)
    ]
    assert lags, "the recording was not found at the start of the capture"
    assert lags[0] == 0, f"capture starts {lags[0]} samples late"
    return captured


def windows_of(samples: np.ndarray, chunk: int) -> list[WindowReady]:
    pipeline = StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES)
    return [
        w
        for i in range(0, samples.shape[0], chunk)
        for w in pipeline.push(SourceChunk(samples[i : i + chunk], i))
    ]


def file_samples(source: FileSource) -> np.ndarray:
    parts = []
    while True:
        try:
            chunk = source.read(0.0)
        except SourceEnded:
            return np.concatenate(parts)
        if chunk is not None:
            parts.append(chunk.samples)


def outputs(samples: np.ndarray, folder: Path) -> np.ndarray:
    """The tiny streaming model's output frames over ``samples`` (800-sample chunks), (n, O)."""
    manifest = load_manifest(folder / "manifest.json")
    frames = manifest.streaming.input_frames
    pipeline = StreamPipeline(manifest.feature_spec, manifest.kinds, frames, frames)
    backend = open_backend(BackendConfig(), folder / "model.onnx")
    bed = BedState(manifest.streaming)
    probs = [
        infer_beds(backend, [(bed, w.features)])[0].probs
        for i in range(0, samples.shape[0], 800)
        for w in pipeline.push(SourceChunk(samples[i : i + 800], i))
    ]
    return np.concatenate(probs)


def detections(probs: np.ndarray, folder: Path, on: dict[str, float]) -> list[Transition]:
    """The events of ``probs`` with every class's on-threshold at ``on[class]``."""
    manifest = load_manifest(folder / "manifest.json")
    spec = manifest.feature_spec
    grid = FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples,
                        manifest.streaming.stride)  # fmt: skip
    rules = tuple(ClassThreshold(c, v, v * 0.9) for c, v in on.items())
    detector = FrameDetector(manifest.outputs, DetectorConfig(thresholds=rules), grid)
    return detector.update(0, probs) + detector.finish()


def test_mic_capture_gives_the_file_sources_windows_and_events(
    tmp_path: Path, virtual_mic: Callable[[np.ndarray], None]
) -> None:
    pcm = recording(8.0, RATE_HZ)
    virtual_mic(pcm)
    sf.write(tmp_path / "rec.wav", pcm, RATE_HZ, subtype="PCM_16")
    from_file = file_samples(FileSource(tmp_path / "rec.wav", "bed", RATE_HZ, chunk_samples=800))
    source = MicSource(DEVICE, "bed", RATE_HZ, chunk_samples=800)
    try:
        assert (source.device_name, source.device_rate_hz) == (DEVICE, RATE_HZ)
        chunks = capture(source, pcm.shape[0])
    finally:
        source.close()
    assert [c.first_sample for c in chunks] == [800 * i for i in range(len(chunks))]
    captured = aligned(chunks, from_file)[: pcm.shape[0]]
    np.testing.assert_array_equal(captured, from_file)  # 16-bit in, the same floats out
    file_windows, mic_windows = windows_of(from_file, 800), windows_of(captured, 800)
    assert len(mic_windows) == len(file_windows) > 20
    for a, b in zip(mic_windows, file_windows, strict=True):
        np.testing.assert_allclose(a.features, b.features, atol=1e-6, rtol=0)
    folder = tiny_streaming_folder(tmp_path / "model")
    file_probs, mic_probs = outputs(from_file, folder), outputs(captured, folder)
    np.testing.assert_allclose(mic_probs, file_probs, atol=1e-5, rtol=0)
    names = load_manifest(folder / "manifest.json").outputs
    on = {c: float(np.median(file_probs[:, names.index(c)])) for c in DETECTED_CLASSES}
    expected = detections(file_probs, folder, on)
    assert len([t for t in expected if t.state == "onset"]) >= 3
    assert detections(mic_probs, folder, on) == expected


def test_device_rate_other_than_the_models_is_resampled_in_stream(
    tmp_path: Path, virtual_mic: Callable[[np.ndarray], None]
) -> None:
    pcm = recording(4.0, 16000)
    virtual_mic(pcm)
    sf.write(tmp_path / "rec16k.wav", pcm, 16000, subtype="PCM_16")
    from_file = file_samples(FileSource(tmp_path / "rec16k.wav", "bed", RATE_HZ))
    source = MicSource(DEVICE, "bed", RATE_HZ, chunk_samples=800, device_rate_hz=16000)
    try:
        assert source.device_rate_hz == 16000
        captured = aligned(capture(source, from_file.shape[0]), from_file)
    finally:
        source.close()
    # The last outputs also see what the device gives after the recording (resample_poly
    # sees zeros there): equal up to the filter's reach from the end.
    n = from_file.shape[0]
    reach = -(-source.resampler_half_len // 2) + 1
    np.testing.assert_allclose(captured[: n - reach], from_file[: n - reach], atol=2e-6, rtol=0)
    mic_windows = windows_of(captured[:n], 1000)
    file_windows = [w for w in windows_of(from_file, 1000) if w.end_sample <= n - reach]
    assert len(file_windows) > 5
    for a, b in zip(mic_windows, file_windows, strict=False):
        np.testing.assert_allclose(a.features, b.features, atol=1e-4, rtol=0)


def test_device_by_index_and_by_part_of_its_name(virtual_mic: Callable[[np.ndarray], None]) -> None:
    virtual_mic(recording(0.5, RATE_HZ))
    by_name = MicSource("LUNGWATCH_CAPT", "bed", RATE_HZ)  # case-insensitive substring
    index = None
    try:
        assert by_name.device_name == DEVICE
        from edge.sources.mic import input_devices

        index = next(i for i, name, _ in input_devices(by_name._pa) if name == DEVICE)
    finally:
        by_name.close()
    by_index = MicSource(index, "bed", RATE_HZ)
    by_index.close()
    assert by_index.device_name == DEVICE
    with pytest.raises(
        SourceError, match=rf"no input device matches 'no-such-mic'; inputs: .*{DEVICE}"
    ):
        MicSource("no-such-mic", "bed", RATE_HZ)


def test_overflow_becomes_a_notice_and_a_missing_chunk(
    virtual_mic: Callable[[np.ndarray], None],
) -> None:
    virtual_mic(recording(1.0, RATE_HZ))
    source = MicSource(DEVICE, "bed", RATE_HZ, chunk_samples=400)
    real = source._stream

    class Overflowing:  # PortAudio reports an input overflow on the next read
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def read(self, n: int, exception_on_overflow: bool = True) -> bytes:
            raise OSError(pyaudio.paInputOverflowed, "Input overflowed")

    try:
        first = source.read(1.0)
        source._stream = Overflowing()
        lost = source.read(1.0)
        source._stream = real
        after = source.read(1.0)
    finally:
        source.close()
    assert first is not None
    assert lost is not None
    assert after is not None
    assert lost.missing
    assert lost.samples.shape == (400,)
    assert lost.first_sample == 400
    assert [n.kind for n in lost.notices] == ["overflow"]
    assert after.first_sample == 800


def test_a_block_read_late_is_stamped_with_its_capture_time(
    virtual_mic: Callable[[np.ndarray], None],
) -> None:
    """A block's ``captured_s`` is the read's time less the audio buffered behind it: with
    0.25 s more than the block waiting in PortAudio's buffer, the block read was captured
    0.25 s before the read."""
    virtual_mic(recording(1.0, RATE_HZ))
    source = MicSource(DEVICE, "bed", RATE_HZ, chunk_samples=400, clock=lambda: 50.0)
    real = source._stream

    class Buffered:  # PortAudio says the block and 2,000 more samples are waiting
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def get_read_available(self) -> int:
            return 400 + 2000

    try:
        source._stream = Buffered()
        late = source.read(1.0)
        source._stream = real
    finally:
        source.close()
    assert late is not None
    assert late.samples.shape == (400,)
    assert late.captured_s == pytest.approx(50.0 - 2000 / RATE_HZ)


def test_disconnect_then_reconnect(virtual_mic: Callable[[np.ndarray], None]) -> None:
    virtual_mic(recording(1.0, RATE_HZ))
    source = MicSource(DEVICE, "bed", RATE_HZ, chunk_samples=400, reopen_interval_s=0.05)
    try:
        assert source.read(1.0) is not None
        source._stream.stop_stream()  # as if the device went away
        down = source.read(1.0)
        assert down is not None
        assert [n.kind for n in down.notices] == ["disconnected"]
        up = None
        for _ in range(50):
            up = source.read(0.1)
            if up is not None:
                break
        assert up is not None
        (notice,) = up.notices
        assert notice.kind == "reconnected"
        assert up.first_sample == 400 + notice.detail["missing_samples"]
        resumed = source.read(1.0)
        assert resumed is not None
        assert resumed.first_sample == up.first_sample
        assert resumed.samples.shape == (400,)
    finally:
        source.close()
