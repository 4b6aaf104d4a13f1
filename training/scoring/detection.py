"""Detection scores as a ward feels them, computed with sed_eval.

    report = score_detection(predicted, annotated, labels, durations_s)

``predicted`` and ``annotated`` map a record id to its events ``(start_s, end_s, type)`` in
SPRSound's vocabulary. Two views, each scored by sed_eval's event-based metrics (onset collar
0.2 s, offset collar max(0.2 s, 20 % of the reference event's length)) and segment-based
metrics (1-s segments), micro-averaged and per class:

- ``family``: CAS (Wheeze, Rhonchi, Stridor) and DAS (Fine and Coarse Crackle);
  Wheeze+Crackle counts in both;
- ``4class``: Crackle (fine + coarse), Wheeze, Rhonchi, Stridor; Wheeze+Crackle is a Wheeze
  and a Crackle.

Besides: false adventitious events per hour on the records labelled Normal (every
predicted adventitious event there is false) and the share of Normal records with any.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.labels import NORMAL, POOR_QUALITY

LOGGER = logging.getLogger(__name__)
ONSET_COLLAR_S = 0.2
OFFSET_SHARE = 0.2
SEGMENT_S = 1.0
SECONDS_PER_HOUR = 3600.0

FAMILY_VIEW: dict[str, tuple[str, ...]] = {
    "Wheeze": ("CAS",),
    "Rhonchi": ("CAS",),
    "Stridor": ("CAS",),
    "Fine Crackle": ("DAS",),
    "Coarse Crackle": ("DAS",),
    "Wheeze+Crackle": ("CAS", "DAS"),
}
FOUR_CLASS_VIEW: dict[str, tuple[str, ...]] = {
    "Wheeze": ("Wheeze",),
    "Rhonchi": ("Rhonchi",),
    "Stridor": ("Stridor",),
    "Fine Crackle": ("Crackle",),
    "Coarse Crackle": ("Crackle",),
    "Wheeze+Crackle": ("Wheeze", "Crackle"),
}
VIEWS: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "family": (FAMILY_VIEW, ("CAS", "DAS")),
    "4class": (FOUR_CLASS_VIEW, ("Crackle", "Wheeze", "Rhonchi", "Stridor")),
}

Event = tuple[float, float, str]


@dataclass
class ViewScores:
    """Scores of one view."""

    event_f1: float
    event_precision: float
    event_recall: float
    event_error_rate: float
    segment_f1: float
    segment_error_rate: float
    class_event_f1: dict[str, float] = field(default_factory=dict)
    class_segment_f1: dict[str, float] = field(default_factory=dict)


@dataclass
class DetectionReport:
    """Everything :func:`score_detection` measures."""

    views: dict[str, ViewScores]
    false_events_per_hour: float  # adventitious events predicted on Normal records
    normal_records_with_false_events: float  # share of Normal records with any
    normal_hours: float
    n_records: int

    def summary(self) -> dict[str, float]:
        """The headline numbers, flat."""
        family, four = self.views["family"], self.views["4class"]
        return {
            "event_f1_family": family.event_f1,
            "event_precision_family": family.event_precision,
            "event_recall_family": family.event_recall,
            "event_error_rate_family": family.event_error_rate,
            "segment_f1_family": family.segment_f1,
            "event_f1_4class": four.event_f1,
            "segment_f1_4class": four.segment_f1,
            "false_events_per_hour": self.false_events_per_hour,
            "normal_records_with_false_events": self.normal_records_with_false_events,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "views": {name: vars(view) for name, view in self.views.items()},
            "normal_hours": self.normal_hours,
            "n_records": self.n_records,
        }


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
    predicted: Mapping[str, Sequence[Event]],
    annotated: Mapping[str, Sequence[Event]],
    view: str,
) -> ViewScores:
    """sed_eval event- and segment-based scores of one view over every annotated record."""
    with warnings.catch_warnings():
        # dcase_util imports pkg_resources, which warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        import sed_eval
    mapping, classes = VIEWS[view]
    event_metrics = sed_eval.sound_event.EventBasedMetrics(
        list(classes),
        t_collar=ONSET_COLLAR_S,
        percentage_of_length=OFFSET_SHARE,
        evaluate_onset=True,
        evaluate_offset=True,
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
    return ViewScores(
        event_f1=_nan_to_zero(ev["f_measure"]["f_measure"]),
        event_precision=_nan_to_zero(ev["f_measure"]["precision"]),
        event_recall=_nan_to_zero(ev["f_measure"]["recall"]),
        event_error_rate=_nan_to_zero(ev["error_rate"]["error_rate"]),
        segment_f1=_nan_to_zero(seg["f_measure"]["f_measure"]),
        segment_error_rate=_nan_to_zero(seg["error_rate"]["error_rate"]),
        class_event_f1={c: _nan_to_zero(ev_class[c]["f_measure"]["f_measure"]) for c in classes},
        class_segment_f1={c: _nan_to_zero(seg_class[c]["f_measure"]["f_measure"]) for c in classes},
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


def score_detection(
    predicted: Mapping[str, Sequence[Event]],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
) -> DetectionReport:
    """Both views and the false-event rate (records: those of ``annotated``)."""
    views = {name: score_view(predicted, annotated, name) for name in VIEWS}
    per_hour, share, hours = false_events(predicted, labels, durations_s)
    return DetectionReport(views, per_hour, share, hours, len(annotated))


def good_records(labels: Mapping[str, str]) -> list[str]:
    """Records not labelled Poor Quality."""
    return [r for r, label in labels.items() if label != POOR_QUALITY]
