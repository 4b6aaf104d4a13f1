"""``lungwatch export``: real torch export, real onnx checks, real onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.to_onnx import (
    PARITY_ATOL,
    ExportError,
    check_single_file,
    export_checkpoint,
    main,
    ort_session,
    parity_max_abs_diff,
)
from tests.edge.runtime_helpers import lungwatch
from training.checkpoint import CheckpointError, load_model


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_reproduces_torch_logits(
    exported_dir: Path, tiny_checkpoint: Path, batch: int
) -> None:
    loaded = load_model(tiny_checkpoint)
    rng = np.random.default_rng(batch)
    x = rng.normal(-8.0, 3.0, size=(batch, 1, 32, 96)).astype(np.float32)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x))[0].numpy()
    (actual,) = ort_session(exported_dir / "model.onnx").run(["logits"], {"features": x})
    assert actual.shape == (batch, 3)
    assert np.max(np.abs(actual - expected)) <= PARITY_ATOL
    assert np.ptp(expected) > 0.1  # the logits are not trivially constant


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in value.type.tensor_type.shape.dim
    ]


def test_contract_only_batch_dynamic_one_file_opset(exported_dir: Path) -> None:
    model = onnx.load(str(exported_dir / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert [(v.name, _dims(v)) for v in model.graph.input] == [("features", ["batch", 1, 32, 96])]
    assert [(v.name, _dims(v)) for v in model.graph.output] == [("logits", ["batch", 3])]
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert sorted(p.name for p in exported_dir.iterdir()) == ["manifest.json", "model.onnx"]


def test_single_file_check_flags_external_data(exported_dir: Path, tmp_path: Path) -> None:
    model = onnx.load(str(exported_dir / "model.onnx"))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    external = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    with pytest.raises(ExportError, match="use external data"):
        check_single_file(external, tmp_path / "ext.onnx")


def test_parity_check_sees_a_model_that_differs(exported_dir: Path, tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    assert parity_max_abs_diff(loaded, exported_dir / "model.onnx") <= PARITY_ATOL
    with torch.no_grad():
        loaded.model.classifier.bias.add_(0.01)
    assert parity_max_abs_diff(loaded, exported_dir / "model.onnx") > PARITY_ATOL


def test_opset_18_is_honoured(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = export_checkpoint(tiny_checkpoint, tmp_path / "m18.onnx", opset=18, hop_frames=10)
    model = onnx.load(str(out))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert '"hop_frames": 10' in (tmp_path / "manifest.json").read_text()


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--opset", "16"], "--opset must be in [17, 20], got 16"),
        (["--hop-frames", "97"], "--hop-frames must be in [1, window_frames=96]"),
    ],
)
def test_bad_options_are_one_line_errors(
    tiny_checkpoint: Path, tmp_path: Path, argv_tail: list[str], message: str
) -> None:
    with pytest.raises(ExportError) as info:
        main([str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), *argv_tail])
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])


def test_cli_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    result = lungwatch("export", str(tmp_path / "nope.pt"), "--out", "x.onnx")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"lungwatch export: error: {tmp_path / 'nope.pt'}: checkpoint not found"
    ]
