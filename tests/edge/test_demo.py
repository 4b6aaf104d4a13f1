"""``lungwatch demo`` end to end, run as a user would: a subprocess, real brokers, real files.

The demo streams three SPRSound recordings (``../shared/data`` or the copies in ``examples/``)
through the shipped INT8 model, publishes over MQTT (embedded amqtt or a real Mosquitto) and
writes a PNG per recording. Without the data folder it must still work (a fresh clone).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from demo.run import DEFAULT_RECORDS, read_annotation
from edge.bed.gate import TECHNICAL_TYPES
from edge.datapaths import PROJECT_ROOT, sprsound_root
from lungwatch.errors import AnnotationError
from tests.brokers import Mosquitto, Recorder
from wardview import plot
from wardview.plot import CLASS_COLOURS, MARGIN_PX, Span, colourise, render

EXAMPLES = PROJECT_ROOT / "examples"
RECORDS = [Path(r).name for r in DEFAULT_RECORDS]
MAX_EXAMPLE_BYTES = 200 * 1024
DEMO_TIMEOUT_S = 240
SUMMARY_RE = re.compile(
    r"events: published (\d+), acknowledged by the broker (\d+), delivered (\d+)"
)


def _demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lungwatch.cli", "demo", *args]


def _env(no_data: bool, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    if no_data:
        env["LUNGWATCH_DATA_DIR"] = str(tmp_path / "no-data")
    return env


def _demo(tmp_path: Path, *args: str, no_data: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _demo_command("--set", f"out_dir={tmp_path / 'out'}", *args),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
        cwd=tmp_path,  # not the project root: the model and examples are found from anywhere
        env=_env(no_data, tmp_path),
    )


def _decode_png(path: Path) -> np.ndarray:
    """Pixels of an 8-bit RGB PNG (decoded in full: a truncated or corrupt file fails)."""
    with Image.open(path) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        return np.asarray(image)


def _counts(stdout: str) -> tuple[int, int, int]:
    match = SUMMARY_RE.search(stdout)
    assert match is not None, stdout[-3000:]
    published, acked, delivered = (int(g) for g in match.groups())
    return published, acked, delivered


def _audio_seconds(stdout: str) -> float:
    match = re.search(r"summary: 3 streams, ([\d.]+) s of audio", stdout)
    assert match is not None, stdout[-3000:]
    return float(match.group(1))


def _detected_line(stdout: str, bed: str) -> str:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {bed}  "))
    return lines[start + 1]


def _check_complete_run(result: subprocess.CompletedProcess[str], out: Path) -> int:
    """Exit 0, every event delivered, offline seen, one valid PNG per recording."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    published, acked, delivered = _counts(result.stdout)
    assert published == acked == delivered > 0
    assert "delivered == published" in result.stdout
    assert "status offline delivered: yes" in result.stdout
    assert "mqtt> status offline (shutdown)" in result.stdout
    delivered_lines = [
        line for line in result.stdout.splitlines() if re.match(r"mqtt> bed-\d ", line)
    ]
    assert len(delivered_lines) == delivered  # the subscriber printed each delivery
    for record in RECORDS:
        pixels = _decode_png(out / f"{record}.png")
        seconds = sf.info(str(EXAMPLES / f"{record}.flac")).duration
        assert abs(pixels.shape[1] - MARGIN_PX - seconds * 100) < 5  # 10 ms per column
        assert pixels.shape[0] > 200
        assert pixels.std() > 10  # a picture, not a blank
    return published


def test_demo_runs_end_to_end_on_the_shipped_examples(tmp_path: Path) -> None:
    result = _demo(tmp_path, no_data=True)
    _check_complete_run(result, tmp_path / "out")
    assert result.stdout.count("from shipped copy in examples/") == 3
    assert "broker: 127.0.0.1:" in result.stdout
    assert "(embedded amqtt)" in result.stdout
    # events as they happen, from the runtime's stdout sink
    assert re.search(r"Z demo-ward/bed-2 Fine Crackle onset \[low\] conf=", result.stdout)
    assert "Fine Crackle" in _detected_line(result.stdout, "bed-2")
    assert "Fine Crackle" in _detected_line(result.stdout, "bed-3")
    # the three recordings are good ones: no technical alarm
    assert not [t for t in TECHNICAL_TYPES if f" {t} onset" in result.stdout]
    assert "annotated: 13 Wheeze;" in result.stdout
    assert "annotated: 5 Fine Crackle, 3 Wheeze;" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.requires_data
def test_demo_reads_the_records_from_shared_data(tmp_path: Path) -> None:
    if not sprsound_root().is_dir():
        pytest.skip(f"SPRSound not found at {sprsound_root()} (set LUNGWATCH_DATA_DIR)")
    result = _demo(tmp_path, no_data=False)
    _check_complete_run(result, tmp_path / "out")
    assert result.stdout.count(f"from SPRSound {sprsound_root()}") == 3


def test_demo_publishes_to_a_configured_mosquitto(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker, Recorder(broker.port) as recorder:
        result = _demo(tmp_path, "--broker", f"127.0.0.1:{broker.port}")
        published = _check_complete_run(result, tmp_path / "out")
        assert f"broker: 127.0.0.1:{broker.port} (configured)" in result.stdout
        assert recorder.wait_for(lambda m: len({*recorder.event_ids()}) >= published, 10.0)
        assert len(set(recorder.event_ids())) == published
        statuses = [m.json()["state"] for m in recorder.messages if m.topic.endswith("/status")]
        assert statuses[0] == "online"
        assert statuses[-1] == "offline"


def test_sigterm_stops_a_paced_demo_cleanly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _demo_command("--realtime", "--set", f"out_dir={tmp_path / 'out'}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(True, tmp_path),
    )
    assert process.stdout is not None
    deadline_s = time.monotonic() + DEMO_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline_s:  # wait for the first delivered event
        line = process.stdout.readline()
        seen.append(line)
        if not line or re.match(r"mqtt> bed-\d ", line):
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    rest, err = process.communicate(timeout=60)
    stdout = "".join(seen) + rest
    assert process.returncode == 0, stdout[-3000:] + err[-3000:]
    published, acked, delivered = _counts(stdout)
    assert published == acked == delivered > 0
    assert "status offline delivered: yes" in stdout
    audio_s = _audio_seconds(stdout)
    assert audio_s < 30.0  # stopped well before the 33.8 s of the three recordings
    for record in RECORDS:
        _decode_png(tmp_path / "out" / f"{record}.png")


def test_seconds_limits_a_paced_run(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--realtime", "--seconds", "1.5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    audio_s = _audio_seconds(result.stdout)
    assert 3.0 <= audio_s <= 3 * 1.5 + 0.7
    assert "status offline delivered: yes" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "chunk_samples=0"), "demo.yaml: chunk_samples must be an integer >= 1, got 0"),
        (("--broker", "nowhere"), "demo.yaml: broker must be HOST:PORT, got 'nowhere'"),
        (("--set", "records=[intra_test/absent]"), "record intra_test/absent: neither "),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = _demo(tmp_path, *args)
    assert result.returncode == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lungwatch demo: error: ")
    assert message in err


def test_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    from tests.brokers import closed_port

    with closed_port() as port:
        result = _demo(tmp_path, "--broker", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert re.fullmatch(
        r"lungwatch demo: error: broker 127\.0\.0\.1:\d+ is unreachable: .+", result.stderr.strip()
    )


def test_the_demo_imports_neither_torch_nor_training() -> None:
    code = (
        "import sys, demo.run, wardview.plot, demo.subscriber, edge.runtime.loop;"
        "import edge.sinks.broker;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the shipped examples --------------------------------------------------------------------
@pytest.mark.parametrize("record", RECORDS)
def test_examples_are_small_flac_with_their_annotation(record: str) -> None:
    flac = EXAMPLES / f"{record}.flac"
    assert flac.stat().st_size <= MAX_EXAMPLE_BYTES
    info = sf.info(str(flac))
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 8000, 1)
    label, spans = read_annotation(flac.with_suffix(".json"))
    assert label in ("CAS", "DAS", "CAS & DAS")
    assert spans
    assert all(0 <= s.start_s < s.end_s <= info.duration for s in spans)
    assert {s.type for s in spans} <= {"Wheeze", "Fine Crackle"}


def test_examples_carry_attribution_and_license() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for needed in ("SPRSound", "Q. Zhang et al.", "TBioCAS", "2022", "GPL-3.0"):
        assert needed in readme
    for record in RECORDS:
        assert f"`{record}.flac`" in readme
    license_text = (EXAMPLES / "LICENSE-SPRSound").read_text(encoding="utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in license_text
    assert "Version 3" in license_text
    assert {p.name for p in EXAMPLES.iterdir()} == {
        "README.md",
        "LICENSE-SPRSound",
        *(f"{r}.{ext}" for r in RECORDS for ext in ("flac", "json")),
    }


@pytest.mark.requires_data
@pytest.mark.parametrize("record", DEFAULT_RECORDS)
def test_examples_are_exact_copies_of_the_data(record: str) -> None:
    original = sprsound_root() / f"{record}.flac"
    if not original.is_file():
        pytest.skip(f"{original} not found (set LUNGWATCH_DATA_DIR)")
    for ext in ("flac", "json"):
        shipped = EXAMPLES / f"{Path(record).name}.{ext}"
        assert shipped.read_bytes() == original.with_suffix(f".{ext}").read_bytes()


# -- pieces ----------------------------------------------------------------------------------
def test_read_annotation_converts_ms_and_names_a_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    events = [{"start": "1500", "end": "2250", "type": "Wheeze"}, {"start": 100, "end": 900,
              "type": "Normal"}]  # fmt: skip
    good.write_text(json.dumps({"record_annotation": "CAS", "event_annotation": events}))
    assert read_annotation(good) == ("CAS", (Span(0.1, 0.9, "Normal"), Span(1.5, 2.25, "Wheeze")))
    assert read_annotation(tmp_path / "absent.json") == ("", ())
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"event_annotation": [{"start": "x", "end": "1", "type": "W"}]}))
    with pytest.raises(AnnotationError, match=r"b\.json: not an SPRSound annotation"):
        read_annotation(bad)


def test_render_puts_events_and_probabilities_on_the_time_axis() -> None:
    classes = ("Normal", "Wheeze")
    image = render(
        title="test",
        spectrogram=np.random.default_rng(0).standard_normal((300, 8)),
        frames_per_s=100.0,
        freq_range_hz=(50.0, 4000.0),
        classes=classes,
        window_centres_s=np.array([1.0, 1.5]),
        window_hop_s=0.5,
        probabilities=np.array([[0.1, 0.9], [0.8, 0.2]]),
        detected=[Span(1.0, 2.0, "Wheeze")],
        annotated=[Span(0.5, 1.0, "Wheeze")],
    )
    picture = np.asarray(image)
    assert picture.shape[1] == MARGIN_PX + 300
    wheeze = np.array(CLASS_COLOURS["Wheeze"], np.uint8)
    is_wheeze = (picture == wheeze).all(axis=2)
    columns = np.flatnonzero(is_wheeze[:, MARGIN_PX:].any(axis=0))
    assert columns.min() == 50
    assert columns.max() == 199
    # the labels are drawn in the margin: the title's row is not blank, the class names are
    # in their colours (blue dominant in the Wheeze row's label)
    assert (picture[: plot.TITLE_PX, :MARGIN_PX] != plot.BACKGROUND).any()
    top = plot.TITLE_PX + plot.BAND_PX * 8 + plot.GAP_PX + plot.CLASS_ROW_PX
    wheeze_row = picture[top : top + plot.CLASS_ROW_PX, :MARGIN_PX].astype(int)
    assert (wheeze_row[..., 2] - wheeze_row[..., 0] > 60).any()


def test_colourise_is_monotonic_in_brightness() -> None:
    rgb = colourise(np.linspace(0, 1, 200)[None, :]).astype(int)
    brightness = rgb[0].sum(axis=1)
    assert brightness[0] < 30
    assert brightness[-1] > 600
    assert (np.diff(brightness) >= -40).all()
