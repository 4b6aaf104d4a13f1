"""``lungwatch cv score``: per design, seed and seed ensemble, threshold-free scores, scores at the
ward's operating point with cross-fitted thresholds, the ``intra_test`` and ICBHI views, and a
paired bootstrap over patients against ``--against`` (docs/training.md, "What cv score reports")."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.datapaths import data_root, sprsound_root
from lungwatch.errors import ConfigError
from lungwatch.labels import NORMAL
from training.cv.decide import (
    BOXES_RULE,
    FAMILIES,
    MAPPING,
    PHASE_RULE,
    RULES,
    CrossFit,
    Fitted,
    RecordCounts,
    cross_fit,
    detector_section,
    f1,
    fit_thresholds,
    merged,
    presence_at_specificity,
    rule_table,
    score_tables_of,
    summary,
)
from training.cv.oof import (
    Truth,
    all_models_outputs,
    ensemble,
    icbhi_out_of_fold,
    icbhi_patients,
    load_truth,
    oof_outputs,
    read_outputs,
    seeds_of,
)
from training.cv.run import DEFAULT_OUT
from training.data.targets import OUTPUTS, QUALITY_INDEX, frame_targets

FAMILY_OUTPUTS = {
    f: [i for i, o in enumerate(OUTPUTS) if f in MAPPING.get(o, ())] for f in FAMILIES
}


def frame_auc(probs: Mapping[str, np.ndarray], truth: Truth, grid: Any) -> dict[str, float]:
    """Per family: AUC of the family's highest class output, frames inside its annotated
    events against every frame of Normal records."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for f, cols in FAMILY_OUTPUTS.items():
        pos, neg = [], []
        for r in truth.records:
            p = probs[r][:, cols].max(axis=1)
            if truth.labels[r] == NORMAL:
                neg.append(p)
                continue
            targets, _ = frame_targets(truth.annotated[r], truth.labels[r], grid, len(p))
            inside = targets[cols].max(axis=0) >= 0.5
            pos.append(p[inside])
        y = np.r_[np.ones(sum(map(len, pos))), np.zeros(sum(map(len, neg)))]
        out[f"frame_auc_{f.lower()}"] = float(roc_auc_score(y, np.concatenate(pos + neg)))
    return out


def psds(tables: Mapping[str, Any], truth: Truth) -> dict[str, float]:
    from training.scoring.threshold_free import score_tables

    scores = score_tables(tables, truth.annotated, truth.durations, "family")
    return {"psds1": scores.psds1, "psds2": scores.psds2}


def fixed(counts: RecordCounts, truth: Truth, threshold: float) -> CrossFit:
    """Every family at ``threshold`` on every record (no fit): a CrossFit-shaped result."""
    rows = list(range(len(counts.records)))
    folds = sorted({truth.folds[r] for r in counts.records})
    tp, fp = {}, {}
    for f in FAMILIES:
        tp[f], fp[f] = counts.at(f, threshold, rows)
    raised = {f: counts.max_score[f] >= threshold for f in FAMILIES}
    at = {k: {f: Fitted(threshold, math.nan, math.nan) for f in FAMILIES} for k in folds}
    return CrossFit(at, tp, fp, dict(counts.n_ref), raised, {f: [] for f in FAMILIES})


def pooled_counts(fits: Sequence[CrossFit]) -> dict[str, np.ndarray]:
    """Per record (rows) and family: tp, fp, n_ref summed over ``fits`` (a design's seeds)."""
    fields = (("tp", "tp"), ("fp", "fp"), ("n", "n_ref"))
    return {
        f"{k}_{f}": np.sum([getattr(cf, a)[f] for cf in fits], axis=0)
        for f in FAMILIES
        for k, a in fields
    }


def bootstrap(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    patients: Sequence[str],
    resamples: int,
) -> dict[str, Any]:
    """Paired bootstrap over patients of event F1 (b minus a), per family and their mean."""
    ids = sorted(set(patients))
    index = {p: i for i, p in enumerate(ids)}
    rec_patient = np.array([index[p] for p in patients])

    def per_patient(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.bincount(rec_patient, weights=v, minlength=len(ids)) for k, v in c.items()}

    pa, pb = per_patient(a), per_patient(b)
    draws = np.random.default_rng(0).integers(0, len(ids), size=(resamples, len(ids)))
    weights = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])  # (B, P)

    def f1s(c: Mapping[str, np.ndarray], w: np.ndarray) -> dict[str, np.ndarray]:
        res = {}
        for f in FAMILIES:
            tp, fp, n = w @ c[f"tp_{f}"], w @ c[f"fp_{f}"], w @ c[f"n_{f}"]
            den = tp + fp + n
            res[f] = np.where(den > 0, 2 * tp / np.maximum(den, 1e-9), 0.0)
        res["macro"] = (res["CAS"] + res["DAS"]) / 2
        return res

    ones = np.ones((1, len(ids)))
    point_a, point_b = f1s(pa, ones), f1s(pb, ones)
    ba, bb = f1s(pa, weights), f1s(pb, weights)
    out = {}
    for key in (*FAMILIES, "macro"):
        diff = bb[key] - ba[key]
        out[key.lower()] = {
            "a": float(point_a[key][0]),
            "b": float(point_b[key][0]),
            "diff": float(point_b[key][0] - point_a[key][0]),
            "ci90": [float(np.quantile(diff, 0.05)), float(np.quantile(diff, 0.95))],
            "ratio": float(point_b[key][0] / point_a[key][0]) if point_a[key][0] > 0 else None,
        }
    return out


def icbhi_view(outputs: Mapping[str, np.ndarray], grid: Any) -> dict[str, float]:
    """Per family, the cycle AUC of the phase-rule score (its highest candidate event
    overlapping the cycle); the share of frames whose quality output reaches 0.6."""
    from sklearn.metrics import roc_auc_score

    from training.data.icbhi import load_icbhi

    folder = data_root() / "icbhi" / "train"
    if not folder.is_dir():
        return {}
    recordings = {r.recording_id: r for r in load_icbhi(folder)}
    scores: dict[str, list[float]] = {"CAS": [], "DAS": []}
    labels: dict[str, list[int]] = {"CAS": [], "DAS": []}
    poor = frames = 0
    for rid, p in outputs.items():
        rec = recordings.get(rid)
        if rec is None:
            continue
        poor += int((p[:, QUALITY_INDEX] >= 0.6).sum())
        frames += len(p)
        duration = max(c.end_s for c in rec.cycles)
        edges, table = rule_table("phase", p, duration, grid)
        for c in rec.cycles:
            lo, hi = np.searchsorted(edges, c.start_s, "right") - 1, np.searchsorted(edges, c.end_s)
            seg = table[max(lo, 0) : max(hi, lo + 1)]
            for i, f in enumerate(FAMILIES):
                positive = c.wheezes if f == "CAS" else c.crackles
                if positive or not (c.crackles or c.wheezes):
                    scores[f].append(float(seg[:, i].max(initial=0.0)))
                    labels[f].append(int(positive))
    out = {"icbhi_poor_share": poor / max(frames, 1)}
    for f in FAMILIES:
        y = np.array(labels[f])
        if 0 < y.sum() < len(y):
            out[f"icbhi_cycle_auc_{f.lower()}"] = float(roc_auc_score(y, scores[f]))
    return out


def intra_view(
    probs: Mapping[str, np.ndarray], fitted: Mapping[str, Fitted], rule: str, grid: Any
) -> dict[str, float]:
    folder = sprsound_root() / "intra_test"
    if not folder.is_dir():
        return {}
    intra = load_truth(folder)
    counts = RecordCounts.of(score_tables_of(probs, intra, rule, grid), intra)
    rows = list(range(len(intra.records)))
    normal = [i for i in rows if intra.labels[intra.records[i]] == NORMAL]
    hours = sum(intra.durations[intra.records[i]] for i in normal) / 3600.0
    out = {}
    for f in FAMILIES:
        tp, fp = counts.at(f, fitted[f].threshold, rows)
        _, nfp = counts.at(f, fitted[f].threshold, normal)
        out[f"intra_f1_{f.lower()}"] = f1(tp.sum(), fp.sum(), counts.n_ref[f].sum())
        out[f"intra_fa_per_hour_{f.lower()}"] = float(nfp.sum()) / max(hours, 1e-9)
        out[f"threshold_{f.lower()}"] = fitted[f].threshold
    out["intra_fa_per_hour"] = sum(out[f"intra_fa_per_hour_{f.lower()}"] for f in FAMILIES)
    return out


def icbhi_outputs(design: Path) -> dict[str, np.ndarray]:
    """Every ICBHI recording from its own ICBHI fold's models (the seeds' mean logits): out
    of fold also for a design that trains on ICBHI."""
    patients = icbhi_patients()
    if not patients:
        return {}
    per_seed = [
        {r: p for r, (_, p) in icbhi_out_of_fold(design, patients, seed).items()}
        for seed in seeds_of(design)
    ]
    return ensemble(per_seed) if len(per_seed) > 1 else per_seed[0]


def score_design(
    design: Path,
    truth: Truth,
    rules: Sequence[str],
    grid: Any,
    budget: float,
    reference: float | None,
    with_views: bool,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Every figure of one design, and its pooled per-record counts per rule."""
    oof = oof_outputs(design, truth)
    members: dict[str, dict[str, np.ndarray]] = {f"seed{s}": p for s, p in oof.items()}
    if len(oof) > 1:
        members["ensemble"] = ensemble(list(oof.values()))
    result: dict[str, Any] = {"seeds": sorted(oof), "members": {}}
    pooled: dict[str, dict[str, np.ndarray]] = {}
    counted: dict[tuple[str, str], RecordCounts] = {}  # (member, rule): its per-record counts
    for name, probs in members.items():
        entry: dict[str, Any] = frame_auc(probs, truth, grid)
        for rule in rules:
            tables = score_tables_of(probs, truth, rule, grid)
            counts = counted[name, rule] = RecordCounts.of(tables, truth)
            cf = cross_fit(counts, truth, budget)
            entry[rule] = summary(cf, truth, counts.records) | presence_at_specificity(
                counts, truth
            )
            entry[rule]["thresholds"] = {
                str(k): {f: v.threshold for f, v in t.items()} for k, t in cf.thresholds.items()
            }
            if rule == "phase":
                entry[rule] |= psds(tables, truth)
                if reference is not None:
                    ref = fixed(counts, truth, reference)
                    entry[f"phase_at_{reference}"] = summary(ref, truth, counts.records)
                    pooled[f"{name}:phase_at_{reference}"] = pooled_counts([ref])
                if with_views and name == ("ensemble" if len(oof) > 1 else f"seed{min(oof)}"):
                    # the fold models' ensemble, thresholds fitted on every OOF record
                    fitted = fit_thresholds(counts, truth, range(len(counts.records)), budget)
                    intra = ensemble(all_models_outputs(design, "intra_test"))
                    entry["views"] = intra_view(intra, fitted, "phase", grid)
                    entry["views"] |= icbhi_view(icbhi_outputs(design), grid)
            pooled[f"{name}:{rule}"] = pooled_counts([cf])
        result["members"][name] = entry
        print(f"{design.name} {name}: " + json.dumps(compact(entry)), flush=True)
    fulls = sorted(design.glob("seed*/full/done.json"))
    if with_views and fulls:  # the full models (what ships), thresholds from the pooled OOF
        result["full"] = {}
        for rule in rules:
            counts, big = merged([counted[f"seed{s}", rule] for s in oof], truth)
            fitted = fit_thresholds(counts, big, range(len(counts.records)), budget)
            for done in fulls:
                folder = done.parent
                intra = read_outputs(folder, "intra_test")
                key = folder.parent.name if rule == "phase" else f"{folder.parent.name}:{rule}"
                result["full"][key] = intra_view(intra, fitted, rule, grid)
                if rule == "phase":
                    result["full"][key] |= icbhi_view(read_outputs(folder, "icbhi"), grid)
                print(f"{design.name} {key}/full: {json.dumps(result['full'][key])}", flush=True)
    at_reference = [f"phase_at_{reference}"] if reference is not None and "phase" in rules else []
    for key in [*rules, *at_reference]:  # the seeds pooled (each record's counts summed over seeds)
        seeds = [pooled[f"seed{s}:{key}"] for s in oof]
        pooled[f"seeds:{key}"] = {k: np.sum([c[k] for c in seeds], axis=0) for k in seeds[0]}
    return result, pooled


COMPACT_KEYS = {"macro_f1", "psds1", "psds2"} | {
    f"{m}_{f}" for m in ("f1", "fa_per_hour", "fa_ratio", "se_at_sp95") for f in ("cas", "das")
}


def compact(entry: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if isinstance(value, Mapping):
            out[key] = {
                k: round(float(v), 3)
                for k, v in value.items()
                if k in COMPACT_KEYS or "intra" in k or "icbhi" in k
            }
        elif isinstance(value, float):
            out[key] = round(value, 3)
    return out


BUDGET_HELP = "false events per hour per family the fit may spend (default 10)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--design", action="append", required=True, help="design name (repeatable)")
    p.add_argument(
        "--rule", action="append", choices=RULES, help="decision rule(s) to judge (default: phase)"
    )
    p.add_argument("--budget", type=float, default=10.0, help=BUDGET_HELP)
    p.add_argument(
        "--reference-threshold",
        type=float,
        default=0.7,
        help="also judge every class at this fixed threshold (the shipped rules)",
    )
    p.add_argument("--against", default=None, help="the bootstrap's reference design")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (patients)")
    p.add_argument("--no-views", action="store_true", help="skip intra_test and ICBHI")
    p.add_argument("--cv-dir", type=Path, default=DEFAULT_OUT, help="designs' parent folder")
    p.add_argument("--out", type=Path, default=None, help="write everything as JSON here")


def score_command(args: argparse.Namespace) -> int:
    from training.recipe.config import load_run
    from training.recipe.train import frame_grid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rules = args.rule or ["phase"]
        truth = load_truth()
        grid = frame_grid(load_run(Path("training/configs/sed.yaml")))
        designs = list(dict.fromkeys(args.design))
        for d in designs:
            if not (args.cv_dir / d).is_dir():
                raise ConfigError(f"design {d!r}: no folder {args.cv_dir / d} (cv train first)")
        results, pooled = {}, {}
        for d in designs:
            results[d], pooled[d] = score_design(
                args.cv_dir / d,
                truth,
                rules,
                grid,
                args.budget,
                args.reference_threshold,
                not args.no_views,
            )
        against = args.against or designs[0]
        patients = [truth.patients[r] for r in truth.records]
        comparisons: dict[str, Any] = {}
        ref_key = f"seeds:phase_at_{args.reference_threshold}"
        base = pooled[against]
        for d in designs:
            for key, counts in pooled[d].items():
                if not key.startswith(("seeds:", "ensemble:")):
                    continue
                for ref in (f"seeds:{rules[0]}", ref_key):
                    if ref in base and (d, key) != (against, ref):
                        name = f"{d}/{key} vs {against}/{ref}"
                        comparisons[name] = bootstrap(base[ref], counts, patients, args.bootstrap)
        for name, c in comparisons.items():
            parts = [
                f"{k} {v['a']:.3f} -> {v['b']:.3f} ({v['diff']:+.3f}, "
                f"90% [{v['ci90'][0]:+.3f}, {v['ci90'][1]:+.3f}])"
                for k, v in c.items()
            ]
            print(f"{name}: " + ", ".join(parts))
        boot = {"against": against, "resamples": args.bootstrap, "comparisons": comparisons}
        doc = {
            "budget_per_hour": args.budget,
            "rules": rules,
            "designs": results,
            "bootstrap": boot,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
            print(f"-> {args.out}")
    return 0


def rules_command(args: argparse.Namespace) -> int:
    """``lungwatch cv rules``: fit one threshold per family and the quality gate's model
    threshold on a design's OOF outputs (seeds pooled) into a model folder's manifest."""
    from edge.inference.manifest_write import set_section

    if args.model is not None and not (args.model / "manifest.json").is_file():
        raise ConfigError(f"{args.model / 'manifest.json'}: no manifest (lungwatch export first)")
    written = fit_sections(args)
    if args.model is not None:
        manifest = args.model / "manifest.json"
        for name in args.section or list(written):
            set_section(manifest, name, written[name])
        print(
            f"{', '.join(args.section or written)} -> {manifest}; write the verify "
            f"reference again: lungwatch verify --model-dir {args.model} --write-reference"
        )
    return 0


def fit_sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from training.recipe.config import load_run
    from training.recipe.train import frame_grid

    if not (args.cv_dir / args.design).is_dir():
        raise ConfigError(f"design {args.design!r}: no folder {args.cv_dir / args.design}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        design = args.cv_dir / args.design
        truth = load_truth()
        grid = frame_grid(load_run(Path("training/configs/sed.yaml")))
        oof = oof_outputs(design, truth)
        rule = "phase_boxes" if args.boxes else "phase"
        per_seed = [
            RecordCounts.of(score_tables_of(p, truth, rule, grid), truth) for p in oof.values()
        ]
        counts, big = merged(per_seed, truth)
        fitted = fit_thresholds(counts, big, range(len(counts.records)), args.budget)
        cf = cross_fit(counts, big, args.budget)
        oof_summary = {k: round(float(v), 4) for k, v in summary(cf, big, counts.records).items()}
        phases = BOXES_RULE if args.boxes else PHASE_RULE
        section = detector_section(
            fitted, args.design, len(truth.records), len(oof), args.budget, oof_summary, phases
        )
        print(json.dumps({f: vars(v) for f, v in fitted.items()}))
        print(json.dumps(section["validation"]))
        quality = gate_section(design, oof, truth, grid, args)
        print(json.dumps(quality))
    return {"detector": section, "quality": quality}


def seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def gate_section(
    design: Path,
    oof: Mapping[int, Mapping[str, np.ndarray]],
    truth: Truth,
    grid: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The manifest's ``quality`` block (:mod:`training.cv.gate`), with cross-fitted shares."""
    from training.cv.gate import GAP, ON_GRID, cross_fit_gate, fit_gate, gate_outputs, replay

    frame_s = grid.frame_samples / grid.sample_rate_hz
    outputs = gate_outputs(oof, truth, design, icbhi_patients(), frame_s)
    counts = replay(outputs, args.window_frames, frame_s)
    limits = (args.max_good_share, args.max_other_time)
    on = ON_GRID[fit_gate(counts, np.ones(len(counts.names), bool), *limits)]
    cf = cross_fit_gate(counts, *limits, k=max(truth.folds.values()) + 1)
    print("poor_on  good records flagged  Poor Quality records flagged  ICBHI time (out of fold)")
    for threshold, shares in cf.at.items():
        print(
            f"{threshold:>7}  {shares['good']:20.3f}  {shares['poor_quality']:28.3f}  "
            f"{shares['other_time']:10.3f}"
        )
    other = ""
    if args.max_other_time < 1.0:
        other = f" and <= {args.max_other_time:.0%} of ICBHI train's time under it"
    return {
        "poor_on": on,
        "poor_off": round(on - GAP, 3),
        "fitted_on": f"out-of-fold outputs of the design {design.name!r} ({seeds(len(oof))}): "
        f"the lowest poor_on with <= {args.max_good_share:.0%} of good SPRSound train "
        f"records raising poor_signal{other}, windows of {args.window_frames} frames",
        "validation": {
            "cross_fitted": {k: round(v, 4) for k, v in cf.held_out.items()},
            "fold_thresholds": cf.thresholds,
        },
    }


def add_rules_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--design", required=True, help="the design whose OOF outputs fit the rules")
    p.add_argument("--model", type=Path, default=None, help="model folder whose manifest gets them")
    p.add_argument("--budget", type=float, default=10.0, help=BUDGET_HELP)
    p.add_argument("--cv-dir", type=Path, default=DEFAULT_OUT, help="designs' parent folder")
    p.add_argument(
        "--boxes",
        action="store_true",
        help="cut the CAS classes' events on their own change-point boxes, the DAS classes' "
        "on breath phases (the phase_boxes rule); default: every class on phases",
    )
    p.add_argument(
        "--section",
        action="append",
        choices=("detector", "quality"),
        help="write only this manifest section (repeatable; default both)",
    )
    for flag, default, what in (
        ("--max-good-share", 0.02, "share of good SPRSound records the quality gate may flag"),
        ("--max-other-time", 1.0, "share of other stethoscopes' (ICBHI's) time it may flag"),
        ("--window-frames", 12, "output frames per device window, the gate's reading"),
    ):
        p.add_argument(flag, type=type(default), default=default, help=f"{what} ({default=})")
