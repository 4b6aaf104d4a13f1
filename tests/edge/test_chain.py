"""One source of truth for detector settings (edge.bed.chain.resolve_detector / resolve_gate):
a config value takes effect or is refused naming the manifest rule that decides instead; the
shipped configs resolve against the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.bed.chain import resolve_detector, resolve_gate
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.bed.rules import ClassThreshold
from edge.inference.manifest import load_manifest
from edge.runtime.config import load_runtime_config
from edge.runtime.detect import load_detect_config
from lungwatch.config import load_yaml
from lungwatch.errors import ConfigError
from tests.edge.runtime_helpers import MODEL_DIR, REPO_ROOT

pytest.importorskip("torch")
from tests.streaming_fixture import tiny_streaming_folder

FITTED = {"on_threshold": 0.7, "off_threshold": 0.55, "min_event_ms": 120.0, "merge_gap_ms": 80.0}
TYPES = ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor")


@pytest.fixture(scope="module")
def hysteresis(tmp_path_factory: pytest.TempPathFactory):
    """A model folder whose manifest fits per-class hysteresis rules (no phase rule)."""
    rules = {"thresholds": [{"type": t, **FITTED} for t in TYPES], "fitted_on": "test"}
    folder = tiny_streaming_folder(
        tmp_path_factory.mktemp("rules"), rules, {"poor_on": 0.8, "poor_off": 0.7}
    )
    return load_manifest(folder / "manifest.json")


def test_the_manifest_rules_apply_when_the_config_sets_nothing(hysteresis) -> None:
    resolved = resolve_detector(DetectorConfig(), hysteresis)
    for t in TYPES:
        rule = resolved.rule_of(t)
        assert (rule.on_threshold, rule.off_threshold) == (0.7, 0.55)
        assert (rule.min_event_ms, rule.merge_gap_ms) == (120.0, 80.0)


def test_each_setting_takes_effect_on_every_class_the_config_does_not_name(hysteresis) -> None:
    config = DetectorConfig(
        on_threshold=0.8,
        min_event_ms=300.0,
        thresholds=(ClassThreshold("Wheeze", 0.5, 0.3),),
    )
    resolved = resolve_detector(config, hysteresis)
    crackle, wheeze = resolved.rule_of("Fine Crackle"), resolved.rule_of("Wheeze")
    assert (crackle.on_threshold, crackle.off_threshold, crackle.min_event_ms) == (0.8, 0.55, 300)
    assert crackle.merge_gap_ms == 80.0  # not set: the fitted value
    assert (wheeze.on_threshold, wheeze.off_threshold) == (0.5, 0.3)
    assert wheeze.min_event_ms == 300.0  # the class rule leaves it to the setting


def test_a_setting_that_breaks_a_fitted_rule_is_refused_naming_it(hysteresis) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve_detector(DetectorConfig(on_threshold=0.4), hysteresis, "ward.yaml")
    assert str(refused.value) == (
        "ward.yaml: detector.on_threshold 0.4 lies below Fine Crackle's off_threshold 0.55 "
        f"({hysteresis.path}: detector.thresholds); set detector.off_threshold too"
    )
    ok = resolve_detector(DetectorConfig(on_threshold=0.4, off_threshold=0.3), hysteresis)
    assert ok.rule_of("Stridor").off_threshold == 0.3


def test_in_phase_mode_span_settings_are_refused_and_thresholds_apply() -> None:
    shipped = load_manifest(MODEL_DIR / "manifest.json")
    assert shipped.detector_phases is not None
    own = DetectorConfig(thresholds=(ClassThreshold("Wheeze", 0.5, 0.4),))
    with pytest.raises(ConfigError, match=r"detector.thresholds\[Wheeze\].off_threshold does not"):
        resolve_detector(own, shipped, "ward.yaml")
    resolved = resolve_detector(DetectorConfig(on_threshold=0.2), shipped)
    assert {resolved.rule_of(t).on_threshold for t in TYPES} == {0.2}
    assert resolved.phases == shipped.detector_phases


def test_the_gate_takes_the_config_else_the_manifest(hysteresis) -> None:
    assert resolve_gate(GateConfig(), hysteresis).poor_quality_thresholds == (0.8, 0.7)
    own = GateConfig(poor_quality_on_threshold=0.9)
    assert resolve_gate(own, hysteresis).poor_quality_thresholds == (0.9, 0.7)
    with pytest.raises(ConfigError, match=r"poor_quality_off_threshold 0.85 lies above .* 0.8"):
        resolve_gate(GateConfig(poor_quality_off_threshold=0.85), hysteresis, "ward.yaml")


@pytest.mark.parametrize("path", ["edge/configs/ward.yaml", "demo/demo.yaml"])
def test_the_shipped_configs_resolve_against_the_shipped_model(path: str) -> None:
    """No shipped config carries a setting the manifest's rules make moot: each resolves
    (and a detector section that names no rule leaves every class at its fitted rule)."""
    manifest = load_manifest(MODEL_DIR / "manifest.json")
    data = load_yaml(REPO_ROOT / path)
    detector = load_detect_config(REPO_ROOT / path).detector
    resolved = resolve_detector(detector, manifest, path)
    fitted = {r["type"]: r["on_threshold"] for r in manifest.detector_rules}
    if "on_threshold" not in data.get("detector", {}):
        assert {t: resolved.rule_of(t).on_threshold for t in fitted} == fitted


def test_detect_knows_the_demo_configs_own_keys() -> None:
    import dataclasses

    from demo.run import DemoConfig
    from edge.runtime.config import RuntimeConfig
    from edge.runtime.detect import DEMO_KEYS

    runtime = {f.name for f in dataclasses.fields(RuntimeConfig)}
    demo = {f.name for f in dataclasses.fields(DemoConfig)}
    assert set(DEMO_KEYS) == demo - runtime


def test_detect_takes_a_config_without_streams(tmp_path: Path) -> None:
    path = tmp_path / "detect.yaml"
    path.write_text("detector:\n  on_threshold: 0.8\ngate:\n  silence_dbfs: -70\n")
    config = load_detect_config(path)
    assert config.detector.on_threshold == 0.8
    assert config.gate.silence_dbfs == -70
    with pytest.raises(ConfigError, match="streams must be given"):
        load_runtime_config(path)  # the runtime still needs its beds


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    """A manifest in phase mode whose wheeze-family classes keep their own hysteresis."""
    rules = {"thresholds": [{"type": t, **FITTED} for t in TYPES], "fitted_on": "test",
             "phases": {"on_threshold": 0.6, "off_threshold": 0.5, "min_phase_ms": 240.0,
                        "output": "Breath", "lead_ms": 120.0,
                        "frame_classes": ["Wheeze", "Rhonchi", "Stridor"]}}  # fmt: skip
    folder = tiny_streaming_folder(tmp_path_factory.mktemp("mixed"), rules)
    return load_manifest(folder / "manifest.json")


def test_span_settings_apply_to_the_frame_classes_of_a_phase_rule(mixed) -> None:
    assert mixed.detector_phases.frame_classes == ("Wheeze", "Rhonchi", "Stridor")
    resolved = resolve_detector(DetectorConfig(min_event_ms=300.0), mixed)
    assert resolved.rule_of("Wheeze").min_event_ms == 300.0  # its own hysteresis: takes it
    assert resolved.rule_of("Wheeze").off_threshold == 0.55  # fitted, kept
    own = DetectorConfig(thresholds=(ClassThreshold("Stridor", 0.8, 0.6, 200.0),))
    assert resolve_detector(own, mixed).rule_of("Stridor").min_event_ms == 200.0
    crackle = DetectorConfig(thresholds=(ClassThreshold("Fine Crackle", 0.8, 0.6),))
    with pytest.raises(ConfigError, match=r"thresholds\[Fine Crackle\].off_threshold does not"):
        resolve_detector(crackle, mixed)
