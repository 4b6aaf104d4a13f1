"""The decision layer judged out of fold (docs/training.md, "The decision layer, judged out of
fold"). A **rule** (:data:`RULES`) turns a record's frame outputs (n, O) into scored candidate
events per family. sed_scores_eval matches them to the annotations once for every threshold, per
record (:class:`RecordCounts`), so fitting, applying, pooling and bootstrapping are sums."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.bed.detector import DetectorConfig, FrameGrid
from edge.bed.rules import PhaseRule
from edge.bed.verdict import CAS_CLASSES
from lungwatch.errors import ConfigError
from lungwatch.labels import FAMILY_CLASSES, NORMAL, POOR_QUALITY
from training.cv.oof import Truth
from training.data.targets import OUTPUTS
from training.scoring.detection import SCORES_COLLARS, VIEWS
from training.scoring.threshold_free import disjoint, event_table, phase_events, view_events

FAMILIES = ("CAS", "DAS")
MAPPING = VIEWS["family"][0]
PHASE_RULE = PhaseRule(0.6, 0.5, 240.0, lead_ms=120.0)
PHASE_CONFIG = DetectorConfig(on_threshold=0.7, off_threshold=0.55, phases=PHASE_RULE)
BOXES_RULE = dataclasses.replace(PHASE_RULE, box_classes=CAS_CLASSES)
BOXES_CONFIG = dataclasses.replace(PHASE_CONFIG, phases=BOXES_RULE)
SECONDS_PER_HOUR = 3600.0
RULES = ("phase", "phase_boxes")

Table = tuple[np.ndarray, np.ndarray]  # (edges (S + 1,), scores (S, 2))


def rule_table(rule: str, probs: np.ndarray, duration_s: float, grid: FrameGrid) -> Table:
    configs = {"phase": PHASE_CONFIG, "phase_boxes": BOXES_CONFIG}
    if rule not in configs:
        raise ConfigError(f"decision rule {rule!r}: expected one of {RULES}")
    events = phase_events(probs, OUTPUTS, configs[rule], grid)
    return event_table(events, duration_s, MAPPING, list(FAMILIES))


def score_tables_of(
    probs: Mapping[str, np.ndarray], truth: Truth, rule: str, grid: FrameGrid
) -> dict[str, Table]:
    return {r: rule_table(rule, probs[r], truth.durations[r], grid) for r in truth.records}


@dataclass
class RecordCounts:
    """Per record and family: the change points of the matching statistics (scores, high to
    low) and the true / false positives gained as the threshold falls below each."""

    records: list[str]
    cps: dict[str, list[np.ndarray]]  # family -> per record
    dtp: dict[str, list[np.ndarray]]
    dfp: dict[str, list[np.ndarray]]
    n_ref: dict[str, np.ndarray]  # family -> (R,) annotated events
    max_score: dict[str, np.ndarray]  # family -> (R,) the record's highest score

    @classmethod
    def of(cls, tables: Mapping[str, Table], truth: Truth) -> RecordCounts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            from sed_scores_eval.base_modules.scores import create_score_dataframe
            from sed_scores_eval.collar_based.intermediate_statistics import (
                intermediate_statistics_deltas,
            )
        records = truth.records
        gt = {r: disjoint(view_events(truth.annotated[r], MAPPING)) for r in records}
        scores = {
            r: create_score_dataframe(tables[r][1], tables[r][0], list(FAMILIES)) for r in records
        }
        deltas = intermediate_statistics_deltas(scores, gt, **SCORES_COLLARS)
        cps, dtp, dfp = (  # per family, per record: change points, tp and fp deltas
            {f: [np.asarray(get(deltas[r][f]), np.float64) for r in records] for f in FAMILIES}
            for get in (lambda d: d[0], lambda d: d[1]["tps"], lambda d: d[1]["fps"])
        )
        n_ref = {
            f: np.array([sum(1 for *_, lab in gt[r] if lab == f) for r in records])
            for f in FAMILIES
        }
        top = {
            f: np.array([float(tables[r][1][:, i].max(initial=0.0)) for r in records])
            for i, f in enumerate(FAMILIES)
        }
        return cls(list(records), cps, dtp, dfp, n_ref, top)

    def at(
        self, family: str, threshold: float, rows: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tp, fp) per record of ``rows``; an event is raised where its score >= threshold."""
        tp = np.array([self.dtp[family][i][self.cps[family][i] >= threshold].sum() for i in rows])
        fp = np.array([self.dfp[family][i][self.cps[family][i] >= threshold].sum() for i in rows])
        return tp, fp

    def curve(self, family: str, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds high to low, TP, FP) summed over ``rows`` at every change point."""
        cp = np.concatenate([self.cps[family][i] for i in rows] or [np.zeros(0)])
        tp = np.concatenate([self.dtp[family][i] for i in rows] or [np.zeros(0)])
        fp = np.concatenate([self.dfp[family][i] for i in rows] or [np.zeros(0)])
        finite = np.isfinite(cp)
        cp, tp, fp = cp[finite], tp[finite], fp[finite]
        order = np.argsort(-cp, kind="stable")
        cp, tp, fp = cp[order], np.cumsum(tp[order]), np.cumsum(fp[order])
        last = np.r_[cp[1:] != cp[:-1], True] if len(cp) else np.zeros(0, bool)
        return cp[last], tp[last], fp[last]


def f1(tp: float, fp: float, n_ref: float) -> float:
    return 2 * tp / (2 * tp + fp + (n_ref - tp)) if (2 * tp + fp + n_ref - tp) > 0 else 0.0


@dataclass
class Fitted:
    """A family's threshold fitted on some records, with what it gave there."""

    threshold: float
    f1: float
    false_per_hour: float


def fit_thresholds(
    counts: RecordCounts, truth: Truth, rows: Sequence[int], budget_per_hour: float
) -> dict[str, Fitted]:
    """Per family, the threshold of the best event F1 over ``rows`` whose false events on the
    Normal records among them stay within ``budget_per_hour``."""
    normal = [i for i in rows if truth.labels[counts.records[i]] == NORMAL]
    hours = sum(truth.durations[counts.records[i]] for i in normal) / SECONDS_PER_HOUR
    out = {}
    for f in FAMILIES:
        cp, tp, fp = counts.curve(f, rows)
        ncp, _, nfp = counts.curve(f, normal)
        # false events on Normal records at each candidate threshold (nfp steps at ncp)
        idx = np.searchsorted(-ncp, -cp, side="right") - 1
        false = np.where(idx >= 0, nfp[np.clip(idx, 0, None)] if len(nfp) else 0.0, 0.0)
        rate = false / max(hours, 1e-9)
        n_ref = float(counts.n_ref[f][list(rows)].sum())
        scores = np.array([f1(a, b, n_ref) for a, b in zip(tp, fp, strict=True)])
        ok = rate <= budget_per_hour
        if ok.any():
            best = int(np.argmax(np.where(ok, scores, -1.0)))
            out[f] = Fitted(float(cp[best]), float(scores[best]), float(rate[best]))
        else:  # nothing within budget: never raise
            out[f] = Fitted(float("inf"), 0.0, 0.0)
    return out


@dataclass
class CrossFit:
    """Held-out counts of a cross-fitted decision (one row per record, in ``counts`` order)."""

    thresholds: dict[int, dict[str, Fitted]]  # fold -> family -> fitted on the other folds
    tp: dict[str, np.ndarray]
    fp: dict[str, np.ndarray]
    n_ref: dict[str, np.ndarray]
    raised: dict[str, np.ndarray]  # the record has an event of the family
    fold_rates: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (fit, held)


def cross_fit(counts: RecordCounts, truth: Truth, budget_per_hour: float) -> CrossFit:
    folds = sorted({truth.folds[r] for r in counts.records})
    rows_of = {k: [i for i, r in enumerate(counts.records) if truth.folds[r] == k] for k in folds}
    tp = {f: np.zeros(len(counts.records)) for f in FAMILIES}
    fp = {f: np.zeros(len(counts.records)) for f in FAMILIES}
    raised = {f: np.zeros(len(counts.records), bool) for f in FAMILIES}
    thresholds: dict[int, dict[str, Fitted]] = {}
    rates: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
    for k in folds:
        fitting = [i for kk in folds if kk != k for i in rows_of[kk]]
        fitted = thresholds[k] = fit_thresholds(counts, truth, fitting, budget_per_hour)
        held = rows_of[k]
        normal = [i for i in held if truth.labels[counts.records[i]] == NORMAL]
        hours = sum(truth.durations[counts.records[i]] for i in normal) / SECONDS_PER_HOUR
        for f in FAMILIES:
            tp[f][held], fp[f][held] = counts.at(f, fitted[f].threshold, held)
            raised[f][held] = counts.max_score[f][held] >= fitted[f].threshold
            _, nb = counts.at(f, fitted[f].threshold, normal)
            rates[f].append((fitted[f].false_per_hour, float(nb.sum()) / max(hours, 1e-9)))
    return CrossFit(thresholds, tp, fp, dict(counts.n_ref), raised, rates)


def summary(cf: CrossFit, truth: Truth, records: Sequence[str]) -> dict[str, float]:
    """Pooled held-out figures of a cross-fit over every record."""
    rows = list(range(len(records)))
    normal = [i for i in rows if truth.labels[records[i]] == NORMAL]
    good = [i for i in rows if truth.labels[records[i]] != POOR_QUALITY]
    hours = sum(truth.durations[records[i]] for i in normal) / SECONDS_PER_HOUR
    out: dict[str, float] = {}
    for f in FAMILIES:
        key = f.lower()
        tp, fp, n = cf.tp[f][rows].sum(), cf.fp[f][rows].sum(), cf.n_ref[f][rows].sum()
        has = np.array([cf.n_ref[f][i] > 0 for i in good])
        called = cf.raised[f][good]
        fit_rate = np.mean([a for a, _ in cf.fold_rates[f]]) if cf.fold_rates.get(f) else 0.0
        held_rate = float(cf.fp[f][normal].sum()) / max(hours, 1e-9)
        out |= {
            f"f1_{key}": f1(tp, fp, n),
            f"precision_{key}": tp / max(tp + fp, 1e-9),
            f"recall_{key}": tp / max(n, 1e-9),
            f"fa_per_hour_{key}": held_rate,
            f"fitted_fa_per_hour_{key}": float(fit_rate),
            f"fa_ratio_{key}": held_rate / fit_rate if fit_rate > 0 else float("nan"),
            f"se_{key}": float((has & called).sum() / max(has.sum(), 1)),
            f"sp_{key}": float((~has & ~called).sum() / max((~has).sum(), 1)),
        }
    out["macro_f1"] = float(np.mean([out[f"f1_{f.lower()}"] for f in FAMILIES]))
    return out


def presence_at_specificity(
    counts: RecordCounts, truth: Truth, specificity: float = 0.95
) -> dict[str, float]:
    """Record presence, cross-fitted: per fold, the lowest record-score threshold reaching
    ``specificity`` on the other folds' good records without the family; pooled SE and SP."""
    recs = counts.records
    folds = sorted({truth.folds[r] for r in recs})
    good = np.array([truth.labels[r] != POOR_QUALITY for r in recs])
    fold = np.array([truth.folds[r] for r in recs])
    out = {}
    for f in FAMILIES:
        has = counts.n_ref[f] > 0
        score = counts.max_score[f]
        called = np.zeros(len(recs), bool)
        for k in folds:
            neg = good & ~has & (fold != k)
            t = float(np.quantile(score[neg], specificity, method="higher")) if neg.any() else 1.0
            t = np.nextafter(t, np.inf)  # strictly above the quantile's record
            held = fold == k
            called[held] = score[held] >= t
        pos, negs = good & has, good & ~has
        out[f"se_at_sp{int(specificity * 100)}_{f.lower()}"] = float(called[pos].mean())
        out[f"sp_at_sp{int(specificity * 100)}_{f.lower()}"] = float((~called[negs]).mean())
    return out


def merged(seeds: Sequence[RecordCounts], truth: Truth) -> tuple[RecordCounts, Truth]:
    """Seeds' counts as one set of records ``<record>#<i>``, each in its record's fold: a
    threshold fitted on it serves the recipe, not one seed's network."""
    records = [f"{r}#{i}" for i in range(len(seeds)) for r in seeds[i].records]
    cat = {f: [x for c in seeds for x in c.cps[f]] for f in FAMILIES}
    tp = {f: [x for c in seeds for x in c.dtp[f]] for f in FAMILIES}
    fp = {f: [x for c in seeds for x in c.dfp[f]] for f in FAMILIES}
    n_ref = {f: np.concatenate([c.n_ref[f] for c in seeds]) for f in FAMILIES}
    top = {f: np.concatenate([c.max_score[f] for c in seeds]) for f in FAMILIES}

    def base(r: str) -> str:
        return r.rsplit("#", 1)[0]

    fields = ("annotated", "labels", "durations", "patients", "folds")
    big = Truth(records, *({r: getattr(truth, k)[base(r)] for r in records} for k in fields))
    return RecordCounts(records, cat, tp, fp, n_ref, top), big


def detector_section(
    fitted: Mapping[str, Fitted],
    design: str,
    n_records: int,
    seeds: int,
    budget: float,
    oof: Mapping[str, float],
    rule: PhaseRule = PHASE_RULE,
) -> dict[str, object]:
    """The manifest's ``detector`` section; ``rule``: :data:`BOXES_RULE` for ``phase_boxes``."""
    rules = []
    for family, classes in FAMILY_CLASSES.items():
        on = fitted[family].threshold
        if not np.isfinite(on):
            raise ConfigError(
                f"{design}: no {family} threshold within {budget} false events per hour"
            )
        on = float(min(max(on, 0.06), 0.99))
        limits = {"on_threshold": round(on, 4), "off_threshold": round(max(0.05, on - 0.15), 4)}
        rules += [
            {"type": c, **limits, "min_event_ms": 120.0, "merge_gap_ms": 120.0} for c in classes
        ]
    return {
        "thresholds": rules,
        "phases": {
            **dataclasses.asdict(rule),
            "frame_classes": list(rule.frame_classes),
            "box_classes": list(rule.box_classes),
        },
        "fitted_on": f"out-of-fold outputs of the design {design!r}: {n_records} SPRSound train "
        f"records, {seeds} seed(s), patient-grouped 5-fold (training/cv/folds); one threshold "
        f"per family",
        "limits": {"max_false_per_hour": budget},
        "validation": dict(oof),
    }
