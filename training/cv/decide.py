"""The decision layer judged out of fold: from frame outputs to events, one threshold per family.

    tables = score_tables_of(probs, truth, "phase", grid)         # {record: (edges, (S, 2))}
    counts = RecordCounts.of(tables, truth)                         # per record, every threshold
    fitted = cross_fit(counts, truth, budget_per_hour=10.0)        # thresholds of 4 folds -> 5th

A **rule** turns a record's frame outputs (n, O) into scored candidate events in the family
view (CAS, DAS); an event is raised when its score reaches its family's threshold:

- ``phase``: the device's phase rule (:class:`edge.bed.detector.PhaseRule`, the recipe's
  Breath hysteresis 0.6 / 0.5, 240 ms, a 120-ms lead): each breath phase scores, per class,
  the highest running mean of the class output over it (the device's decision statistic,
  :func:`training.scoring.threshold_free.phase_events`); a family takes the highest of its
  classes;
- ``phase_relative``: the same on outputs measured against the bed's own recent past: each
  class output minus its causal running mean over the bed's last ``RELATIVE_WINDOW_S``
  (clipped at 0), the way the front end's band normalisation treats the input: a bed whose
  normal breathing runs high is judged against that level;
- ``frames``: the bare outputs, an event wherever the family's highest output stays at or
  above the threshold (the device's per-class hysteresis without its off-threshold and
  minimum duration);
- ``boxes``: change-point boxes on the family's highest output, after the sound event
  bounding boxes of Ebbers et al. (Interspeech 2024, arXiv 2406.04212): a step filter (the
  mean over the next ``BOX_FILTER_S / 2`` minus the mean over the last) rises where an event
  starts and falls where it ends; each rise's peak opens a box, the next fall's trough closes
  it, neighbours whose gap never drops below half the lower of their peaks become one box, and
  a box scores its highest output (:func:`change_boxes`). Events get their own edges instead
  of the breath phase's;
- ``phase_boxes``: the device's phase rule with the CAS classes cut on their own change-point
  boxes (``PhaseRule.box_classes``, the streaming form of ``boxes`` per class in
  :mod:`edge.bed.detector`), each box scored by its peak; the DAS classes on phases.

The candidates of every record are matched against the annotations once, for every threshold
at the same time, by sed_scores_eval (collar-based, the collars of
:mod:`training.scoring.detection`, which reproduce sed_eval's event-based matching), kept per
record (:class:`RecordCounts`); fitting, applying, pooling and bootstrapping are then sums.

**Fitting** (:func:`fit_thresholds`): per family, the threshold of the best event F1 among
those whose false events on the fitting records labelled Normal stay within the budget (per
hour). **Cross-fitting** (:func:`cross_fit`): fold ``k``'s thresholds are fitted on the other
folds' records and applied to fold ``k``; the pooled held-out counts are the design's OOF
figure at the ward's operating point, and each fold's held-out false-event rate over the rate
it was fitted to is the false-event ratio: how far a rule fitted on some patients moves on
new ones.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.bed.detector import DetectorConfig, FrameGrid
from edge.bed.rules import PhaseRule
from edge.bed.verdict import CAS_CLASSES, DAS_CLASSES
from lungwatch.errors import ConfigError
from lungwatch.labels import NORMAL, POOR_QUALITY
from training.cv.oof import Truth
from training.data.targets import OUTPUTS
from training.scoring.detection import OFFSET_SHARE, ONSET_COLLAR_S, VIEWS
from training.scoring.threshold_free import (
    disjoint,
    event_table,
    frame_table,
    phase_events,
    view_events,
)

FAMILIES = ("CAS", "DAS")
MAPPING = VIEWS["family"][0]
PHASE_RULE = PhaseRule(0.6, 0.5, 240.0, lead_ms=120.0)
PHASE_CONFIG = DetectorConfig(on_threshold=0.7, off_threshold=0.55, phases=PHASE_RULE)
BOXES_RULE = dataclasses.replace(PHASE_RULE, box_classes=CAS_CLASSES)
BOXES_CONFIG = dataclasses.replace(PHASE_CONFIG, phases=BOXES_RULE)
RELATIVE_WINDOW_S = 30.0
SECONDS_PER_HOUR = 3600.0
# the boxes rule's step filter (seconds, two halves) and merge share, the device's defaults:
# neighbouring boxes merge where their gap stays above BOX_MERGE x the lower peak
BOX_FILTER_S = BOXES_RULE.box_filter_ms / 1000.0
BOX_MERGE = BOXES_RULE.box_merge
RULES = (
    "phase", "phase_relative", "frames", "boxes", "phase_boxes", "phase_calibrated",
)  # fmt: skip

Table = tuple[np.ndarray, np.ndarray]  # (edges (S + 1,), scores (S, 2))


def relative(probs: np.ndarray, grid: FrameGrid, window_s: float = RELATIVE_WINDOW_S) -> np.ndarray:
    """Class outputs minus their causal running mean over the last ``window_s`` (the bed's own
    level; frames before the current one only), clipped at 0; Breath and quality untouched."""
    p = np.asarray(probs, np.float64)
    out = p.copy()
    n = p.shape[0]
    width = max(1, round(window_s * grid.sample_rate_hz / grid.frame_samples))
    classes = [i for i, name in enumerate(OUTPUTS) if name in MAPPING]
    cum = np.vstack([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
    idx = np.arange(n)
    lo = np.maximum(0, idx - width)
    count = np.maximum(idx - lo, 1)
    past_mean = (cum[idx] - cum[lo]) / count[:, None]  # frames lo..idx-1
    past_mean[0] = 0.0
    out[:, classes] = np.clip(p[:, classes] - past_mean[:, classes], 0.0, 1.0)
    return out.astype(np.float32)


def change_boxes(
    score: np.ndarray, half: int, merge: float = BOX_MERGE
) -> list[tuple[int, int, float]]:
    """Boxes ``(first, end, peak)`` (frames, end exclusive) of one score sequence (module doc,
    ``boxes``); ``half``: frames in each half of the step filter."""
    n = len(score)
    if n == 0:
        return []
    total = np.r_[0.0, np.cumsum(np.r_[np.zeros(half), score, np.zeros(half)])]
    at = np.arange(n + 1) + half  # boundary b lies before frame b; outside the record scores 0
    step = (total[at + half] - 2 * total[at] + total[at - half]) / half
    inner = np.r_[-np.inf, step, -np.inf]
    # a flat extreme (an event shorter than a half) is its last boundary for a rise, its
    # first for a fall: the event's own edges
    rises = np.flatnonzero((step > 0) & (step >= inner[:-2]) & (step > inner[2:]))
    inner = np.r_[np.inf, step, np.inf]
    falls = np.flatnonzero((step < 0) & (step < inner[:-2]) & (step <= inner[2:]))
    extremes = sorted([(int(b), 1) for b in rises] + [(int(b), -1) for b in falls])
    kept: list[tuple[int, int]] = []  # alternating; of a run of one kind the strongest
    for b, kind in extremes:
        if kept and kept[-1][1] == kind:
            if abs(step[b]) > abs(step[kept[-1][0]]):
                kept[-1] = (b, kind)
        elif kept or kind == 1:
            kept.append((b, kind))
    boxes: list[list[float]] = []
    for (on, _), (off, _) in zip(kept[::2], kept[1::2], strict=False):
        if off <= on:
            continue
        peak = float(score[on:off].max())
        if boxes:
            last_on, last_off, last_peak = boxes[-1]
            gap = score[int(last_off) : on]
            if not len(gap) or gap.min() >= merge * min(last_peak, peak):
                boxes[-1] = [last_on, off, max(last_peak, peak)]
                continue
        boxes.append([on, off, peak])
    return [(int(a), int(b), float(c)) for a, b, c in boxes]


def box_events(probs: np.ndarray, grid: FrameGrid) -> list[tuple[float, float, str, float]]:
    """The ``boxes`` rule's scored events (seconds), one family at a time."""
    p = np.nan_to_num(np.asarray(probs, np.float64), nan=0.0)
    rate = float(grid.sample_rate_hz)
    frame_s = grid.frame_samples / rate
    half = max(1, round(BOX_FILTER_S / 2 / frame_s))
    out = []
    for family in FAMILIES:
        columns = [i for i, name in enumerate(OUTPUTS) if family in MAPPING.get(name, ())]
        score = p[:, columns].max(axis=1)
        for first, end, peak in change_boxes(score, half):
            start_s = (first * grid.frame_samples + grid.offset_samples) / rate
            out.append((start_s, start_s + (end - first) * frame_s, family, peak))
    return out


def rule_table(rule: str, probs: np.ndarray, duration_s: float, grid: FrameGrid) -> Table:
    """One record's family score table under ``rule`` (module doc), ``probs`` (n, O)."""
    classes = list(FAMILIES)
    if rule == "frames":
        return frame_table(probs, OUTPUTS, grid, duration_s, MAPPING, classes)
    if rule == "boxes":
        own = {f: (f,) for f in FAMILIES}
        return event_table(box_events(probs, grid), duration_s, own, classes)
    if rule == "phase":
        events = phase_events(probs, OUTPUTS, PHASE_CONFIG, grid)
    elif rule == "phase_boxes":
        events = phase_events(probs, OUTPUTS, BOXES_CONFIG, grid)
    elif rule == "phase_relative":
        events = phase_events(relative(probs, grid), OUTPUTS, PHASE_CONFIG, grid)
    else:
        raise ConfigError(f"decision rule {rule!r}: expected one of {RULES[:-1]}")
    return event_table(events, duration_s, MAPPING, classes)


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
        deltas = intermediate_statistics_deltas(
            scores,
            gt,
            onset_collar=ONSET_COLLAR_S,
            offset_collar=ONSET_COLLAR_S,
            offset_collar_rate=OFFSET_SHARE,
        )
        cps: dict[str, list[np.ndarray]] = {f: [] for f in FAMILIES}
        dtp: dict[str, list[np.ndarray]] = {f: [] for f in FAMILIES}
        dfp: dict[str, list[np.ndarray]] = {f: [] for f in FAMILIES}
        for r in records:
            for f in FAMILIES:
                cp, d = deltas[r][f]
                cps[f].append(np.asarray(cp, np.float64))
                dtp[f].append(np.asarray(d["tps"], np.float64))
                dfp[f].append(np.asarray(d["fps"], np.float64))
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
        """(tp, fp) per record of ``rows`` with the family's threshold at ``threshold``
        (an event is raised where its score >= threshold)."""
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
    Normal records among them stay within ``budget_per_hour`` (module doc)."""
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


def cross_fit(
    counts: RecordCounts,
    truth: Truth,
    budget_per_hour: float,
) -> CrossFit:
    """Thresholds of each fold fitted on the others, applied to it (module doc)."""
    folds = sorted({truth.folds[r] for r in counts.records})
    rows_of = {k: [i for i, r in enumerate(counts.records) if truth.folds[r] == k] for k in folds}
    tp = {f: np.zeros(len(counts.records)) for f in FAMILIES}
    fp = {f: np.zeros(len(counts.records)) for f in FAMILIES}
    raised = {f: np.zeros(len(counts.records), bool) for f in FAMILIES}
    thresholds: dict[int, dict[str, Fitted]] = {}
    rates: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
    for k in folds:
        fitting = [i for kk in folds if kk != k for i in rows_of[kk]]
        fitted = fit_thresholds(counts, truth, fitting, budget_per_hour)
        thresholds[k] = fitted
        held = rows_of[k]
        normal = [i for i in held if truth.labels[counts.records[i]] == NORMAL]
        hours = sum(truth.durations[counts.records[i]] for i in normal) / SECONDS_PER_HOUR
        for f in FAMILIES:
            a, b = counts.at(f, fitted[f].threshold, held)
            tp[f][held], fp[f][held] = a, b
            raised[f][held] = counts.max_score[f][held] >= fitted[f].threshold
            _, nb = counts.at(f, fitted[f].threshold, normal)
            rates[f].append((fitted[f].false_per_hour, float(nb.sum()) / max(hours, 1e-9)))
    return CrossFit(thresholds, tp, fp, dict(counts.n_ref), raised, rates)


def summary(
    cf: CrossFit, truth: Truth, records: Sequence[str], rows: Sequence[int] | None = None
) -> dict[str, float]:
    """Pooled held-out figures of a cross-fit (over ``rows``, default all)."""
    rows = list(range(len(records))) if rows is None else list(rows)
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
    """Record presence, cross-fitted: per fold the lowest record-score threshold whose
    specificity on the other folds' good records without the family is at least
    ``specificity``, applied to the fold; the pooled sensitivity and specificity."""
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
    """Several seeds' counts as one set of records (``<record>#<i>``), each seed's copy of a
    record in its fold: fitting on it pools the seeds, so a threshold serves the recipe, not
    one seed's network."""
    records = [f"{r}#{i}" for i in range(len(seeds)) for r in seeds[i].records]
    cat = {f: [x for c in seeds for x in c.cps[f]] for f in FAMILIES}
    tp = {f: [x for c in seeds for x in c.dtp[f]] for f in FAMILIES}
    fp = {f: [x for c in seeds for x in c.dfp[f]] for f in FAMILIES}
    n_ref = {f: np.concatenate([c.n_ref[f] for c in seeds]) for f in FAMILIES}
    top = {f: np.concatenate([c.max_score[f] for c in seeds]) for f in FAMILIES}

    def base(r: str) -> str:
        return r.rsplit("#", 1)[0]

    big = Truth(
        records,
        {r: truth.annotated[base(r)] for r in records},
        {r: truth.labels[base(r)] for r in records},
        {r: truth.durations[base(r)] for r in records},
        {r: truth.patients[base(r)] for r in records},
        {r: truth.folds[base(r)] for r in records},
    )
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
    """The manifest's ``detector`` section: the phase rule ``rule`` (:data:`BOXES_RULE` for the
    ``phase_boxes`` fit), every class of a family at the family's threshold (off-threshold 0.15
    below, as the fit has always set it)."""
    rules = []
    for family, classes in (("CAS", CAS_CLASSES), ("DAS", DAS_CLASSES)):
        on = fitted[family].threshold
        if not np.isfinite(on):
            raise ConfigError(
                f"{design}: no {family} threshold within {budget} false events per hour"
            )
        on = float(min(max(on, 0.06), 0.99))
        for c in classes:
            rules.append(
                {
                    "type": c,
                    "on_threshold": round(on, 4),
                    "off_threshold": round(max(0.05, on - 0.15), 4),
                    "min_event_ms": 120.0,
                    "merge_gap_ms": 120.0,
                }
            )
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


def platt(
    probs: Mapping[str, np.ndarray],
    truth: Truth,
    records: Sequence[str],
    grid: FrameGrid,
    max_frames: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per class (a, b): ``sigmoid(a * logit(p) + b)`` fitted by weighted logistic regression
    on the frames of ``records`` against their frame targets (Platt scaling); Breath and
    quality keep (1, 0)."""
    from sklearn.linear_model import LogisticRegression

    from training.data.targets import frame_targets

    a, b = np.ones(len(OUTPUTS)), np.zeros(len(OUTPUTS))
    xs, ys, ws = [], [], []
    for r in records:
        p = np.clip(probs[r], 1e-4, 1 - 1e-4)
        t, w = frame_targets(truth.annotated[r], truth.labels[r], grid, len(p))
        xs.append(np.log(p / (1 - p)))
        ys.append(t.T >= 0.5)
        ws.append(w.T)
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(x))[:max_frames]
    for c, name in enumerate(OUTPUTS):
        if name not in MAPPING or y[keep, c].all() or not y[keep, c].any():
            continue
        model = LogisticRegression(C=1e4).fit(
            x[keep, c : c + 1], y[keep, c], sample_weight=w[keep, c]
        )
        a[c], b[c] = float(model.coef_[0, 0]), float(model.intercept_[0])
    return a, b


def calibrate(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return (1.0 / (1.0 + np.exp(-(a * np.log(q / (1 - q)) + b)))).astype(np.float32)


def cross_fit_calibrated(
    probs: Mapping[str, np.ndarray], truth: Truth, grid: FrameGrid, budget_per_hour: float
) -> tuple[CrossFit, RecordCounts]:
    """:func:`cross_fit` of the phase rule on outputs calibrated per class (Platt scaling),
    the calibration of fold ``k`` fitted, like its thresholds, on the other folds' records."""
    folds = sorted({truth.folds[r] for r in truth.records})
    rows_of = {k: [i for i, r in enumerate(truth.records) if truth.folds[r] == k] for k in folds}
    n = len(truth.records)
    tp = {f: np.zeros(n) for f in FAMILIES}
    fp = {f: np.zeros(n) for f in FAMILIES}
    raised = {f: np.zeros(n, bool) for f in FAMILIES}
    rates: dict[str, list[tuple[float, float]]] = {f: [] for f in FAMILIES}
    thresholds: dict[int, dict[str, Fitted]] = {}
    last: RecordCounts | None = None
    for k in folds:
        fitting_records = [r for r in truth.records if truth.folds[r] != k]
        a, b = platt(probs, truth, fitting_records, grid)
        moved = {r: calibrate(probs[r], a, b) for r in truth.records}
        counts = RecordCounts.of(score_tables_of(moved, truth, "phase", grid), truth)
        one = cross_fit(counts, truth, budget_per_hour)
        held = rows_of[k]
        thresholds[k] = one.thresholds[k]
        for f in FAMILIES:
            tp[f][held], fp[f][held] = one.tp[f][held], one.fp[f][held]
            raised[f][held] = one.raised[f][held]
            rates[f].append(one.fold_rates[f][folds.index(k)])
        last = counts
    assert last is not None
    return CrossFit(thresholds, tp, fp, dict(last.n_ref), raised, rates), last
