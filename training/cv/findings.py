"""``lungwatch cv findings``: the finding episodes' rules, fitted and judged on new recordings.
Patient-grouped folds see new *patients*, not new *recordings*: a rule fitted out of fold to 10
false events per hour raised 2 to 6 times that on new recordings, so the recurrence rules of
:mod:`edge.bed.findings` and their family threshold are fitted through the device path on half
of SPRSound ``intra_test``'s patients (:func:`halves`) and judged on the other half
(docs/training.md, "Commands")."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.bed.detector import DetectorConfig
from edge.bed.findings import HELD_FAMILIES, FindingConfig, RecurrenceRule, kept_events
from lungwatch.labels import FAMILY_CLASSES

HELD_CLASSES = (*HELD_FAMILIES["CAS"], *HELD_FAMILIES["DAS"])  # Stridor is never held
THRESHOLDS = (0.65, 0.7, 0.75, 0.8, 0.85)
EVENTS = (1, 2, 3)
WITHIN_S = (3.0, 5.0, 8.0)
RULES = [(1, 0.0)] + [(m, w) for m in EVENTS if m > 1 for w in WITHIN_S]  # (events, within_s)
DEFAULT_BUDGET = 4.0  # false events per hour per family on the fitting half's clean patients
Events = dict[str, list[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Truth:
    labels: dict[str, str]
    refs: dict[str, list[tuple[float, float, str]]]
    durations: dict[str, float]

    @classmethod
    def load(cls, folder: Path) -> Truth:
        import soundfile as sf

        from training.data.sprsound import load_sprsound

        records = load_sprsound(folder)
        labels = {r.record_id: r.record_label for r in records}
        durations = {r.record_id: sf.info(r.audio_path).duration for r in records}
        return cls(labels, {r.record_id: r.events_s for r in records}, durations)

    @property
    def sick(self) -> set[str]:
        findings = ("CAS", "DAS", "CAS & DAS")
        return {patient(r) for r, label in self.labels.items() if label in findings}

    def clean(self, records: Iterable[str]) -> list[str]:
        """The Normal records of ``records`` whose patients have no finding anywhere."""
        sick = self.sick
        return [r for r in records if self.labels[r] == "Normal" and patient(r) not in sick]


@dataclasses.dataclass(frozen=True)
class Run:
    """Every event of some recordings at one family threshold; a rate None: not assessable."""

    events: Events
    truth: Truth
    rates: dict[str, float | None] = dataclasses.field(default_factory=dict)


def patient(record: str) -> str:
    return record.split("_")[0]


def halves(records: Iterable[str], sick: set[str]) -> dict[str, int]:
    """Record -> 0 (fitting) or 1 (judging): patients by the SHA-256 of their id, alternating
    within the patients with a finding and within those without."""
    patients = sorted({patient(r) for r in records})
    order = sorted(patients, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    half: dict[str, int] = {}
    for group in ([p for p in order if p in sick], [p for p in order if p not in sick]):
        for i, p in enumerate(group):
            half[p] = i % 2
    return {r: half[patient(r)] for r in records}


def events_only(threshold: float) -> DetectorConfig:
    from edge.bed.rules import ClassThreshold

    rules = tuple(ClassThreshold(t, threshold) for t in HELD_CLASSES)
    return DetectorConfig(thresholds=rules, findings=FindingConfig(enabled=False))


def raw_events(folder: Path, model: Path, threshold: float, truth: Truth) -> Run:
    """Events (no finding episodes) of ``folder``, device path, CAS and DAS at ``threshold``."""
    from edge.monitor import resolve_model
    from edge.runtime.offline import detect_recordings, recordings_in

    folder_, file = resolve_model(model)
    found = detect_recordings(
        recordings_in([folder]), folder_, file, detector=events_only(threshold)
    )
    rates = {n: (r.respiration or {}).get("rate_bpm") for n, r in found.items()}
    return Run({n: r.physiological for n, r in found.items()}, truth, rates)


def oof_events(design: Path, model: Path, threshold: float) -> Run:
    """As :func:`raw_events` for SPRSound ``train``, each record from its own fold's models of
    ``design`` (each seed's a record of its own), through the device's detector, no quality gate."""
    from edge.bed.chain import resolve_detector
    from edge.bed.detector import detect_events
    from edge.inference.manifest import load_manifest
    from edge.monitor import resolve_model
    from training.cv.oof import load_truth, oof_outputs
    from training.recipe.fit import manifest_grid

    folder, _ = resolve_model(model)
    manifest = load_manifest(folder / "manifest.json")
    config = resolve_detector(events_only(threshold), manifest)
    grid = manifest_grid(manifest)
    truth = load_truth()
    events: Events = {}
    refs, labels, durations = {}, {}, {}
    for seed, probs in oof_outputs(design, truth).items():
        for record, p in probs.items():
            name = f"{record}#{seed}"
            found = detect_events(p, manifest.outputs, config, grid)
            rate = grid.sample_rate_hz
            events[name] = [
                {"start_s": e.start_sample / rate, "end_s": e.end_sample / rate, "type": e.type}
                for e in found
            ]
            refs[name], labels[name] = truth.annotated[record], truth.labels[record]
            durations[name] = truth.durations[record]
    return Run(events, Truth(labels, refs, durations))


def family_of(event_type: str) -> str | None:
    """The family an event is scored in (Stridor in CAS, kept whatever the rule)."""
    return next((f for f, types in FAMILY_CLASSES.items() if event_type in types), None)


def rule_of(row: Mapping[str, Any]) -> RecurrenceRule | None:
    if row["events"] == 1:
        return None
    return RecurrenceRule(events=int(row["events"]), within_s=float(row["within_s"]))


def apply(
    events: Events, family: str, rule: RecurrenceRule | None
) -> tuple[Events, list[dict[str, Any]]]:
    """One family's events kept by ``rule`` (None: all), and its episodes."""
    config = FindingConfig(cas=rule, das=rule, enabled=rule is not None)
    out: Events = {}
    episodes: list[dict[str, Any]] = []
    for record, items in events.items():
        mine = [e for e in items if family_of(str(e["type"])) == family]
        kept, eps = kept_events(mine, config)
        out[record] = [dict(e) for e in kept]
        episodes += [{**e, "record": record} for e in eps]
    return out, episodes


def score(events: Events, truth: Truth, records: Sequence[str], family: str) -> dict[str, float]:
    """Event F1 / P / R (sed_eval, the yardstick's collars), false events per hour on clean
    patients' Normal records, and record presence SE / SP of one family over ``records``."""
    from training.scoring.detection import has_family, score_view

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = {
            r: [(e["start_s"], e["end_s"], e["type"]) for e in events.get(r, [])] for r in records
        }
        view = score_view(predicted, {r: truth.refs[r] for r in records}, "family")
    clean = truth.clean(records)
    hours = sum(truth.durations[r] for r in clean) / 3600.0
    false = sum(len(events.get(r, [])) for r in clean)
    good = [r for r in records if truth.labels[r] != "Poor Quality"]
    has = [has_family(truth.refs[r], family) for r in good]
    said = [bool(events.get(r)) for r in good]
    pos, neg = sum(has), len(good) - sum(has)
    return {
        "f1": view.class_event_f1[family],
        "precision": view.class_event_precision[family],
        "recall": view.class_event_recall[family],
        "fa_clean_per_hour": false / hours if hours else 0.0,
        "false_events": float(false),
        "clean_hours": hours,
        "presence_se": sum(h and s for h, s in zip(has, said, strict=True)) / max(pos, 1),
        "presence_sp": sum(not h and not s for h, s in zip(has, said, strict=True)) / max(neg, 1),
    }


def latency(
    episodes: Sequence[Mapping[str, Any]], rates: Mapping[str, float | None]
) -> dict[str, float]:
    """Mean time from an episode's first event to its opening, in s and in breaths (where known)."""
    if not episodes:
        return {"latency_s": 0.0, "latency_breaths": 0.0, "episodes": 0.0}
    seconds = [e["opened_s"] - e["first_event_s"] for e in episodes]
    breaths = [
        (e["opened_s"] - e["first_event_s"]) * rates[e["record"]] / 60.0
        for e in episodes
        if rates.get(e["record"])
    ]
    return {
        "latency_s": float(np.mean(seconds)),
        "latency_breaths": float(np.mean(breaths)) if breaths else float("nan"),
        "episodes": float(len(episodes)),
    }


def table(
    runs: Mapping[float, Run], half: Mapping[str, int], oof: Mapping[float, Run] | None = None
) -> list[dict[str, Any]]:
    """Every family x threshold x rule on both halves, and out of fold where ``oof`` has it."""
    parts = {k: [r for r, h in half.items() if h == k] for k in (0, 1)}
    rows = []
    for threshold, run in sorted(runs.items()):
        events, truth, rates = run.events, run.truth, run.rates
        for family in HELD_FAMILIES:
            for m, w in RULES:
                row: dict[str, Any] = {"family": family, "threshold": threshold}
                row |= {"events": m, "within_s": w}
                rule = rule_of(row)
                kept, episodes = apply(events, family, rule)
                for k, name in ((0, "fit"), (1, "judge")):
                    mine = [e for e in episodes if half[e["record"]] == k]
                    row[name] = score(kept, truth, parts[k], family) | latency(mine, rates)
                row["all"] = score(kept, truth, sorted(half), family)
                if oof is not None and threshold in oof:
                    held, _ = apply(oof[threshold].events, family, rule)
                    o_truth = oof[threshold].truth
                    row["oof"] = score(held, o_truth, sorted(o_truth.labels), family)
                    o, n = row["oof"]["fa_clean_per_hour"], row["fit"]["fa_clean_per_hour"]
                    row["ratio"] = n / o if o > 0 else float("nan")
                rows.append(row)
    return rows


def choose(rows: Sequence[Mapping[str, Any]], family: str, budget: float) -> Mapping[str, Any]:
    """Within ``budget`` false events per hour on the fitting half's clean patients (and OOF
    where known), the rule of best event F1 OOF where known (1,949 records outweigh half of
    ``intra_test``), else on the fitting half; ties: fewer false events, then higher threshold."""
    view = "oof" if any("oof" in r for r in rows) else "fit"

    def within(r: Mapping[str, Any]) -> bool:
        fits = r["fit"]["fa_clean_per_hour"] <= budget
        return fits and (view == "fit" or r["oof"]["fa_clean_per_hour"] <= budget)

    mine = [r for r in rows if r["family"] == family and view in r and within(r)]
    if not mine:
        raise ValueError(f"no {family} rule keeps {budget} false events per hour")
    return max(
        mine,
        key=lambda r: (round(r[view]["f1"], 4), -r["fit"]["fa_clean_per_hour"], r["threshold"]),
    )


def paired_false(
    before: Events, after: Events, truth: Truth, records: Sequence[str]
) -> tuple[float, float, float]:
    """False events per hour on the clean patients' Normal records of ``records``: after minus
    before, and its 95 % interval by 2,000 resamples of the patients (paired: the same ones)."""
    clean = truth.clean(records)
    patients = sorted({patient(r) for r in clean})
    if not patients:
        return 0.0, 0.0, 0.0
    idx = {p: i for i, p in enumerate(patients)}
    hours, b, a = np.zeros(len(patients)), np.zeros(len(patients)), np.zeros(len(patients))
    for r in clean:
        i = idx[patient(r)]
        hours[i] += truth.durations[r] / 3600.0
        b[i] += len(before.get(r, []))
        a[i] += len(after.get(r, []))
    draw = np.random.default_rng(0).integers(0, len(patients), (2000, len(patients)))
    diff = (a[draw].sum(1) - b[draw].sum(1)) / hours[draw].sum(1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float((a.sum() - b.sum()) / hours.sum()), float(lo), float(hi)


def line(row: Mapping[str, Any]) -> str:
    def part(name: str) -> str:
        s = row[name]
        lat = ""
        if "latency_s" in s:
            lat = f" opens {s['latency_s']:.1f} s / {s['latency_breaths']:.1f} breaths"
        return (
            f"{name}: F1 {s['f1']:.3f} fa_clean {s['fa_clean_per_hour']:.1f}/h "
            f"SE {s['presence_se']:.2f} SP {s['presence_sp']:.2f}{lat}"
        )

    rule = "every event" if row["events"] == 1 else f"{row['events']} within {row['within_s']:g} s"
    views = [n for n in ("fit", "judge", "all", "oof") if n in row]
    ratio = f" | new/OOF false-event ratio {row['ratio']:.2f}" if "ratio" in row else ""
    return (
        f"{row['family']} threshold {row['threshold']:.4f} {rule}: "
        + " | ".join(part(n) for n in views)
        + ratio
    )


def write_manifest(model: Path, chosen: Mapping[str, Mapping[str, Any]], note: str) -> None:
    """Into ``model``'s manifest: ``detector.findings`` and the held classes' on-thresholds."""
    path = model / "manifest.json"
    body = json.loads(path.read_text())
    detector = body["detector"]
    for rule in detector["thresholds"]:
        family = family_of(rule["type"])
        if family is not None and family in chosen and rule["type"] in HELD_CLASSES:
            on = float(chosen[family]["threshold"])
            span = rule["on_threshold"] - rule["off_threshold"]
            rule["on_threshold"], rule["off_threshold"] = round(on, 4), round(on - span, 4)
    detector["findings"] = {
        f: {"events": int(r["events"]), "within_s": float(r["within_s"])} for f, r in chosen.items()
    }
    detector["findings_fitted_on"] = note
    path.write_text(json.dumps(body, indent=2) + "\n")


def fitted_thresholds(model: Path) -> dict[str, float]:
    from edge.monitor import resolve_model

    body = json.loads((resolve_model(model)[0] / "manifest.json").read_text())
    return {
        str(family_of(r["type"])): round(float(r["on_threshold"]), 4)
        for r in body["detector"]["thresholds"]
        if r["type"] in HELD_CLASSES
    }


def today_rows(
    rows: Sequence[Mapping[str, Any]], fitted: Mapping[str, float]
) -> dict[str, Mapping[str, Any]]:
    """Per family, the every-event row at the candidate threshold nearest the ``fitted`` one."""
    out = {}
    for family in HELD_FAMILIES:
        mine = [r for r in rows if r["family"] == family and r["events"] == 1]
        out[family] = min(mine, key=lambda r: abs(r["threshold"] - fitted[family]))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", type=Path, help="the new recordings (default: SPRSound intra_test)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: models/sed)")
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="false events per hour per family allowed on the fitting half",
    )
    p.add_argument(
        "--oof",
        type=Path,
        help="a design folder with fold models' outputs (out/cv/NAME): the same rules "
        "out of fold on SPRSound train",
    )
    p.add_argument("--out", type=Path, help="the whole table as JSON")
    p.add_argument(
        "--write", action="store_true", help="write the chosen rules into the model's manifest"
    )


def findings_command(args: argparse.Namespace) -> int:
    from edge.datapaths import sprsound_root
    from edge.monitor import DEFAULT_MODEL

    folder = args.audio or sprsound_root() / "intra_test"
    model = args.model or DEFAULT_MODEL
    truth = Truth.load(folder)
    half = halves(truth.labels, truth.sick)
    fitted = fitted_thresholds(Path(model))
    thresholds = sorted(set(THRESHOLDS) | set(fitted.values()))
    runs = {t: raw_events(folder, model, t, truth) for t in thresholds}
    oof = None if args.oof is None else {t: oof_events(args.oof, model, t) for t in thresholds}
    rows = table(runs, half, oof)
    chosen = {}
    today = today_rows(rows, fitted)
    judging = [r for r, h in half.items() if h == 1]
    for family in HELD_FAMILIES:
        for r in rows:
            if r["family"] == family:
                print("  " + line(r))
        pick = chosen[family] = choose(rows, family, args.budget)
        print(f"today   {line(today[family])}")
        print(f"chosen  {line(pick)}")
        before, _ = apply(runs[today[family]["threshold"]].events, family, None)
        after, _ = apply(runs[pick["threshold"]].events, family, rule_of(pick))
        d, lo, hi = paired_false(before, after, truth, judging)
        print(
            f"  judging half, false events per hour on clean patients, chosen - today: "
            f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] (paired bootstrap over patients)"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        body = {"rows": rows, "chosen": chosen, "budget": args.budget, "half": half}
        args.out.write_text(json.dumps(body, indent=1) + "\n")
    if args.write:
        n = sum(1 for h in half.values() if h == 0)
        oof_note = "" if args.oof is None else f" and out of fold on SPRSound train ({args.oof})"
        view = "fitting half" if args.oof is None else "out-of-fold"
        write_manifest(
            Path(model),
            chosen,
            f"the fitting half of {folder.name} ({n} records, "
            f"patients by SHA-256){oof_note}: the best {view} event F1 within "
            f"{args.budget:g} false events per hour per family on both (lungwatch cv "
            "findings)",
        )
    return 0
