"""LungNet: shapes, budgets, heads, branch combination, focusing, input stats, ONNX parity."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn.functional import cross_entropy

from edge.config import from_mapping, to_mapping
from edge.errors import ConfigError
from training.models import LungNet, ModelConfig, build_model, count_parameters
from training.models.blocks import BranchEncoder, CosineHead

SEED = 1234
EDGE_PARAM_BUDGET = 500_000
TINY = {
    "n_bands": 16,
    "n_frames": 32,
    "n_classes": 3,
    "channels": (8, 16),
    "embed_dim": 16,
    "attention_heads": 2,
}
TINY_STEPS = 8  # 32 frames halved twice
ONNX_TOLERANCE = 1e-4
ONNX_OUTPUTS = ("logits", "binary_logits", "embedding")
STANDARD_OPS = {
    "Add", "Clip", "Concat", "Constant", "Conv", "Div", "Gemm", "Identity", "LayerNormalization",
    "MatMul", "Mul", "ReduceL2", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Slice", "Softmax",
    "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze",
}  # fmt: skip
LEGACY_EXPORT_WARNINGS = (
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch (the one-thread fixture is in conftest.py)."""
    torch.manual_seed(SEED)


def tiny(**overrides: object) -> ModelConfig:
    """A small config that builds and runs in milliseconds."""
    return ModelConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


def features(cfg: ModelConfig, batch: int, seed: int = SEED) -> torch.Tensor:
    """(B, K, F, T) standard-normal features for ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.n_branches, cfg.n_bands, cfg.n_frames, generator=g)


@pytest.mark.parametrize("arch", ["edge", "multibranch"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
@pytest.mark.parametrize("focusing", [False, True])
def test_output_shapes(arch: str, head: str, focusing: bool) -> None:
    branches = 3 if arch == "multibranch" else 1
    cfg = tiny(arch=arch, head=head, focusing=focusing, n_branches=branches)
    model = build_model(cfg).eval()
    logits, binary, embedding = model(features(cfg, 5))
    assert logits.shape == (5, 3)
    assert binary.shape == (5, 2)
    assert embedding.shape == (5, 16)
    assert model.encode_sequence(features(cfg, 5)).shape == (5, TINY_STEPS, 16)
    assert cfg.out_frames == TINY_STEPS


@pytest.mark.parametrize("extra", [{}, {"focusing": True, "head": "cosine"}])
def test_edge_model_within_parameter_budget(extra: dict[str, object]) -> None:
    cfg = ModelConfig(arch="edge", n_bands=64, n_frames=200, n_classes=8, **extra)  # type: ignore[arg-type]
    n_params = count_parameters(build_model(cfg))
    assert 100_000 < n_params <= EDGE_PARAM_BUDGET


def test_arch_defaults_and_config_loading() -> None:
    assert ModelConfig(arch="edge").channels == (32, 64, 128)
    assert ModelConfig(arch="edge").blocks_per_stage == 1
    assert ModelConfig(arch="multibranch").blocks_per_stage == 2
    cfg = from_mapping(ModelConfig, {"arch": "multibranch", "n_branches": 3, "channels": [8, 16]})
    assert cfg.channels == (8, 16)
    assert from_mapping(ModelConfig, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"attention_heads": 3}, "run.yaml: attention_heads must be a divisor of embed_dim, got 3"),
        ({"channels": [8, 10]}, "run.yaml: channels must be positive multiples of 4"),
        ({"head": "arc"}, "run.yaml: head must be one of 'linear', 'cosine', got 'arc'"),
        ({"dropout": 1.0}, "run.yaml: dropout must be in [0, 1), got 1.0"),
        ({"n_branches": 0}, "run.yaml: n_branches must be an integer >= 1, got 0"),
    ],
)
def test_invalid_config_names_the_key(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_mapping(ModelConfig, mapping, source="run.yaml")


def test_cosine_head_logits_bounded_by_scale() -> None:
    scale = 0.5
    cfg = tiny(head="cosine", cosine_scale=scale)
    logits, _, _ = build_model(cfg).eval()(100.0 * features(cfg, 16))
    assert logits.abs().max() <= scale + 1e-6
    head = CosineHead(dim=4, n_classes=2, scale=scale)
    direction = head.weight.detach()[1:2] * 7.0  # same direction as class 1, another norm
    assert head(direction)[0, 1].item() == pytest.approx(scale, abs=1e-6)


def test_branch_combination_is_learned_and_not_concatenation() -> None:
    cfg = tiny(arch="multibranch", n_branches=3)
    model = build_model(cfg)
    assert (
        model(features(cfg, 2))[2].shape[1] == build_model(tiny())(features(tiny(), 2))[2].shape[1]
    )
    logits, _, _ = model(features(cfg, 4))
    logits.sum().backward()
    grad = model.combine.logits.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    model.eval()
    x = features(cfg, 4)
    before = model(x)[0]
    with torch.no_grad():
        model.combine.logits.copy_(torch.tensor([30.0, -30.0, -30.0]))
    after = model(x)[0]
    assert not torch.allclose(before, after, atol=1e-4)
    x_other = x.clone()
    x_other[:, 1:] = torch.randn_like(x_other[:, 1:])  # only the (now muted) branches change
    torch.testing.assert_close(model(x_other)[0], after, atol=1e-5, rtol=0)


def test_focusing_variant_runs_and_changes_the_output() -> None:
    plain = build_model(tiny()).eval()
    focused = build_model(tiny(focusing=True)).eval()
    result = focused.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys
    assert all(".focus." in key for key in result.missing_keys)
    x = features(tiny(), 3)
    assert not torch.allclose(plain(x)[0], focused(x)[0], atol=1e-4)
    branch = focused.branches[0]
    assert isinstance(branch, BranchEncoder)
    assert branch.focus is not None
    freq_w, time_w = branch.focus.weights(branch.backbone(x))
    torch.testing.assert_close(freq_w.mean(dim=2), torch.ones_like(freq_w.mean(dim=2)))
    torch.testing.assert_close(time_w.mean(dim=3), torch.ones_like(time_w.mean(dim=3)))


def test_input_stats_are_applied_and_saved() -> None:
    cfg = tiny(n_branches=2)
    model = build_model(cfg).eval()
    reference = build_model(cfg).eval()
    reference.load_state_dict(model.state_dict())
    mean = torch.linspace(-3.0, 3.0, 2 * 16).reshape(2, 16)
    std = torch.linspace(0.5, 4.0, 2 * 16).reshape(2, 16)
    model.set_input_stats(mean, std.numpy())
    x = features(cfg, 3) * 2.0 + 1.0
    expected = reference((x - mean[..., None]) / std[..., None])[0]
    torch.testing.assert_close(model(x)[0], expected)
    state = model.state_dict()
    torch.testing.assert_close(state["input_mean"], mean)
    torch.testing.assert_close(state["input_std"], std)
    restored = build_model(cfg).eval()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(x)[0], model(x)[0])


@pytest.mark.parametrize(
    ("mean_shape", "std_value", "message"),
    [((3, 16), 1.0, "input mean must have shape"), ((2, 16), 0.0, "input std must be > 0")],
)
def test_input_stats_rejected(mean_shape: tuple[int, int], std_value: float, message: str) -> None:
    model = build_model(tiny(n_branches=2))
    with pytest.raises(ValueError, match=message):
        model.set_input_stats(np.zeros(mean_shape), np.full((2, 16), std_value))


def test_wrong_input_shape_is_rejected() -> None:
    model = build_model(tiny())
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 1, 16, 32\)"):
        model(torch.zeros(2, 1, 16, 31))


def export_onnx(model: LungNet, path: Path) -> None:
    """Legacy (TorchScript) exporter: opset 17, dynamic batch only, weights inside the file."""
    cfg = model.cfg
    example = torch.zeros(1, cfg.n_branches, cfg.n_bands, cfg.n_frames)
    names = ("features", *ONNX_OUTPUTS)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["features"],
        output_names=list(ONNX_OUTPUTS),
        dynamic_axes={name: {0: "batch"} for name in names},
    )


@pytest.mark.filterwarnings(*LEGACY_EXPORT_WARNINGS)
@pytest.mark.parametrize(
    "overrides",
    [{}, {"head": "cosine", "focusing": True}, {"arch": "multibranch", "n_branches": 2}],
    ids=["edge", "edge-cosine-focusing", "multibranch"],
)
def test_onnx_export_matches_onnxruntime(tmp_path: Path, overrides: dict[str, object]) -> None:
    cfg = tiny(**overrides)
    model = build_model(cfg).eval()
    model.set_input_stats(
        torch.full((cfg.n_branches, 16), 0.5), torch.full((cfg.n_branches, 16), 2.0)
    )
    export_onnx(model, tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file, no external data
    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert {node.op_type for node in graph.graph.node} <= STANDARD_OPS
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [cfg.n_branches, 16, 32]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = features(cfg, batch, seed=batch)
        with torch.no_grad():
            expected = model(x)
        got = session.run(list(ONNX_OUTPUTS), {"features": x.numpy()})
        for ours, theirs in zip(expected, got, strict=True):
            assert np.abs(ours.numpy() - theirs).max() <= ONNX_TOLERANCE


def tone_band_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 windows carry a steady tone in bands 4-6 over noise; class 0 is noise only."""
    x = torch.randn(batch, 1, 16, 32, generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    x[:, :, 4:7, :] += 1.5 * labels.view(-1, 1, 1, 1)
    return x, labels


def test_toy_problem_is_learned_in_a_few_dozen_steps() -> None:
    model = build_model(tiny(n_classes=2, dropout=0.0))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(40):
        x, y = tone_band_batch(32, g)
        loss = cross_entropy(model(x)[0], y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x, y = tone_band_batch(256, torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        accuracy = (model(x)[0].argmax(dim=1) == y).float().mean().item()
    assert accuracy >= 0.95


def test_config_is_a_plain_frozen_dataclass() -> None:
    cfg = tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_bands = 8  # type: ignore[misc]
