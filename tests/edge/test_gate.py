"""Quality gate: each technical condition triggered by real audio through the pipeline, or by
source notices and the clock; suppression of physiological detection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy.signal import lfilter

from edge.bed.detector import DetectorConfig, FrameDetector, FrameGrid, Transition
from edge.bed.gate import GateConfig, QualityGate
from edge.bed.pipeline import StreamPipeline
from edge.features import FeatureSpec
from edge.sources.base import Notice, SourceChunk
from lungwatch.config import ConfigError, from_mapping

SPEC = FeatureSpec(n_bands=24)
RATE_HZ = SPEC.sample_rate_hz
WINDOW_FRAMES, HOP_FRAMES = 100, 25  # hops of 2000 samples; window k ends at 8176 + 2000 k
FIRST_END = (WINDOW_FRAMES - 1) * SPEC.hop_samples + SPEC.frame_samples


def breath(seconds: float, seed: int = 0) -> np.ndarray:
    """Low-pass noise at -40 dBFS: a quality score of ~1 (breath-like spectrum and level)."""
    w = np.random.default_rng(seed).standard_normal(int(seconds * RATE_HZ))
    x = lfilter([1.0], [1.0, -0.95], w)
    return (0.01 * x / x.std()).astype(np.float32)


def hop_end(sample: int) -> int:
    """End of the first hop that lies entirely at or after ``sample``."""
    k = max(0, -(-(sample + 2000 - FIRST_END) // 2000))
    return FIRST_END + 2000 * k


@dataclass
class Run:
    gate: QualityGate
    pipeline: StreamPipeline = field(
        default_factory=lambda: StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES)
    )
    transitions: list[Transition] = field(default_factory=list)
    suppressed: list[bool] = field(default_factory=list)

    def push(self, chunk: SourceChunk, now_s: float = 0.0, poor_prob: float | None = None) -> None:
        self.transitions += self.gate.observe(chunk, now_s)
        for window in self.pipeline.push(chunk):
            self.transitions += self.gate.update(window, poor_prob)
            self.suppressed.append(self.gate.suppressed)

    def audio(self, x: np.ndarray, chunk: int = 800) -> None:
        start = self.pipeline.samples_seen
        for i in range(0, x.shape[0], chunk):
            self.push(SourceChunk(x[i : i + chunk], start + i))

    def summary(self) -> list[tuple[str, str, int, int | None]]:
        return [(t.type, t.state, t.start_sample, t.end_sample) for t in self.transitions]


def run_audio(*segments: np.ndarray, config: GateConfig | None = None) -> Run:
    run = Run(QualityGate(config or GateConfig(), RATE_HZ))
    run.audio(np.concatenate(segments))
    run.transitions += run.gate.finish()
    return run


def test_good_audio_raises_nothing() -> None:
    run = run_audio(breath(4.0))
    assert run.transitions == []
    assert not any(run.suppressed)


def test_silence_is_one_event_over_the_silent_hops() -> None:
    run = run_audio(breath(2.0), np.zeros(2 * RATE_HZ, np.float32), breath(3.0, seed=1))
    start, end = hop_end(2 * RATE_HZ) - 2000, hop_end(4 * RATE_HZ) - 2000 - 2000
    assert run.summary() == [("silence", "onset", start, None), ("silence", "ended", start, end)]
    assert run.transitions[0].kind == "technical"
    assert "dBFS" in run.transitions[0].reason
    assert any(run.suppressed)
    assert not run.suppressed[-1]


def test_clipping_sine_raises_clipping_not_poor_signal() -> None:
    t = np.arange(2 * RATE_HZ) / RATE_HZ
    clipped = np.clip(1.5 * np.sin(2 * np.pi * 300 * t), -1.0, 1.0).astype(np.float32)
    run = run_audio(breath(2.0), clipped, breath(3.0, seed=1))
    assert {t.type for t in run.transitions} == {"clipping"}
    assert [t.state for t in run.transitions] == ["onset", "ended"]
    assert "clipped" in run.transitions[0].reason


def test_white_noise_is_poor_signal() -> None:
    noise = (0.1 * np.random.default_rng(3).standard_normal(3 * RATE_HZ)).astype(np.float32)
    run = run_audio(breath(2.0), noise, breath(2.0, seed=1))
    assert [(t.type, t.state) for t in run.transitions] == [
        ("poor_signal", "onset"),
        ("poor_signal", "ended"),
    ]
    assert "broadband" in run.transitions[0].reason
    assert run.transitions[0].confidence > 0.9


def test_nan_samples_are_reported_at_once() -> None:
    x = breath(4.0)
    x[20000:20010] = np.nan
    run = run_audio(x)
    assert run.pipeline.invalid_samples == 10
    (onset, ended) = run.transitions
    assert (onset.type, onset.state, onset.start_sample) == (
        "invalid_samples",
        "onset",
        hop_end(20010) - 4000,
    )
    assert onset.priority == "medium"
    assert "10 NaN/Inf" in onset.reason
    assert ended.end_sample == onset.start_sample + 2000


def test_gap_in_the_timeline_is_a_signal_gap() -> None:
    run = Run(QualityGate(GateConfig(), RATE_HZ))
    x = breath(5.0)
    run.audio(x[:16000])
    run.push(SourceChunk(x[16500:], 16500))  # 500 samples lost on the way
    run.transitions += run.gate.finish()
    assert [(t.type, t.state) for t in run.transitions] == [
        ("signal_gap", "onset"),
        ("signal_gap", "ended"),
    ]
    assert run.transitions[0].start_sample <= 16000 < 16500 <= run.transitions[1].end_sample


def test_off_body_notice() -> None:
    run = Run(QualityGate(GateConfig(), RATE_HZ))
    x = breath(6.0)
    for i in range(0, x.shape[0], 800):
        notices = ()
        if i in (16000, 32000):
            notices = (Notice("device_status", i, {"off_body": i == 16000, "battery": 0.8}),)
        run.push(SourceChunk(x[i : i + 800], i, notices=notices))
    summary = run.summary()
    assert [(s[0], s[1]) for s in summary] == [("off_body", "onset"), ("off_body", "ended")]
    assert summary[0][2] <= 16000
    assert 32000 <= summary[1][3] <= 32000 + 2000


def test_stall_by_clock_and_by_disconnect_notices() -> None:
    gate = QualityGate(GateConfig(stall_timeout_s=2.0), RATE_HZ)
    assert gate.observe(SourceChunk(breath(0.5), 0), now_s=10.0) == []
    assert gate.tick(11.9) == []
    (onset,) = gate.tick(12.1)
    assert (onset.type, onset.state, onset.start_sample, onset.priority) == (
        "source_stalled",
        "onset",
        4000,
        "medium",
    )
    assert gate.suppressed
    assert gate.tick(13.0) == []
    (ended,) = gate.observe(SourceChunk(breath(0.1), 9000), now_s=13.1)
    assert (ended.state, ended.start_sample, ended.end_sample) == ("ended", 4000, 9000)
    # A disconnect notice stalls at once; audio alone does not end it, reconnected does.
    (down,) = gate.observe(
        SourceChunk(np.zeros(0, np.float32), 9800, notices=(Notice("disconnected", 9800),)), 14.0
    )
    assert (down.state, down.start_sample) == ("onset", 9800)
    assert "disconnected" in down.reason
    (up,) = gate.observe(
        SourceChunk(np.zeros(0, np.float32), 12000, notices=(Notice("reconnected", 12000),)), 15.0
    )
    assert (up.state, up.end_sample) == ("ended", 12000)


def test_model_poor_quality_probability_raises_poor_signal_with_hysteresis() -> None:
    run = Run(QualityGate(GateConfig(poor_signal_min_ms=0.0), RATE_HZ))
    x = breath(6.0)
    probs = {}
    for i in range(0, x.shape[0], 2000):
        p = 0.9 if 12000 <= i < 24000 else (0.5 if i < 30000 else 0.1)
        probs[i] = p
        run.push(SourceChunk(x[i : i + 2000], i), poor_prob=p)
    states = [(t.type, t.state) for t in run.transitions]
    assert states == [("poor_signal", "onset"), ("poor_signal", "ended")]  # 0.5 holds it on
    assert "model Poor Quality" in run.transitions[0].reason
    # A window gets the probability of the chunk that completed it: the 0.5 chunks (24000 to
    # 28000, completing the windows that end at 24176..28176) hold the condition on.
    assert run.transitions[1].end_sample == 28176


def test_poor_signal_must_last_its_own_minimum_and_clipping_the_shorter_one() -> None:
    """The model's Poor Quality output on for 0.75 s raises nothing under the default 1-s
    ``poor_signal_min_ms`` (it suppresses detection at once), on for 1.5 s raises poor_signal
    from where it began; clipping keeps the 0.5-s ``min_condition_ms``."""
    config = GateConfig()
    assert (config.poor_signal_min_ms, config.min_condition_ms) == (1000.0, 500.0)

    def model_poor(start: int, stop: int) -> Run:
        run = Run(QualityGate(config, RATE_HZ))
        x = breath(8.0)
        for i in range(0, x.shape[0], 2000):
            p = 0.9 if start <= i < stop else 0.1
            run.push(SourceChunk(x[i : i + 2000], i), poor_prob=p)
        run.transitions += run.gate.finish()
        return run

    short = model_poor(20000, 26000)  # windows ending 20176..24176: 0.75 s of hops
    assert short.transitions == []
    assert any(short.suppressed)
    long = model_poor(20000, 32000)  # 1.5 s
    assert [(t.type, t.state) for t in long.transitions] == [
        ("poor_signal", "onset"),
        ("poor_signal", "ended"),
    ]
    assert long.transitions[0].start_sample == 20176 - 2000

    t = np.arange(int(0.75 * RATE_HZ)) / RATE_HZ
    clipped = np.clip(1.5 * np.sin(2 * np.pi * 300 * t), -1.0, 1.0).astype(np.float32)
    run = run_audio(breath(2.0), clipped, breath(3.0, seed=1))
    assert [(t.type, t.state) for t in run.transitions] == [
        ("clipping", "onset"),
        ("clipping", "ended"),
    ]


def test_suppression_gates_the_detector() -> None:
    """While the gate says poor quality, a confident detection neither starts nor stays open."""
    pipeline = StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES)
    gate = QualityGate(GateConfig(), RATE_HZ)
    hop = pipeline.hop_samples  # one output frame per window, centred on it
    grid = FrameGrid(RATE_HZ, hop, pipeline.window_samples // 2 - hop // 2)
    det = FrameDetector(("Wheeze",), DetectorConfig(min_event_ms=0, merge_gap_ms=0), grid)
    x = np.concatenate([breath(3.0), np.zeros(3 * RATE_HZ, np.float32), breath(3.0, seed=2)])
    physiological: list[Transition] = []
    for i in range(0, x.shape[0], 1000):
        for window in pipeline.push(SourceChunk(x[i : i + 1000], i)):
            gate.update(window)
            physiological += det.suppress(gate.suppressed)
            k = window.start_frame // HOP_FRAMES
            physiological += det.update(k, np.array([[0.95]], np.float32))
    assert [t.state for t in physiological] == ["onset", "ended", "onset"]
    silence_start = hop_end(3 * RATE_HZ) - 2000
    assert physiological[1].end_sample <= silence_start + 2000
    assert physiological[2].start_sample >= 6 * RATE_HZ - pipeline.window_samples // 2 - 1000


@dataclass(frozen=True)
class Runtime:
    gate: GateConfig = field(default_factory=GateConfig)


def test_gate_config_errors_name_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"run.yaml: gate.poor_score_limit must be a number in \(0, 1\), got 2"
    ):
        from_mapping(Runtime, {"gate": {"poor_score_limit": 2}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"gate\.poor_quality_off_threshold must be in"):
        from_mapping(
            Runtime, {"gate": {"poor_quality_on_threshold": 0.5, "poor_quality_off_threshold": 0.6}}
        )
    with pytest.raises(ConfigError, match=r"gate\.priorities must be types among"):
        from_mapping(Runtime, {"gate": {"priorities": [{"type": "Wheeze", "priority": "high"}]}})
    assert from_mapping(Runtime, {"gate": {"stall_timeout_s": 5}}).gate.stall_timeout_s == 5.0


def lost_chunk(start: int, n: int) -> SourceChunk:
    """Silence standing in for ``n`` lost samples, with its notice, as the bridge source sends."""
    notice = Notice("signal_gap", start, {"missing_samples": n, "filled": True})
    return SourceChunk(np.zeros(n, np.float32), start, missing=True, notices=(notice,))


def test_a_gap_before_the_first_windows_last_hop_is_a_signal_gap_containing_it() -> None:
    run = Run(QualityGate(GateConfig(), RATE_HZ))
    x = breath(4.0)
    run.audio(x[:1000])
    run.push(lost_chunk(1000, 500))
    run.push(SourceChunk(x[1500:], 1500))
    run.transitions += run.gate.finish()
    assert [(t.type, t.state) for t in run.transitions] == [
        ("signal_gap", "onset"),
        ("signal_gap", "ended"),
    ]
    assert run.transitions[0].start_sample <= 1000 < 1500 <= run.transitions[1].end_sample
    assert run.transitions[1].end_sample <= FIRST_END  # only the first window's span


def test_conditions_in_the_first_window_are_judged_from_the_stream_start() -> None:
    x = breath(4.0)
    x[100:110] = np.nan
    run = run_audio(np.zeros(2 * RATE_HZ, np.float32), breath(3.0, seed=1))
    nan_run = run_audio(x)
    assert run.summary() == [("silence", "onset", 0, None), ("silence", "ended", 0, 14176)]
    assert [(t.type, t.state, t.start_sample) for t in nan_run.transitions] == [
        ("invalid_samples", "onset", 0),
        ("invalid_samples", "ended", 0),
    ]
    assert nan_run.transitions[1].end_sample == FIRST_END


def test_a_gap_after_the_last_window_is_reported_at_finish() -> None:
    run = Run(QualityGate(GateConfig(), RATE_HZ))
    x = breath(6.0)
    run.audio(x[:40200])  # the last window ends at 40176
    run.push(lost_chunk(40200, 700))
    run.push(SourceChunk(x[40900:41500], 40900))
    assert run.transitions == []
    run.transitions += run.gate.finish()
    assert run.summary() == [
        ("signal_gap", "onset", 40200, None),
        ("signal_gap", "ended", 40200, 40900),
    ]
    assert "signal_gap" in run.transitions[0].reason
