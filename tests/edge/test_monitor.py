"""The public streaming API (edge.monitor, ``from lungwatch import Monitor``) on the shipped
model and the three example recordings in the repository: the README's example, chunking,
many beds in one call, what the runtime gives, the quality state, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_audio
from edge.bed.detector import DetectorConfig
from edge.monitor import BedStep, Monitor, MonitorError
from edge.runtime.offline import detect_recordings
from lungwatch import Monitor as PublicMonitor
from lungwatch.errors import ConfigError
from tests.edge.runtime_helpers import (
    MODEL_DIR,
    REPO_ROOT,
    build,
    config_mapping,
    run_collecting,
    stream,
)

EXAMPLES = REPO_ROOT / "examples"
WHEEZES = EXAMPLES / "64913238_0.6_1_p3_2175.flac"
RECORDINGS = sorted(EXAMPLES.glob("*.flac"))


@pytest.fixture(scope="module")
def monitor():
    with Monitor.load(MODEL_DIR) as m:
        yield m


def audio_of(path: Path, monitor: Monitor) -> np.ndarray:
    return read_audio(path, target_rate_hz=monitor.sample_rate_hz).samples


def run_bed(monitor: Monitor, samples: np.ndarray, chunk: int) -> list[BedStep]:
    bed = monitor.open_bed()
    steps = [bed.push(samples[i : i + chunk]) for i in range(0, len(samples), chunk)]
    return [*steps, bed.close()]


def ended(steps: list[BedStep]) -> list[tuple[str, str, float, float | None]]:
    return [
        (e.kind, e.type, e.start_s, e.end_s) for s in steps for e in s.events if e.state == "ended"
    ]


def frames(steps: list[BedStep]) -> np.ndarray:
    return np.concatenate([s.probs for s in steps if len(s.probs)])


def test_the_public_name_is_the_device_api() -> None:
    assert PublicMonitor is Monitor


def test_the_readme_example_runs_and_prints_the_device_events() -> None:
    """The README's Python block, run as a user would, prints exactly the ended events that
    ``lungwatch detect`` computes for that recording."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-example[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert block is not None, "README.md lost its example block"
    assert len(block.group(1).strip().splitlines()) <= 12
    result = subprocess.run(
        [sys.executable, "-c", block.group(1)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = [line.split()[-1] for line in result.stdout.splitlines() if "-" in line]
    found = detect_recordings({"r": WHEEZES}, MODEL_DIR, "model.int8.onnx")["r"]
    expected = [*found.physiological, *found.technical, *found.findings]
    assert len(printed) == len(expected) >= 1
    first = found.physiological[0]
    assert f"{first['type']:<13} {first['start_s']:6.2f}-{first['end_s']:6.2f} s" in result.stdout


@pytest.mark.parametrize("chunk", [1, 800, 1237, 8000])
def test_any_chunking_gives_the_same_events_and_frames(monitor: Monitor, chunk: int) -> None:
    samples = audio_of(WHEEZES, monitor)[: 4 * 8000] if chunk == 1 else audio_of(WHEEZES, monitor)
    whole = run_bed(monitor, samples, len(samples))
    chunked = run_bed(monitor, samples, chunk)
    assert ended(chunked) == ended(whole)
    np.testing.assert_allclose(frames(chunked), frames(whole), atol=1e-6)
    assert whole[0].first_frame == 0
    # every frame of the stream is described once, the end included (the flush)
    assert frames(whole).shape[0] == -(-(len(samples) // 80 - 2) // 4)


def test_many_beds_in_one_call_equal_beds_one_at_a_time(monitor: Monitor) -> None:
    audio = [audio_of(p, monitor) for p in RECORDINGS]
    alone = [run_bed(monitor, a, 800) for a in audio]
    beds = [monitor.open_bed(f"bed-{i}") for i in range(len(audio))]
    steps: dict[int, list[BedStep]] = {i: [] for i in range(len(audio))}
    for start in range(0, max(len(a) for a in audio), 800):
        chunks = {b: a[start : start + 800] for b, a in zip(beds, audio, strict=True)}
        for bed, step in monitor.push({b: c for b, c in chunks.items() if len(c)}).items():
            steps[beds.index(bed)].append(step)
    for bed, step in monitor.close_beds(beds).items():
        steps[beds.index(bed)].append(step)
    for i in range(len(audio)):
        assert ended(steps[i]) == ended(alone[i])
        np.testing.assert_allclose(frames(steps[i]), frames(alone[i]), atol=1e-5)


def test_the_api_gives_the_runtimes_events(tmp_path: Path, monitor: Monitor) -> None:
    """``lungwatch run`` on a file stream and the API on the same samples: the same events."""
    config = build(config_mapping(tmp_path, [stream("b1", WHEEZES, realtime=False)]))
    _, sink = run_collecting(config)
    runtime = sorted(
        (e.kind, e.type, e.start_sample, e.end_sample) for e in sink.events if e.state == "ended"
    )
    rate = monitor.sample_rate_hz
    api = sorted(
        (k, t, round(s * rate), None if e is None else round(e * rate))
        for k, t, s, e in ended(run_bed(monitor, audio_of(WHEEZES, monitor), 800))
    )
    assert api == runtime
    assert any(k == "physiological" for k, *_ in api)


def test_silence_shows_in_the_quality_state_and_suppresses_detection(monitor: Monitor) -> None:
    bed = monitor.open_bed()
    step = bed.push(np.zeros(3 * monitor.sample_rate_hz, np.float32))
    assert step.quality.suppressed
    assert "silence" in step.quality.conditions
    assert step.quality.measures["rms_dbfs"] < -90
    onsets = [e for e in step.events if e.state == "onset"]
    assert "silence" in [e.type for e in onsets]
    assert {e.kind for e in onsets} == {"technical"}
    last = bed.close()
    closing = {(e.type, e.ended_by) for e in last.events if e.state == "ended"}
    assert ("silence", "end of stream") in closing


def test_config_settings_take_effect_on_every_class(monitor: Monitor) -> None:
    samples = audio_of(WHEEZES, monitor)
    fitted = ended(run_bed(monitor, samples, 800))
    with Monitor.load(MODEL_DIR, detector=DetectorConfig(on_threshold=0.99)) as strict:
        rules = {r.type: r.on_threshold for r in strict.settings.detector.thresholds}
        assert set(rules.values()) == {0.99}
        assert not [e for e in ended(run_bed(strict, samples, 800)) if e[0] == "physiological"]
    with Monitor.load(MODEL_DIR, detector=DetectorConfig(on_threshold=0.3)) as loose:
        assert len(ended(run_bed(loose, samples, 800))) > len(fitted)


@pytest.mark.parametrize("key", ["off_threshold", "min_event_ms", "merge_gap_ms"])
def test_a_setting_the_phase_rule_makes_moot_is_refused_naming_the_rule(key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Monitor.load(MODEL_DIR, detector=DetectorConfig(**{key: 0.3}), source="ward.yaml")
    message = str(refused.value)
    assert message.startswith(f"ward.yaml: detector.{key} does not apply")
    assert "manifest.json: detector.phases" in message
    assert "\n" not in message


def test_bad_input_is_refused_with_what_was_wrong(monitor: Monitor) -> None:
    bed = monitor.open_bed("b")
    with pytest.raises(MonitorError, match=r"bed 'b': audio must be a 1-D array .*\(2, 10\)"):
        bed.push(np.zeros((2, 10), np.float32))
    with pytest.raises(MonitorError, match="1-D array of numbers"):
        bed.push(np.array(["a", "b"]))
    bed.close()
    with pytest.raises(MonitorError, match="bed 'b' is closed"):
        bed.push(np.zeros(10, np.float32))
    with pytest.raises(ConfigError, match="a training checkpoint; export it first"):
        Monitor.load(MODEL_DIR / "model.pt")
    with pytest.raises(ConfigError, match="no such model file or folder"):
        Monitor.load(MODEL_DIR / "absent.onnx")
    other = Monitor.load(MODEL_DIR)
    try:
        with pytest.raises(MonitorError, match="belongs to another Monitor"):
            other.push({monitor.open_bed("x"): np.zeros(10, np.float32)})
    finally:
        other.close()


def test_a_beds_breathing_comes_with_every_step_and_its_age_band_from_open_bed(
    monitor: Monitor,
) -> None:
    """The streaming API gives each bed's respiration: the rate of a synthetic chest
    breathing 30 times a minute, assessed with a child's band and with an adult's; an
    unknown band is refused at open_bed."""
    from tests.edge.breathing_audio import chest_audio

    audio = chest_audio(40.0, 30.0)
    for band in ("child-1-5y", "adult"):
        bed = monitor.open_bed(f"b-{band}", band)
        steps = [bed.push(audio[i : i + 800]) for i in range(0, audio.size, 800)]
        last = bed.close().respiration
        assert last is not None
        assert last.age_band == band
        assert last.state == "ok"
        assert last.rate_bpm == pytest.approx(30.0, abs=1.0)
        assert steps[0].respiration.state == "assessing"
        assert bed.chain.breathing.summary()["breaths"] == pytest.approx(40 * 30 / 60, abs=1)
    with pytest.raises(ConfigError, match="age band 'elderly' is not one of"):
        monitor.open_bed("b", "elderly")


def test_respiration_can_be_turned_off() -> None:
    from edge.bed.breathing_state import RespirationConfig

    with Monitor.load(MODEL_DIR, respiration=RespirationConfig(enabled=False)) as off:
        bed = off.open_bed()
        step = bed.push(np.zeros(8000, np.float32))
        assert step.respiration is None
        assert bed.chain.breathing is None
