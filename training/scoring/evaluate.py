"""``lungwatch evaluate``: score a predictions file against the annotations of a folder.

The prediction formats (the ``lungwatch predict`` contract), the annotation folder and the
checks: docs/metrics.md, "lungwatch evaluate".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lungwatch.cli import ArgumentParser
from lungwatch.errors import AnnotationError, LungwatchError
from training.data.icbhi import parse_recording_name, read_cycles
from training.data.sprsound import read_annotation
from training.scoring.challenge import (
    EVENT_TASKS,
    ICBHI_TASK,
    PRF,
    RECORD_TASKS,
    TASK_LABELS,
    TASK_NORMAL,
    TASKS,
    EvaluationError,
    IcbhiScores,
    SprScores,
    confusion,
    event_task_labels,
    icbhi_cycle_labels,
    icbhi_scores,
    macro_average,
    micro_average,
    per_class_scores,
    record_task_label,
    sprsound_scores,
)

__all__ = ["Evaluation", "EvaluationError", "evaluate", "format_report", "main"]

PREVIEW_COUNT = 3  # record names quoted in an error message
ITEM_NAMES: dict[str, str] = {
    "1-1": "events",
    "1-2": "events",
    "2-1": "records",
    "2-2": "records",
    ICBHI_TASK: "cycles",
}
SCORE_DIGITS = 4
CLASS_COLUMN_WIDTH = 16

Labels = dict[str, list[str]]  # record id -> labels in order (Task 2: a list of one)


@dataclass(frozen=True)
class Evaluation:
    task: str
    n_records: int
    labels: tuple[str, ...]
    scores: SprScores | IcbhiScores
    per_class: dict[str, PRF]
    macro: PRF
    accuracy: float
    confusion: np.ndarray  # rows: true label, columns: predicted label, in ``labels`` order

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (``as_`` is written ``as``)."""
        scores = {("as" if k == "as_" else k): v for k, v in asdict(self.scores).items()}
        return {
            "task": self.task,
            "n_records": self.n_records,
            "n_items": int(self.confusion.sum()),
            "scores": scores,
            "accuracy": self.accuracy,
            "per_class": {label: asdict(s) for label, s in self.per_class.items()},
            "macro": asdict(self.macro),
            "confusion": {"labels": list(self.labels), "matrix": self.confusion.tolist()},
        }


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:PREVIEW_COUNT])
    more = len(names) - PREVIEW_COUNT
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def read_predictions(path: str | Path, task: str) -> Labels:
    file_path = Path(path)
    try:
        document = json.loads(file_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{file_path}: cannot read predictions: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            f"{file_path}:{exc.lineno}: invalid JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg}"
        ) from None
    if not isinstance(document, dict):
        raise EvaluationError(f"{file_path}: top level must be a JSON object of record -> labels")
    return {
        record: _prediction_labels(value, task, f"{file_path}: record {record!r}")
        for record, value in document.items()
    }


def _prediction_labels(value: object, task: str, where: str) -> list[str]:
    if task in RECORD_TASKS:
        if not isinstance(value, str):
            raise EvaluationError(f"{where}: Task {task} wants one label string, got {value!r}")
        labels = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        labels = value
    else:
        raise EvaluationError(f"{where}: Task {task} wants a list of label strings, got {value!r}")
    allowed = TASK_LABELS[task]
    for label in labels:
        if label not in allowed:
            raise EvaluationError(
                f"{where}: label {label!r} is not a Task {task} label; allowed: "
                + ", ".join(repr(a) for a in allowed)
            )
    return labels


def read_references(folder: str | Path, task: str, skip: Path | None = None) -> Labels:
    """``skip``: the predictions file, left out when it lies in ``folder``."""
    directory = Path(folder)
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: annotations folder not found")
    skipped = skip.resolve() if skip is not None else None
    suffix = ".txt" if task == ICBHI_TASK else ".json"
    paths = [p for p in sorted(directory.glob(f"*{suffix}")) if p.resolve() != skipped]
    if task == ICBHI_TASK:
        references = {p.stem: icbhi_cycle_labels(read_cycles(p)) for p in paths if _is_icbhi(p)}
    else:
        references = {p.stem: _sprsound_labels(p, task) for p in paths}
    if not references:
        raise EvaluationError(f"{directory}: no {suffix} annotation files for task {task}")
    return references


def _is_icbhi(path: Path) -> bool:
    """Whether a ``.txt`` file is named like an ICBHI recording (not the split file, ...)."""
    try:
        parse_recording_name(path.stem, str(path))
    except AnnotationError:
        return False
    return True


def _sprsound_labels(path: Path, task: str) -> list[str]:
    record_label, events = read_annotation(path)
    if task in EVENT_TASKS:
        return event_task_labels(events, task)
    return [record_task_label(record_label, task)]


def align(
    references: Mapping[str, list[str]], predictions: Mapping[str, list[str]], task: str
) -> tuple[list[str], list[str]]:
    optional = {r for r, labels in references.items() if not labels}  # Task 1: no events
    unannotated = sorted(set(predictions) - set(references))
    unpredicted = sorted(set(references) - set(predictions) - optional)
    problems = []
    if unannotated:
        problems.append(f"{len(unannotated)} predicted record(s) have no annotation: ")
        problems[-1] += _preview(unannotated)
    if unpredicted:
        problems.append(f"{len(unpredicted)} annotated record(s) have no prediction: ")
        problems[-1] += _preview(unpredicted)
    if problems:
        raise EvaluationError("; ".join(problems))
    records = sorted(references)
    wrong = [r for r in records if len(predictions.get(r, [])) != len(references[r])]
    if wrong:
        first = wrong[0]
        raise EvaluationError(
            f"{len(wrong)} record(s) have the wrong number of labels, first {first!r}: "
            f"{len(predictions[first])} predicted for {len(references[first])} annotated "
            f"{ITEM_NAMES[task]} (one label per {ITEM_NAMES[task][:-1]}, in file order)"
        )
    y_true = [label for r in records for label in references[r]]
    y_pred = [label for r in records for label in predictions.get(r, [])]
    return y_true, y_pred


def score(task: str, y_true: Sequence[str], y_pred: Sequence[str], n_records: int) -> Evaluation:
    labels = TASK_LABELS[task]
    if task == ICBHI_TASK:
        scores: SprScores | IcbhiScores = icbhi_scores(y_true, y_pred)
    else:
        scores = sprsound_scores(y_true, y_pred, normal_label=TASK_NORMAL[task])
    per_class = per_class_scores(y_true, y_pred, labels)
    return Evaluation(
        task=task,
        n_records=n_records,
        labels=labels,
        scores=scores,
        per_class=per_class,
        macro=macro_average(per_class),
        accuracy=micro_average(per_class).recall,
        confusion=confusion(y_true, y_pred, labels),
    )


def evaluate(task: str, preds_path: str | Path, annotations_dir: str | Path) -> Evaluation:
    if task not in TASKS:
        raise EvaluationError(f"task {task!r} is not one of {', '.join(TASKS)}")
    predictions = read_predictions(preds_path, task)
    references = read_references(annotations_dir, task, skip=Path(preds_path))
    try:
        y_true, y_pred = align(references, predictions, task)
    except EvaluationError as exc:
        raise EvaluationError(f"{preds_path} vs {annotations_dir}: {exc}") from None
    return score(task, y_true, y_pred, n_records=len(references))


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return (
        "  "
        + first.ljust(widths[0])
        + "".join(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
    )


def format_report(result: Evaluation) -> str:
    s, digits = result.scores, SCORE_DIGITS
    items = ITEM_NAMES[result.task]
    lines = [
        f"Task {result.task}: {result.n_records} records, {int(result.confusion.sum())} {items} "
        f"({s.n_normal} normal, {s.n_abnormal} non-normal)"
    ]
    names: tuple[str, ...]
    values: tuple[float, ...]
    if isinstance(s, SprScores):
        names, values = ("SE", "SP", "AS", "HS", "Score"), (s.se, s.sp, s.as_, s.hs, s.score)
    else:
        names, values = ("Se", "Sp", "Score"), (s.se, s.sp, s.score)
    lines.append(_row(["", *names], [0, *[digits + 4] * len(names)]))
    lines.append(_row(["", *(f"{v:.{digits}f}" for v in values)], [0, *[digits + 4] * len(names)]))
    widths = [CLASS_COLUMN_WIDTH, 7, 7, 11, 9, 9]
    lines += ["", _row(["class", "true", "pred", "precision", "recall", "f1"], widths)]
    for label, c in [*result.per_class.items(), ("macro", result.macro)]:
        counts = ["", ""] if label == "macro" else [str(c.support), str(c.tp + c.fp)]
        numbers = [f"{v:.{digits}f}" for v in (c.precision, c.recall, c.f1)]
        lines.append(_row([label, *counts, *numbers], widths))
    lines.append(f"  accuracy {result.accuracy:.{digits}f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Returns 0 on success, 1 on an input error."""
    parser = ArgumentParser(prog="lungwatch evaluate", description=__doc__)
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="the challenge task the predictions answer"
    )
    parser.add_argument("--preds", required=True, help="predictions JSON (lungwatch predict)")
    parser.add_argument("--annotations", required=True, help="folder of annotation files")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.task, args.preds, args.annotations)
    except LungwatchError as exc:
        print(f"lungwatch evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            print(f"lungwatch evaluate: error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
