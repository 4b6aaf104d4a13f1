"""One table serves all: a made-up sound class added as one row of ``lungwatch.labels``'s
table reaches the detector, the finding episodes, the verdict, the alarms, the bed cards and
the page's labels, the history, the gateway's coding and the scoring views, with no other
file changed.

The row is added to the table's source in a fresh interpreter (every module derives its
views from the table at import), and the checks below run there."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANCHOR = "SOUND_CLASSES: tuple[SoundClass, ...] = (\n"
# a wheeze-family sound with a code, priority, card and scoring class of its own
ROW = (
    '    SoundClass("Squawk", "CAS", "wheeze", "9999001", "Squawk finding", 5, "high", True,'
    ' "squawks", colour="#123456"),\n'
)
SCRIPT = f"""
import sys, types
source = open({str(ROOT / "lungwatch" / "labels.py")!r}).read()
assert source.count({ANCHOR!r}) == 1, "the table's first line has changed: update ANCHOR"
table = types.ModuleType("lungwatch.labels")
table.__file__ = "lungwatch/labels.py"
sys.modules["lungwatch.labels"] = table
exec(compile(source.replace({ANCHOR!r}, {ANCHOR!r} + {ROW!r}), table.__file__, "exec"),
     table.__dict__)
from tests.contracts.test_label_table import check_squawk
check_squawk(sys.argv[1])
"""


def test_a_class_added_to_the_table_reaches_every_part(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "every part knows Squawk"


def check_squawk(folder: str) -> None:
    """Run in the interpreter whose table has the Squawk row."""
    import numpy as np

    import bench.detection
    from edge.bed.detector import DetectorConfig, FrameDetector, FrameGrid
    from edge.bed.findings import FAMILY_OF
    from edge.bed.verdict import RollingVerdict, VerdictConfig, VerdictRule
    from gateway.fhir import finding_observation
    from gateway.hl7 import Bed, Sender, finding_message
    from lungwatch.alarms import AlarmBook
    from lungwatch.events import Event, format_utc
    from lungwatch.labels import DETECTED_CLASSES, sound_class
    from training.data.targets import OUTPUTS, TYPE_OUTPUTS
    from training.scoring import tasks, views
    from training.scoring.detection import VIEWS
    from wardview.beds import PAGE_CLASSES, bed_state
    from wardview.history import History

    assert sound_class("Squawk").family == "CAS"
    # the detector: its own output column, raised as an event of its own priority
    assert DETECTED_CLASSES[-1] == "Squawk"
    assert OUTPUTS.index("Squawk") == 5
    grid = FrameGrid(8000, 320)
    probs = np.zeros((50, len(OUTPUTS)), np.float32)
    probs[10:40, OUTPUTS.index("Squawk")] = 0.9
    detector = FrameDetector(OUTPUTS, DetectorConfig(latching=()), grid)
    [onset, *_] = detector.update(0, probs) + detector.finish()
    assert (onset.type, onset.state, onset.priority) == ("Squawk", "onset", "high")
    assert FAMILY_OF["Squawk"] == "CAS"  # held until it recurs, as a wheeze finding
    # the verdict: a CAS bed
    rule = VerdictRule(0.5, 0.6, 0.6, 3, VerdictConfig(window_s=2.0, min_s=1.0))
    verdict = RollingVerdict(rule, OUTPUTS, grid)
    assert verdict.update(0, probs[10:40]) == "CAS"
    # the wire, the alarms and the bed card
    event = Event.onset(
        type="Squawk", site="w", device_id="edge-1", stream_id="bed-1",
        start_utc=format_utc(1_780_000_000.0), start_sample=0, confidence=0.9,
        model_id="m", model_sha256="0" * 64,
    )  # fmt: skip
    assert (event.priority, event.snomed_ct) == ("high", "9999001")
    book = AlarmBook()
    book.take(event, 0.0)
    [row] = book.conditions(0.0)
    assert (row["condition"], row["text"], row["priority"]) == ("CAS", "wheezes (CAS)", "high")
    assert bed_state(True, [row]) == {"key": "squawks", "text": "squawks · high alarm"}
    # the page: its live-strip line and its own name on its family's alarm row
    assert PAGE_CLASSES["Squawk"] == {"colour": "#123456", "named": "squawks"}
    # the history's per-hour onsets
    history = History(Path(folder) / "history.db", clock=lambda: 1_780_000_000.0 + 60)
    history.add_event(event)
    assert history.flush()
    assert history.trend("edge-1", "bed-1", hours=1)["onsets"]["CAS"] == [1]
    history.close()
    # the gateway's coding: the table's SNOMED CT code, not the local fallback
    sender = Sender(facility="WARD-1", receiving_application="HIS", receiving_facility="HOSP")
    now = dt.datetime(2026, 11, 27, 3, 15, tzinfo=dt.timezone.utc)
    hl7 = finding_message(event.to_dict(), Bed("edge-1", "bed-1"), sender, "F1", now)
    assert "|9999001^Squawk^SCT|" in hl7
    fhir = json.loads(finding_observation(event.to_dict(), Bed("edge-1", "bed-1"), "episode/x"))
    assert fhir["code"]["coding"][0]["code"] == "9999001"
    # training and scoring
    assert TYPE_OUTPUTS["Squawk"] == ("Squawk",)
    assert "Squawk" in tasks.CAS_CLASSES
    assert "Squawk" in views.WHEEZE
    assert VIEWS["family"][0]["Squawk"] == ("CAS",)
    assert VIEWS["4class"][0]["Squawk"] == ("Squawk",)
    assert "Squawk" in VIEWS["4class"][1]
    assert bench.detection.FAMILY["Squawk"] == "CAS"
    print("every part knows Squawk")
