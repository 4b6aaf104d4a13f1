"""export.opcheck: the TensorRT 10 screen on real exported models and hand-built graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.opcheck import (
    OPS_FILE,
    OpCheckError,
    check_tensorrt_compat,
    main,
    supported_ops,
)

FLOAT = TensorProto.FLOAT


def _save(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    initializers: tuple[onnx.TensorProto, ...] = (),
    opsets: tuple[tuple[str, int], ...] = (("", 17),),
) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _relu_model(tmp_path: Path, input_dims: list[int | str], **kwargs: object) -> Path:
    x = helper.make_tensor_value_info("features", FLOAT, input_dims)
    y = helper.make_tensor_value_info("logits", FLOAT, input_dims)
    return _save(tmp_path, [helper.make_node("Relu", ["features"], ["logits"])], [x], [y], **kwargs)


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_exported_models_pass(quantized_dir: Path, name: str) -> None:
    assert check_tensorrt_compat(quantized_dir / name) == []


def test_a_clean_hand_built_graph_passes(tmp_path: Path) -> None:
    assert check_tensorrt_compat(_relu_model(tmp_path, ["batch", 1, 32, 96])) == []


def test_unsupported_standard_op_is_flagged(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("features", FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("logits", FLOAT, [None])
    node = helper.make_node("Unique", ["features"], ["logits"], name="dedupe")
    problems = check_tensorrt_compat(_save(tmp_path, [node], [x], [y]))
    assert "op Unique (1 node(s), e.g. 'dedupe'): not supported by TensorRT 10's parser" in problems


def test_custom_domain_op_is_flagged(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("features", FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("logits", FLOAT, ["batch", 8])
    node = helper.make_node("Relu", ["features"], ["logits"], name="mine", domain="com.example")
    path = _save(tmp_path, [node], [x], [y], opsets=(("", 17), ("com.example", 1)))
    problems = check_tensorrt_compat(path)
    assert problems == [
        "op com.example.Relu (1 node(s), e.g. 'mine'): non-standard domain 'com.example'"
    ]


def test_ops_in_subgraphs_are_checked(tmp_path: Path) -> None:
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("logits", FLOAT, [2])
    branch_out = helper.make_tensor_value_info("b", FLOAT, [2])
    const = numpy_helper.from_array(np.ones(2, dtype=np.float32), "one")
    then_graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["a"], value=const),
            helper.make_node("Det", ["a"], ["b"]),
        ],
        "then",
        [],
        [branch_out],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=const)], "else", [], [branch_out]
    )
    node = helper.make_node(
        "If", ["cond"], ["logits"], then_branch=then_graph, else_branch=else_graph
    )
    problems = check_tensorrt_compat(_save(tmp_path, [node], [cond], [y]))
    assert any(p.startswith("op Det (1 node(s)") for p in problems)


def test_non_batch_dynamic_input_dim_is_flagged(tmp_path: Path) -> None:
    problems = check_tensorrt_compat(_relu_model(tmp_path, ["batch", 1, 32, "frames"]))
    assert "input 'features' dim 3 is 'frames'; only dim 0 (batch) may be dynamic" in problems
    assert "output 'logits' dim 3 is 'frames'; only dim 0 (batch) may be dynamic" in problems


def test_data_dependent_intermediate_dim_is_flagged(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("features", FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.INT64, [2])
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("NonZero", ["features"], ["where"]),  # (2, data dependent)
        helper.make_node("ReduceSum", ["where", "axes"], ["logits"], keepdims=0),
    ]
    problems = check_tensorrt_compat(_save(tmp_path, nodes, [x], [y], initializers=(axes,)))
    assert len(problems) == 1
    assert problems[0].startswith("1 intermediate dim(s) not derived from the batch: 'where' dim 1")


def test_reshape_of_the_batch_is_not_flagged(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("features", FLOAT, ["batch", 1, 32, 96])
    y = helper.make_tensor_value_info("logits", FLOAT, ["batch", 3])
    shape = numpy_helper.from_array(np.array([-1, 32 * 96], dtype=np.int64), "shape")
    weight = numpy_helper.from_array(np.zeros((32 * 96, 3), dtype=np.float32), "weight")
    nodes = [
        helper.make_node("Reshape", ["features", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    path = _save(tmp_path, nodes, [x], [y], initializers=(shape, weight))
    assert check_tensorrt_compat(path) == []


def test_opset_and_zero_points_are_checked(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("features", FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", FLOAT, ["batch", 4])
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["features", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["logits"], name="dq"),
    ]
    path = _save(tmp_path, nodes, [x], [y], initializers=(scale, zero), opsets=(("", 21),))
    problems = check_tensorrt_compat(path)
    assert "opset 21: TensorRT 10.0 reads opsets 9..20" in problems
    zero_point_problem = "2 Q/DQ node(s) with a zero point that is not int8 0, e.g. 'q'"
    assert any(p.startswith(zero_point_problem) for p in problems)


def test_supported_list_is_clean() -> None:
    ops = supported_ops()
    lines = [line.strip() for line in OPS_FILE.read_text().splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    assert len(names) == len(set(names)) == len(ops)
    assert {"Conv", "MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    assert {"Unique", "QLinearConv", "ConvInteger", "MatMulInteger"}.isdisjoint(ops)
    assert all(name.isidentifier() for name in names)


def test_main_prints_findings_and_exits_1(
    quantized_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(quantized_dir / "model.int8.onnx")]) == 0
    assert "ok, no TensorRT 10 problems found" in capsys.readouterr().out
    bad = _relu_model(tmp_path, ["batch", "bands"])
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: 2 problem(s)" in out
    assert "  - input 'features' dim 1 is 'bands'" in out


def test_unreadable_model_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(OpCheckError, match=r"junk\.onnx: not an ONNX model"):
        check_tensorrt_compat(tmp_path / "junk.onnx")
    with pytest.raises(OpCheckError, match="cannot read"):
        check_tensorrt_compat(tmp_path / "missing.onnx")
