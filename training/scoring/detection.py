"""Detection scores as a ward feels them, computed with sed_eval. :func:`score_detection`'s
``predicted`` and ``annotated``: record id -> events ``(start_s, end_s, type)``, SPRSound's
vocabulary. What is scored: docs/metrics.md ("Detection scores through the device path")."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lungwatch.labels import (
    DETECTED_CLASSES,
    FINDING_FAMILIES,
    NORMAL,
    POOR_QUALITY,
    SOUND_CLASSES,
    sound_class,
)

LOGGER = logging.getLogger(__name__)
ONSET_COLLAR_S = 0.2
OFFSET_SHARE = 0.2
EVENT_COLLARS = dict(t_collar=ONSET_COLLAR_S, percentage_of_length=OFFSET_SHARE)  # sed_eval's
SCORES_COLLARS = dict(  # sed_scores_eval's
    onset_collar=ONSET_COLLAR_S, offset_collar=ONSET_COLLAR_S, offset_collar_rate=OFFSET_SHARE
)
SEGMENT_S = 1.0
SECONDS_PER_HOUR = 3600.0


def four_class(name: str) -> str:
    """A detected class's class in the ``4class`` view (both crackles: Crackle)."""
    return sound_class(name).scored_as or name


ADVENTITIOUS = tuple(c for c in SOUND_CLASSES if c.families)
FAMILY_VIEW: dict[str, tuple[str, ...]] = {c.name: c.families for c in ADVENTITIOUS}
FOUR_CLASS_VIEW: dict[str, tuple[str, ...]] = {
    c.name: tuple(four_class(p) for p in c.raised_as) for c in ADVENTITIOUS
}
VIEWS: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "family": (FAMILY_VIEW, FINDING_FAMILIES),
    "4class": (FOUR_CLASS_VIEW, tuple(dict.fromkeys(map(four_class, DETECTED_CLASSES)))),
}

Event = tuple[float, float, str]


@dataclass
class ViewScores:
    event_f1: float
    event_precision: float
    event_recall: float
    event_error_rate: float
    segment_f1: float
    segment_error_rate: float
    class_event_f1: dict[str, float] = field(default_factory=dict)
    class_segment_f1: dict[str, float] = field(default_factory=dict)
    class_event_precision: dict[str, float] = field(default_factory=dict)
    class_event_recall: dict[str, float] = field(default_factory=dict)
    class_events: dict[str, int] = field(default_factory=dict)  # annotated events per class


@dataclass(frozen=True)
class FamilyScores:
    event_f1: float
    event_precision: float
    event_recall: float
    false_events_per_hour: float  # of this family, on Normal records
    presence_se: float  # records with the family that were called so
    presence_sp: float  # records without it that were not
    n_events: int  # annotated events of the family
    n_records: int  # good records with the family


@dataclass
class DetectionReport:
    views: dict[str, ViewScores]
    false_events_per_hour: float  # adventitious events predicted on Normal records
    normal_records_with_false_events: float  # share of Normal records with any
    normal_hours: float
    n_records: int
    families: dict[str, FamilyScores] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float:
        return sum(f.event_f1 for f in self.families.values()) / max(1, len(self.families))

    def summary(self) -> dict[str, float]:
        family, four = self.views["family"], self.views["4class"]
        out = {
            "event_f1_family": family.event_f1,
            "event_precision_family": family.event_precision,
            "event_recall_family": family.event_recall,
            "event_error_rate_family": family.event_error_rate,
            "segment_f1_family": family.segment_f1,
            "event_f1_4class": four.event_f1,
            "segment_f1_4class": four.segment_f1,
            "false_events_per_hour": self.false_events_per_hour,
            "normal_records_with_false_events": self.normal_records_with_false_events,
            "macro_f1": self.macro_f1,
        }
        for name, f in self.families.items():
            key = name.lower()
            out |= {
                f"f1_{key}": f.event_f1,
                f"precision_{key}": f.event_precision,
                f"recall_{key}": f.event_recall,
                f"fa_per_hour_{key}": f.false_events_per_hour,
                f"se_{key}": f.presence_se,
                f"sp_{key}": f.presence_sp,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "views": {name: vars(view) for name, view in self.views.items()},
            "families": {name: vars(f) for name, f in self.families.items()},
            "normal_hours": self.normal_hours,
            "n_records": self.n_records,
        }

    def family_table(self) -> list[str]:
        rows = ["family  event_f1  precision  recall  false/h  presence_SE  presence_SP"]
        for name, f in self.families.items():
            rows.append(
                f"{name:<6}  {f.event_f1:8.3f}  {f.event_precision:9.3f}  {f.event_recall:6.3f}  "
                f"{f.false_events_per_hour:7.1f}  {f.presence_se:11.3f}  {f.presence_sp:11.3f}"
            )
        rows.append(f"macro   {self.macro_f1:8.3f}")
        return rows


def _metadata(events: Sequence[Event], view: Mapping[str, tuple[str, ...]], record: str) -> Any:
    import dcase_util

    rows = [
        {"event_label": label, "onset": float(s), "offset": float(e), "filename": record}
        for s, e, t in events
        for label in view.get(t, ())
    ]
    return dcase_util.containers.MetaDataContainer(rows)


def _nan_to_zero(value: Any) -> float:
    value = float(value)
    return 0.0 if value != value else value


def score_view(
    predicted: Mapping[str, Sequence[Event]], annotated: Mapping[str, Sequence[Event]], view: str
) -> ViewScores:
    """sed_eval event- and segment-based scores of one view over every annotated record."""
    with warnings.catch_warnings():
        # dcase_util imports pkg_resources, which warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        import sed_eval
    mapping, classes = VIEWS[view]
    event_metrics = sed_eval.sound_event.EventBasedMetrics(
        list(classes), **EVENT_COLLARS, evaluate_onset=True, evaluate_offset=True
    )
    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(
        list(classes), time_resolution=SEGMENT_S
    )
    for record in sorted(annotated):
        reference = _metadata(annotated[record], mapping, record)
        estimated = _metadata(predicted.get(record, ()), mapping, record)
        event_metrics.evaluate(reference, estimated)
        segment_metrics.evaluate(reference, estimated)
    ev, seg = event_metrics.results_overall_metrics(), segment_metrics.results_overall_metrics()
    ev_class = event_metrics.results_class_wise_metrics()
    seg_class = segment_metrics.results_class_wise_metrics()

    def per_class(table: Any, group: str, key: str) -> dict[str, float]:
        return {c: _nan_to_zero(table[c][group][key]) for c in classes}

    return ViewScores(
        event_f1=_nan_to_zero(ev["f_measure"]["f_measure"]),
        event_precision=_nan_to_zero(ev["f_measure"]["precision"]),
        event_recall=_nan_to_zero(ev["f_measure"]["recall"]),
        event_error_rate=_nan_to_zero(ev["error_rate"]["error_rate"]),
        segment_f1=_nan_to_zero(seg["f_measure"]["f_measure"]),
        segment_error_rate=_nan_to_zero(seg["error_rate"]["error_rate"]),
        class_event_f1=per_class(ev_class, "f_measure", "f_measure"),
        class_segment_f1=per_class(seg_class, "f_measure", "f_measure"),
        class_event_precision=per_class(ev_class, "f_measure", "precision"),
        class_event_recall=per_class(ev_class, "f_measure", "recall"),
        class_events={c: int(ev_class[c]["count"]["Nref"]) for c in classes},
    )


def false_events(
    predicted: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
) -> tuple[float, float, float]:
    """(adventitious events per hour, share of records with any, hours) on Normal records."""
    normal = [r for r, label in labels.items() if label == NORMAL]
    hours = sum(durations_s[r] for r in normal) / SECONDS_PER_HOUR
    counts = [sum(1 for _, _, t in predicted.get(r, ()) if t in FAMILY_VIEW) for r in normal]
    per_hour = sum(counts) / hours if hours > 0 else 0.0
    share = sum(1 for c in counts if c) / len(normal) if normal else 0.0
    return per_hour, share, hours


def has_family(events: Sequence[Event], family: str) -> bool:
    return any(family in FAMILY_VIEW.get(t, ()) for _, _, t in events)


def family_scores(
    view: ViewScores,
    predicted: Mapping[str, Sequence[Event]],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    hours: float,
) -> dict[str, FamilyScores]:
    good = [r for r in annotated if labels.get(r) != POOR_QUALITY]
    normal = [r for r in annotated if labels.get(r) == NORMAL]
    out = {}
    for family in VIEWS["family"][1]:
        truth = [has_family(annotated[r], family) for r in good]
        called = [has_family(predicted.get(r, ()), family) for r in good]
        pos = sum(truth)
        neg = len(good) - pos
        events = [t for r in normal for _, _, t in predicted.get(r, ())]
        false = sum(family in FAMILY_VIEW.get(t, ()) for t in events)
        out[family] = FamilyScores(
            event_f1=view.class_event_f1[family],
            event_precision=view.class_event_precision[family],
            event_recall=view.class_event_recall[family],
            false_events_per_hour=false / hours if hours > 0 else 0.0,
            presence_se=sum(t and c for t, c in zip(truth, called, strict=True)) / max(pos, 1),
            presence_sp=sum(not t and not c for t, c in zip(truth, called, strict=True))
            / max(neg, 1),
            n_events=view.class_events[family],
            n_records=pos,
        )
    return out


def score_detection(
    predicted: Mapping[str, Sequence[Event]],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
) -> DetectionReport:
    views = {name: score_view(predicted, annotated, name) for name in VIEWS}
    per_hour, share, hours = false_events(predicted, labels, durations_s)
    families = family_scores(views["family"], predicted, annotated, labels, hours)
    return DetectionReport(views, per_hour, share, hours, len(annotated), families)
