"""``lungwatch respiration``: the respiratory rate and apnoea of :mod:`edge.bed.breathing`,
judged on real recordings through the device path.

Each part of :data:`PARTS` prints a table whose last line is ``key=value`` pairs of the
headline numbers; what each part streams, against which reference, and what it expects:
docs/respiration.md, "How it was measured".

Every rate summary reports the bias beside the MAE: a tracker that over-counts shows it.
"""

from __future__ import annotations

import collections
import operator
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, sosfiltfilt

from edge.audio import read_audio
from edge.bed.agebands import age_from_sprsound_name, band_for_age
from edge.bed.breathing_alarms import ARM_HOLD_S
from edge.datapaths import data_root
from edge.monitor import Bed, BedEvent, Monitor
from edge.runtime.detect import write_json
from lungwatch.cli import ArgumentParser

PARTS = ("rate", "cv", "apnoea", "false", "synthetic", "stretched", "started")
STRETCH_FACTORS = (0.8, 1.25)  # real recordings played this many times faster: known new rates
# the estimator's settings the cross-validation chooses among on each fold's training patients
CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {"min_confidence": c, "fallback_band_hz": None} for c in (0.2, 0.25, 0.3, 0.35)
) + tuple(
    {"min_confidence": c, "fallback_band_hz": (lo, hi)}
    for lo in (80.0, 100.0, 120.0)
    for hi in (600.0, 800.0, 1000.0)
    for c in (0.25, 0.3, 0.35)
)
SPLICES = ("quiet", "noise", "zeros", "detached")
SPLICE_AT_S = 60.0
SPLICE_S = 30.0
MIN_STREAM_S = 120.0
READ_S = 1.0  # seconds of audio per push (as a file source reads)


def icbhi_ages(root: Path) -> dict[str, float]:
    """Patient id -> age in years from ICBHI's ``annotations/demographic_info.txt``."""
    ages = {}
    for line in (root / "annotations" / "demographic_info.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] != "NA":
            ages[fields[0]] = float(fields[1])
    return ages


@dataclass(frozen=True)
class CycleReference:
    cycles: int
    span_s: float  # first cycle's start to last cycle's end
    period_bpm: float | None  # 60 / median duration of the whole cycles (first, last left out)
    mean_bpm: float | None  # 60 / their mean duration

    @property
    def count_rate_bpm(self) -> float:
        """The annotated cycles per minute of their span (the first and last often cut)."""
        return 60.0 * self.cycles / self.span_s

    @property
    def rate_bpm(self) -> float:
        """The breathing rate: 60 / the mean duration of the whole cycles (the first and last
        left out: the recording's ends often cut them), else the cycles per minute."""
        return self.count_rate_bpm if self.mean_bpm is None else self.mean_bpm

    @classmethod
    def of(cls, txt: Path) -> CycleReference:
        rows = [line.split() for line in txt.read_text().splitlines() if line.strip()]
        spans = [(float(r[0]), float(r[1])) for r in rows]
        inner = [end - start for start, end in spans[1:-1]]
        period = 60.0 / float(np.median(inner)) if inner else None
        mean = 60.0 * len(inner) / float(np.sum(inner)) if inner else None
        return cls(len(spans), spans[-1][1] - spans[0][0], period, mean)


def body_sounds(audio: np.ndarray, rate_hz: int, cutoff_hz: float = 100.0) -> np.ndarray:
    """Sounds under ``cutoff_hz`` (heart, body): what a stethoscope on a still chest hears."""
    sos = butter(8, cutoff_hz, btype="low", fs=rate_hz, output="sos")
    return sosfiltfilt(sos, audio)


def _band_noise(n: int, lo_hz: float, hi_hz: float, rms: float, rate_hz: int,
                rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    sos = butter(2, [lo_hz, hi_hz], btype="band", fs=rate_hz, output="sos")
    noise = sosfiltfilt(sos, rng.normal(0.0, 1.0, n))
    return noise / noise.std() * rms


def breath_band_levels(audio: np.ndarray, rate_hz: int) -> tuple[float, float]:
    """(floor, typical) RMS of the breath band (150-1000 Hz) over 0.48-s hops: the 5th
    percentile (the stethoscope's floor between breaths) and the median."""
    sos = butter(4, [150.0, 1000.0], btype="band", fs=rate_hz, output="sos")
    band = sosfiltfilt(sos, audio)
    hop = int(0.48 * rate_hz)
    hops = band[: band.size // hop * hop].reshape(-1, hop)
    rms = np.sqrt((hops**2).mean(axis=1))
    return float(np.percentile(rms, 5)), float(np.median(rms))


def splice(
    audio: np.ndarray, kind: str, at_s: float, seconds: float, rate_hz: int, seed: int = 0
) -> np.ndarray:
    """``audio`` with ``seconds`` without breathing (docs/respiration.md, "Apnoea") inserted at
    ``at_s``, its sounds taken from the ``seconds`` before ``at_s``."""
    rng = np.random.default_rng(seed)
    at, n = int(at_s * rate_hz), int(seconds * rate_hz)
    if at < n or at > audio.size:
        raise ValueError(f"splice at {at_s} s needs {seconds} s of audio before it")
    floor, typical = breath_band_levels(audio[:at], rate_hz)
    if kind == "zeros":
        inserted = np.zeros(n)
    elif kind == "detached":  # faint room noise, nothing of the body
        inserted = _band_noise(n, 300.0, 3000.0, 10 ** (-60 / 20), rate_hz, rng)
    elif kind in ("quiet", "noise"):
        inserted = body_sounds(audio[at - n : at], rate_hz)
        inserted = inserted + _band_noise(n, 100.0, 3000.0, floor / 2, rate_hz, rng)
    else:
        raise ValueError(f"splice kind must be one of {', '.join(SPLICES)}, got {kind!r}")
    out = np.concatenate([audio[:at], inserted, audio[at:]])
    if kind == "noise":  # the ward's noise goes on all along; only the breath sounds stop
        out = out + _band_noise(out.size, 100.0, 2000.0, typical / 2, rate_hz, rng)
    return out.astype(np.float32)


def patient_streams(root: Path, rate_hz: int, min_s: float = MIN_STREAM_S) -> dict[str, np.ndarray]:
    """Patient id -> their ICBHI recordings back to back, leading zeros cut, repeated to min_s."""
    by_patient: dict[str, list[Path]] = collections.defaultdict(list)
    for flac in sorted((root / "train").glob("*.flac")):
        by_patient[flac.stem.split("_")[0]].append(flac)
    streams = {}
    for patient, files in sorted(by_patient.items()):
        parts = [read_audio(f, target_rate_hz=rate_hz).samples for f in files]
        audio = np.concatenate([p[int(np.argmax(np.abs(p) > 0)) :] for p in parts])
        while audio.size < min_s * rate_hz:
            audio = np.concatenate([audio, audio])
        streams[patient] = audio.astype(np.float32)
    return streams


Events = list[tuple[float, BedEvent]]  # (stream time it came at, event)
Readings = list[tuple[float, str]]  # (stream time, the bed's breathing state then)


def stream_events(
    monitor: Monitor, streams: Mapping[str, Iterable[np.ndarray]], bands: Mapping[str, str]
) -> tuple[dict[str, Events], dict[str, Bed], dict[str, Readings]]:
    """Every stream (an array, or pieces of audio) as one bed of its age band, pushed
    ``READ_S`` at a time: each bed's timed events, the closed beds, each bed's timed states."""
    beds = {name: monitor.open_bed(name, bands.get(name)) for name in streams}
    found: dict[str, Events] = {name: [] for name in streams}
    states: dict[str, Readings] = {name: [] for name in streams}
    step = int(READ_S * monitor.sample_rate_hz)
    readers = {name: _reader(pieces, step) for name, pieces in streams.items()}
    pushed = dict.fromkeys(streams, 0)
    while readers:
        chunks = {}
        for name in list(readers):
            chunk = next(readers[name], None)
            if chunk is None:
                del readers[name]
            else:
                chunks[beds[name]] = chunk
        for bed, result in monitor.push(chunks).items():
            pushed[bed.id] += chunks[bed].size
            now = pushed[bed.id] / monitor.sample_rate_hz
            found[bed.id] += [(now, e) for e in result.events]
            if result.respiration is not None:
                states[bed.id].append((now, result.respiration.state))
    for bed, result in monitor.close_beds(beds.values()).items():
        now = pushed[bed.id] / monitor.sample_rate_hz
        found[bed.id] += [(now, e) for e in result.events]
    return found, beds, states


def _reader(pieces: Iterable[np.ndarray], step: int) -> Iterator[np.ndarray]:
    buffer = np.zeros(0, np.float32)
    for piece in [pieces] if isinstance(pieces, np.ndarray) else pieces:
        buffer = np.concatenate([buffer, np.asarray(piece, np.float32)])
        while buffer.size >= step:
            yield buffer[:step]
            buffer = buffer[step:]
    if buffer.size:
        yield buffer


def onsets(events: Iterable[tuple[float, BedEvent]], type_: str) -> list[tuple[float, BedEvent]]:
    return [(when, e) for when, e in events if e.type == type_ and e.state == "onset"]


def rate_part(model: Path, root: Path, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ICBHI through the device path against the annotated cycles (docs/respiration.md, "Rate");
    ``settings``: the ``respiration`` section's keys to change."""
    from edge.bed.breathing_state import RespirationConfig
    from edge.monitor import resolve_model
    from edge.runtime.offline import detect_recordings, recordings_in

    recordings = recordings_in([root / "train"])
    bands = icbhi_bands(root, recordings)
    folder, file = resolve_model(model)
    config = RespirationConfig(**(settings or {}))
    found = detect_recordings(recordings, folder, file, age_bands=bands, respiration=config)
    rows = [_cycle_row(root, name, bands[name], found[name].respiration)
            for name in sorted(recordings)]  # fmt: skip
    return {"recordings": rows, **rate_summary(rows)}


def icbhi_bands(root: Path, recordings: Iterable[str]) -> dict[str, str]:
    """Recording name -> the age band of its patient (ICBHI's demographics)."""
    ages = icbhi_ages(root)
    return {name: band_for_age(ages[name.split("_")[0]]).name for name in recordings}


def _cycle_row(
    root: Path, name: str, band: str, respiration: Mapping[str, Any] | None, factor: float = 1.0
) -> dict[str, Any]:
    """An ICBHI recording's row: its annotated cycles (at a rate ``factor`` times the
    recording's, where it was played that much faster) beside the device's report."""
    ref = CycleReference.of(root / "train" / f"{name}.txt")
    period = None if ref.period_bpm is None else ref.period_bpm * factor
    return {"recording": name, "age_band": band, "cycles": ref.cycles,
            "rate_ref_bpm": round(ref.rate_bpm * factor, 2), "period_ref_bpm": period,
            "count_ref_bpm": round(ref.count_rate_bpm * factor, 2),
            **_reported(respiration)}  # fmt: skip


def stretched_part(
    model: Path, root: Path, factors: Sequence[float] = STRETCH_FACTORS
) -> dict[str, Any]:
    """ICBHI ``train`` played ``factor`` times faster (:func:`training.data.breaths.stretch`):
    the same annotated cycles at a rate ``factor`` times the recording's, through the device
    path (docs/respiration.md, "Real recordings at other rates")."""
    import tempfile

    import soundfile

    from edge.monitor import resolve_model
    from edge.runtime.offline import detect_recordings, recordings_in
    from training.data.breaths import stretch

    recordings = recordings_in([root / "train"])
    bands = icbhi_bands(root, recordings)
    folder, file = resolve_model(model)
    rows = []
    for factor in factors:
        with tempfile.TemporaryDirectory(prefix="lungwatch-stretched-") as tmp:
            paths = {}
            for name, source in recordings.items():
                audio, rate_hz = soundfile.read(source, dtype="float32", always_2d=True)
                paths[name] = Path(tmp) / f"{name}.wav"
                soundfile.write(paths[name], stretch(audio[:, 0], factor), rate_hz, "FLOAT")
            found = detect_recordings(paths, folder, file, age_bands=bands)
        rows += [{"factor": factor,
                  **_cycle_row(root, name, bands[name], found[name].respiration, factor)}
                 for name in sorted(recordings)]  # fmt: skip
    by = {"factor": operator.itemgetter("factor"), "age_band": operator.itemgetter("age_band")}
    return {**rate_summary(rows), "groups": grouped(rows, by), "recordings": rows}


def print_stretched(result: Mapping[str, Any]) -> None:
    print("stretched: ICBHI train played faster and slower, against its annotated cycles")
    for factor, r in result["groups"]["factor"].items():
        print(f"  x{factor}: not assessable {r['not_assessable_share']:.1%}, rate MAE "
              f"{r['rate_mae_bpm']} breaths/min (bias {r['rate_bias_bpm']}), breaths within ±1 "
              f"{r['count_within_1_assessable']:.1%} of assessable")  # fmt: skip


def _reported(respiration: Mapping[str, Any] | None) -> dict[str, Any]:
    """The device's report of a recording's rate, its live readings as their median."""
    got = respiration or {}
    series = got.get("series", [])
    rates = [s["rate_bpm"] for s in series if s["state"] == "ok" and s["rate_bpm"] is not None]
    median = round(float(np.median(rates)), 2) if rates else None
    return {"live_median_bpm": median, **{k: v for k, v in got.items() if k != "series"}}


def _mae(pairs: Sequence[tuple[float | None, float]]) -> float | None:
    errors = [abs(a - b) for a, b in pairs if a is not None]
    return round(float(np.mean(errors)), 2) if errors else None


def _bias(pairs: Sequence[tuple[float | None, float]]) -> float | None:
    errors = [a - b for a, b in pairs if a is not None]
    return round(float(np.mean(errors)), 2) if errors else None


def rate_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["assessable"]]
    signed = np.array([r["rate_bpm"] - r["rate_ref_bpm"] for r in ok])
    errors = np.abs(signed)
    count = np.array([abs(r["breaths"] - r["cycles"]) for r in rows])
    count_ok = np.array([abs(r["breaths"] - r["cycles"]) for r in ok])
    by_period = [(r["rate_bpm"], r["period_ref_bpm"]) for r in ok if r.get("period_ref_bpm")]
    by_count = [(r["rate_bpm"], r["count_ref_bpm"]) for r in ok if r.get("count_ref_bpm")]
    return {
        "recordings_n": len(rows),
        "not_assessable_share": round(1.0 - len(ok) / max(1, len(rows)), 3),
        "rate_mae_bpm": round(float(errors.mean()), 2) if errors.size else None,
        "rate_bias_bpm": round(float(signed.mean()), 2) if signed.size else None,
        "rate_median_error_bpm": round(float(np.median(errors)), 2) if errors.size else None,
        "count_within_1_assessable": round(float((count_ok <= 1).mean()), 3) if ok else None,
        "count_within_1_all": round(float((count <= 1).mean()), 3) if rows else None,
        "live_median_mae_bpm": _mae([(r.get("live_median_bpm"), r["rate_ref_bpm"]) for r in ok]),
        "rate_vs_period_mae_bpm": _mae(by_period),
        "rate_vs_period_bias_bpm": _bias(by_period),
        "rate_vs_count_mae_bpm": _mae(by_count),
        "rate_vs_count_bias_bpm": _bias(by_count),
    }


def grouped(
    rows: Sequence[Mapping[str, Any]], by: Mapping[str, Callable[[Mapping[str, Any]], Any]]
) -> dict[str, dict[str, Any]]:
    """Per grouping of ``by`` (name -> a row's group), each group's rate summary, keyed by text."""
    out: dict[str, dict[str, Any]] = {}
    for key, of in by.items():
        names = sorted({of(r) for r in rows})
        out[key] = {str(n): rate_summary([r for r in rows if of(r) == n]) for n in names}
    return out


def synthetic_part(model: Path, seconds: float = 60.0, started: bool = False) -> dict[str, Any]:
    """The synthetic truth set (:mod:`training.data.breaths`) through the device path
    (docs/respiration.md, "Breath cycles"); ``started``: the set of chests started anywhere in
    a cycle (:func:`training.data.breaths.started_set`) instead."""
    import tempfile

    import soundfile

    from edge.monitor import resolve_model
    from edge.runtime.offline import detect_recordings
    from training.data.breaths import started_set, synthesize, truth_set

    folder, file = resolve_model(model)
    specs = started_set(seconds) if started else truth_set(seconds)
    with tempfile.TemporaryDirectory(prefix="lungwatch-breaths-") as tmp:
        recordings, truths, bands = {}, {}, {}
        for spec, band in specs:
            name = spec.label()
            audio, truths[name] = synthesize(spec)
            path = Path(tmp) / f"{name}.wav"
            soundfile.write(path, audio, spec.device_rate_hz, subtype="PCM_16")
            recordings[name], bands[name] = path, band
        found = detect_recordings(recordings, folder, file, age_bands=bands)
    rows = []
    for spec, band in specs:
        name = spec.label()
        rows.append({"recording": name, "age_band": band, "device_rate_hz": spec.device_rate_hz,
                     "paced_bpm": spec.rate_bpm, "cycles": truths[name].cycles,
                     "rate_ref_bpm": round(truths[name].rate_bpm, 2),
                     "period_ref_bpm": spec.rate_bpm,
                     "count_ref_bpm": round(truths[name].count_rate_bpm, 2),
                     **_reported(found[name].respiration)})  # fmt: skip
    keys = ("device_rate_hz", "age_band", "paced_bpm")
    groups = grouped(rows, {key: operator.itemgetter(key) for key in keys})
    return {**rate_summary(rows), "groups": groups, "recordings": rows}


def print_started(result: Mapping[str, Any]) -> None:
    print(f"started: {result['recordings_n']} regular adult chests started anywhere in a cycle")
    print(f"  not assessable {result['not_assessable_share']:.1%}; against the cycles inside: "
          f"MAE {result['rate_mae_bpm']}, bias {result['rate_bias_bpm']}; against the paced "
          f"rate: MAE {result['rate_vs_period_mae_bpm']}, bias "
          f"{result['rate_vs_period_bias_bpm']}")  # fmt: skip
    for key in ("paced_bpm", "device_rate_hz"):
        for name, g in result["groups"][key].items():
            print(f"  {key} {name:>7}: not assessable {g['not_assessable_share']:6.1%}  cycles "
                  f"inside MAE {g['rate_mae_bpm']} bias {g['rate_bias_bpm']}  paced rate MAE "
                  f"{g['rate_vs_period_mae_bpm']} bias {g['rate_vs_period_bias_bpm']}")  # fmt: skip


def print_synthetic(result: Mapping[str, Any]) -> None:
    print(f"synthetic: {result['recordings_n']} chests of known rate through the device path")
    within = result["count_within_1_assessable"]
    print(f"  not assessable {result['not_assessable_share']:.1%}, rate MAE "
          f"{result['rate_mae_bpm']} breaths/min, bias {result['rate_bias_bpm']}, breaths "
          f"within ±1 {'--' if within is None else f'{within:.1%}'} of assessable")  # fmt: skip
    for key, groups in result["groups"].items():
        for name, g in groups.items():
            print(f"  {key} {name:>10}: not assessable {g['not_assessable_share']:6.1%}  MAE "
                  f"{g['rate_mae_bpm']}  bias {g['rate_bias_bpm']}")  # fmt: skip


def _right(row: Mapping[str, Any]) -> bool:
    return bool(row["assessable"]) and abs(row["breaths"] - row["cycles"]) <= 1


TARGET_MAE_BPM = 2.0  # the choice's bound on the rate error of the training patients
TARGET_WITHIN_1 = 0.8  # ... and on the assessable recordings counted within ±1
TARGET_BIAS_BPM = 0.5  # ... and on the signed mean error (a tracker that over- or under-counts)


def _choice_key(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, float, float]:
    """Higher is better: under the accuracy targets (MAE, bias, ±1) the fewest not assessable;
    where no setting meets them, the lowest MAE."""
    s = rate_summary(rows)
    mae = s["rate_mae_bpm"] if s["rate_mae_bpm"] is not None else 99.0
    bias = abs(s["rate_bias_bpm"]) if s["rate_bias_bpm"] is not None else 99.0
    within = s["count_within_1_assessable"] or 0.0
    meets = mae <= TARGET_MAE_BPM and bias <= TARGET_BIAS_BPM and within >= TARGET_WITHIN_1
    if meets:
        return (True, -s["not_assessable_share"], -mae)
    return (False, -mae, -s["not_assessable_share"])


def cv_part(model: Path, root: Path) -> dict[str, Any]:
    from training.cv.folds import load_folds

    folds = load_folds("icbhi")
    by_setting = [rate_part(model, root, c)["recordings"] for c in CANDIDATES]
    return cross_validate(by_setting, CANDIDATES, lambda r: folds.fold_of(r.split("_")[0]),
                          folds.k)  # fmt: skip


def cross_validate(
    by_setting: Sequence[Sequence[Mapping[str, Any]]],
    settings: Sequence[Mapping[str, Any]],
    fold_of: Any,
    k: int,
) -> dict[str, Any]:
    """Each fold judged with the setting chosen on the other folds; ``by_setting[i]``: every
    recording's row under ``settings[i]``."""
    held_out: list[dict[str, Any]] = []
    chosen = []
    for fold in range(k):
        inside = [[r for r in rows if fold_of(r["recording"]) == fold] for rows in by_setting]
        outside = [[r for r in rows if fold_of(r["recording"]) != fold] for rows in by_setting]
        best = max(range(len(settings)), key=lambda i: _choice_key(outside[i]))
        train = rate_summary(outside[best])
        chosen.append({"fold": fold, "setting": dict(settings[best]),
                       "train_not_assessable": train["not_assessable_share"],
                       "train_mae_bpm": train["rate_mae_bpm"]})  # fmt: skip
        held_out += [{**r, "fold": fold, "setting": best} for r in inside[best]]
    # ICBHI's recording name ends in its stethoscope (101_1b1_Al_sc_Meditron)
    groups = grouped(held_out, {"stethoscope": lambda r: r["recording"].rsplit("_", 1)[-1],
                                "age_band": lambda r: r["age_band"]})  # fmt: skip
    return {
        "held_out": rate_summary(held_out),
        "right_share": round(float(np.mean([_right(r) for r in held_out])), 3),
        "chosen": chosen,
        "groups": groups,
        "in_sample": [
            {"setting": c, **rate_summary(rows)}
            for c, rows in zip(settings, by_setting, strict=True)
        ],
        "recordings": held_out,
    }


def print_cv(result: Mapping[str, Any]) -> None:
    h = result["held_out"]
    print("cv: ICBHI train, patient-grouped 5-fold, each fold judged with the setting chosen "
          "on the others")  # fmt: skip
    print(f"  held out: not assessable {h['not_assessable_share']:.1%}, rate MAE "
          f"{h['rate_mae_bpm']} breaths/min (bias {h['rate_bias_bpm']}), within ±1 "
          f"{h['count_within_1_assessable']:.1%} "
          f"of assessable ({h['count_within_1_all']:.1%} of all), counted right "
          f"{result['right_share']:.1%}")  # fmt: skip
    for c in result["chosen"]:
        print(f"  fold {c['fold']}: {c['setting']} (on its training patients: not assessable "
              f"{c['train_not_assessable']:.1%}, MAE {c['train_mae_bpm']})")  # fmt: skip
    for key, rows in result["groups"].items():
        for name, s in rows.items():
            print(f"  {key} {name:<20} n={s['recordings_n']:>3} not assessable "
                  f"{s['not_assessable_share']:.1%} MAE {s['rate_mae_bpm']} bias "
                  f"{s['rate_bias_bpm']} within ±1 {s['count_within_1_assessable']}")  # fmt: skip
    for s in result["in_sample"]:
        print(f"  in sample {s['setting']}: not assessable {s['not_assessable_share']:.1%} "
              f"MAE {s['rate_mae_bpm']} within ±1 {s['count_within_1_assessable']}")  # fmt: skip


def print_rate(result: Mapping[str, Any]) -> None:
    print("rate: ICBHI train through the device path, age bands from the demographics")
    print(f"  recordings {result['recordings_n']}, not assessable "
          f"{result['not_assessable_share']:.1%}")  # fmt: skip
    print(f"  rate MAE {result['rate_mae_bpm']} breaths/min over the assessable ones (bias "
          f"{result['rate_bias_bpm']}, median "
          f"{result['rate_median_error_bpm']}); against the period reference "
          f"{result['rate_vs_period_mae_bpm']}; the median of the live readings "
          f"{result['live_median_mae_bpm']}")  # fmt: skip
    print(f"  breaths counted within ±1 of the cycles: {result['count_within_1_assessable']:.1%}"
          f" of assessable recordings, {result['count_within_1_all']:.1%} of all")  # fmt: skip


def apnoea_part(model: Path, root: Path, apnoea_s: float = 20.0) -> dict[str, Any]:
    """The ``apnoea`` part's splices, per ICBHI patient (docs/respiration.md, "Apnoea")."""
    ages = icbhi_ages(root)
    monitor = Monitor.load(model)
    rate_hz = monitor.sample_rate_hz
    streams = patient_streams(root, rate_hz)
    bands = {p: band_for_age(ages[p]).name for p in streams}
    result: dict[str, Any] = {}
    for kind in SPLICES:
        spliced = {p: splice(a, kind, SPLICE_AT_S, SPLICE_S, rate_hz, int(p))
                   for p, a in streams.items()}  # fmt: skip
        found, _, states = stream_events(monitor, spliced, bands)
        rows = [_splice_outcome(p, kind, found[p], states[p], apnoea_s) for p in sorted(found)]
        armed = [r for r in rows if r["armed"]]
        result[kind] = {"patients": rows, "ok": sum(r["ok"] for r in rows), "of": len(rows),
                        "armed": len(armed), "ok_armed": sum(r["ok"] for r in armed)}  # fmt: skip
    monitor.close()
    return result


def _splice_outcome(
    patient: str, kind: str, events: Events, states: Readings, apnoea_s: float
) -> dict[str, Any]:
    """One patient's splice: when apnoea / breath_signal_lost came, when the apnoea's
    condition ended, and whether that is what a ward expects."""
    apnoea = onsets(events, "apnoea")
    lost = onsets(events, "breath_signal_lost")
    first = apnoea[0][0] if apnoea else None
    cleared = next((when for when, e in events if e.type == "apnoea" and
                    (e.latched or e.state == "ended")), None)  # fmt: skip
    end = SPLICE_AT_S + SPLICE_S
    if kind in ("quiet", "noise"):
        in_time = first is not None and SPLICE_AT_S < first <= SPLICE_AT_S + apnoea_s + 2.0
        ok = in_time and len(apnoea) == 1 and cleared is not None and end < cleared <= end + 10.0
    else:
        ok = not apnoea and any(SPLICE_AT_S < when <= end for when, _ in lost)
    # armed: the rate was assessable shortly before the pause (edge.bed.breathing_alarms)
    armed = any(SPLICE_AT_S - ARM_HOLD_S <= when <= SPLICE_AT_S and state == "ok"
                for when, state in states)  # fmt: skip
    return {"patient": patient, "ok": ok, "armed": armed, "apnoea_at_s": first,
            "apnoea_onsets": len(apnoea), "cleared_at_s": cleared,
            "signal_lost_at_s": lost[0][0] if lost else None}  # fmt: skip


def print_apnoea(result: Mapping[str, Any]) -> None:
    print(f"apnoea: {SPLICE_S:.0f} s spliced at {SPLICE_AT_S:.0f} s into each ICBHI patient's "
          "recordings (back to back, at least 2 min)")  # fmt: skip
    for kind, r in result.items():
        want = "apnoea in time, cleared" if kind in ("quiet", "noise") else "lost signal, no apnoea"
        missed = [x["patient"] + ("" if x["armed"] else "*") for x in r["patients"] if not x["ok"]]
        print(f"  {kind:<9} {r['ok']:>3} of {r['of']} as expected ({want}); of the {r['armed']} "
              f"whose rate was assessable before: {r['ok_armed']}; not: "
              f"{', '.join(missed) or '-'} (*: not assessable before)")  # fmt: skip


def false_part(model: Path, data: Path) -> dict[str, Any]:
    """Every real recording back to back, one bed per data set and age band: apnoea onsets
    (and breath_signal_lost onsets) per hour (docs/respiration.md, "False apnoea")."""
    ages = icbhi_ages(data / "icbhi")
    groups: dict[str, list[Path]] = collections.defaultdict(list)
    for flac in sorted((data / "icbhi" / "train").glob("*.flac")):
        groups[f"icbhi:{band_for_age(ages[flac.stem.split('_')[0]]).name}"].append(flac)
    for part in ("train", "intra_test"):
        for flac in sorted((data / "sprsound" / part).glob("*.flac")):
            age = age_from_sprsound_name(flac.stem)
            band = band_for_age(age).name if age is not None else "adult"
            groups[f"sprsound:{band}"].append(flac)
    monitor = Monitor.load(model)
    rate_hz = monitor.sample_rate_hz
    streams = {name: (read_audio(f, target_rate_hz=rate_hz).samples for f in files)
               for name, files in groups.items()}  # fmt: skip
    bands = {name: name.split(":")[1] for name in groups}
    found, beds, _ = stream_events(monitor, streams, bands)
    monitor.close()
    rows: list[dict[str, Any]] = []
    for name in sorted(groups):
        lost = len(onsets(found[name], "breath_signal_lost"))
        hours_here = round(beds[name].samples / rate_hz / 3600.0, 3)
        apnoea_here = len(onsets(found[name], "apnoea"))
        rows.append({"stream": name, "recordings": len(groups[name]), "hours": hours_here,
                     "apnoea": apnoea_here, "breath_signal_lost": lost})  # fmt: skip
    hours = float(sum(r["hours"] for r in rows))
    apnoea = int(sum(r["apnoea"] for r in rows))
    return {"streams": rows, "hours": round(hours, 2), "apnoea": apnoea,
            "apnoea_per_hour": round(apnoea / hours, 3) if hours else None}  # fmt: skip


def print_false(result: Mapping[str, Any]) -> None:
    print("false: every real recording back to back, one bed per data set and age band")
    for r in result["streams"]:
        print(f"  {r['stream']:<30} {r['recordings']:>5} recordings {r['hours']:>6.2f} h  "
              f"apnoea {r['apnoea']}  breath_signal_lost {r['breath_signal_lost']}")  # fmt: skip
    print(f"  {result['hours']} h: {result['apnoea']} apnoea alarms, "
          f"{result['apnoea_per_hour']} per hour")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch respiration", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/sed"), help="model folder")
    parser.add_argument("--parts", default="rate,apnoea,false",
                        help=f"which parts, comma separated ({', '.join(PARTS)})")  # fmt: skip
    parser.add_argument("--out", type=Path, help="everything as JSON here")
    args = parser.parse_args(argv)
    parts = parser.names("--parts", args.parts, PARTS)
    from edge.monitor import resolve_model

    folder, file = resolve_model(args.model)  # a bad model is named before anything runs
    model = folder / file
    data = data_root()
    if set(parts) - {"synthetic", "started"} and not (data / "icbhi" / "train").is_dir():
        parser.error(f"{data / 'icbhi' / 'train'}: no ICBHI recordings (set LUNGWATCH_DATA_DIR)")
    result: dict[str, Any] = {}
    runs = {"rate": (rate_part, print_rate), "cv": (cv_part, print_cv),
            "apnoea": (apnoea_part, print_apnoea), "false": (false_part, print_false),
            "synthetic": (lambda m, _: synthetic_part(m), print_synthetic),
            "stretched": (stretched_part, print_stretched),
            "started": (lambda m, _: synthetic_part(m, started=True), print_started)}  # fmt: skip
    for part in parts:
        run, show = runs[part]
        result[part] = run(model, data if part == "false" else data / "icbhi")
        show(result[part])
        sys.stdout.flush()
    if args.out is not None:
        write_json(args.out, result)
    print(" ".join(f"{k}={v}" for k, v in headline(result).items()))
    return 0


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "rate" in result:
        r = result["rate"]
        out.update(not_assessable=r["not_assessable_share"], rate_mae_bpm=r["rate_mae_bpm"],
                   count_within_1_assessable=r["count_within_1_assessable"],
                   count_within_1_all=r["count_within_1_all"])  # fmt: skip
    if "cv" in result:
        h = result["cv"]["held_out"]
        out.update(cv_not_assessable=h["not_assessable_share"], cv_rate_mae_bpm=h["rate_mae_bpm"],
                   cv_count_within_1_assessable=h["count_within_1_assessable"],
                   cv_right=result["cv"]["right_share"])  # fmt: skip
    if "synthetic" in result:
        r = result["synthetic"]
        out.update(synthetic_not_assessable=r["not_assessable_share"],
                   synthetic_rate_mae_bpm=r["rate_mae_bpm"],
                   synthetic_rate_bias_bpm=r["rate_bias_bpm"])  # fmt: skip
    if "started" in result:
        r = result["started"]
        out.update(started_not_assessable=r["not_assessable_share"],
                   started_rate_bias_bpm=r["rate_bias_bpm"],
                   started_paced_bias_bpm=r["rate_vs_period_bias_bpm"])  # fmt: skip
    if "stretched" in result:
        for factor, r in result["stretched"]["groups"]["factor"].items():
            out[f"stretched_{factor}_mae_bpm"] = r["rate_mae_bpm"]
            out[f"stretched_{factor}_bias_bpm"] = r["rate_bias_bpm"]
    if "apnoea" in result:
        out.update({f"splice_{k}": f"{v['ok']}/{v['of']}" for k, v in result["apnoea"].items()})
        out.update({f"splice_{k}_assessable": f"{v['ok_armed']}/{v['armed']}"
                    for k, v in result["apnoea"].items()})  # fmt: skip
    if "false" in result:
        out.update(false_apnoea_per_hour=result["false"]["apnoea_per_hour"],
                   false_hours=result["false"]["hours"])  # fmt: skip
    return out
