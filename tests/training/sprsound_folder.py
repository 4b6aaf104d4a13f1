"""A small SPRSound-layout folder of synthetic recordings (FLAC + JSON), for tests that run the
trainer or the scoring end to end without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from training.data.synthetic import synthesize

RATE_HZ = 8000


def write_folder(folder: Path, patients: int = 8, seconds: float = 6.0) -> Path:
    """Two recordings per patient (one with crackles, one with wheezes; every fourth patient's
    are Normal), each breath-phase-like stretch annotated: the events as their types, the rest
    of each half second around them as Normal phases."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        for r, (crackles, wheezes) in enumerate(((4, 0), (0, 2))):
            normal = p % 4 == 3
            counts = (0, 0) if normal else (crackles, wheezes)
            rec = synthesize(seconds, RATE_HZ, seed=100 * p + r, crackles=counts[0],
                             wheezes=counts[1])  # fmt: skip
            name = f"{9000 + p}_{3 + p % 5}.0_{p % 2}_p{1 + r}_{100 + r}"
            sf.write(folder / f"{name}.flac", rec.samples, RATE_HZ, subtype="PCM_16")
            events = [
                {"start": str(round(1000 * max(0.0, e.start_s - 0.2))),
                 "end": str(round(1000 * min(seconds, e.end_s + 0.2))), "type": e.type}
                for e in rec.events
            ] or [{"start": "500", "end": "1500", "type": "Normal"}]  # fmt: skip
            label = "Normal" if normal else ("DAS" if crackles else "CAS")
            document = {"record_annotation": label, "event_annotation": events}
            (folder / f"{name}.json").write_text(json.dumps(document))
    return folder
