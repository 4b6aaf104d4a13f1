"""Will TensorRT 10's ONNX parser take this model? A static check, run before shipping.

    python -m export.opcheck models/sed/model.int8.onnx     # prints findings, exit 1 if any

:func:`check_tensorrt_compat`'s five checks are listed in docs/export.md, "Operator check". It
is a screen, not a proof: per-operator restrictions are left to the real parser on the device.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError

OPS_FILE = Path(__file__).with_name("tensorrt10_ops.txt")
STANDARD_DOMAINS = ("", "ai.onnx")
MIN_OPSET = 9
MAX_OPSET = 20  # TensorRT 10.0 reads opsets 9..20
FIXED_BATCH = 1  # the batch size substituted for the intermediate-shape check
MAX_TENSORS_LISTED = 8
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QDQ_ZERO_POINT_INPUT = 2  # inputs: x, scale, zero_point


class OpCheckError(LungwatchError):
    """The model file cannot be read, or the supported-operator list is missing."""


@functools.lru_cache(maxsize=4)
def supported_ops(path: Path = OPS_FILE) -> frozenset[str]:
    """The operator names of ``path`` (one per line, ``#`` comments and blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise OpCheckError(f"{path}: cannot read the supported-operator list ({exc})") from None
    return frozenset(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)


def check_tensorrt_compat(model_path: str | Path) -> list[str]:
    import onnx
    from google.protobuf.message import DecodeError

    model_path = Path(model_path)
    try:
        model = onnx.load(str(model_path))  # external data included
    except OSError as exc:
        raise OpCheckError(f"{model_path}: cannot read the ONNX model ({exc})") from None
    except (DecodeError, ValueError) as exc:
        raise OpCheckError(f"{model_path}: not an ONNX model ({exc})") from None
    return [
        *check_opset(model),
        *check_operators(model.graph),
        *check_qdq_zero_points(model.graph),
        *check_io_dims(model.graph),
        *check_intermediate_dims(model),
    ]


def check_opset(model: Any) -> list[str]:
    for opset in model.opset_import:
        if opset.domain in STANDARD_DOMAINS and not MIN_OPSET <= opset.version <= MAX_OPSET:
            return [f"opset {opset.version}: TensorRT 10.0 reads opsets {MIN_OPSET}..{MAX_OPSET}"]
    return []


def iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_nodes(subgraph)


def check_operators(graph: Any, supported: frozenset[str] | None = None) -> list[str]:
    supported = supported_ops() if supported is None else supported
    offenders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node in iter_nodes(graph):
        if node.domain not in STANDARD_DOMAINS or node.op_type not in supported:
            offenders[(node.domain, node.op_type)].append(node.name or "<unnamed>")
    problems = []
    for (domain, op_type), names in sorted(offenders.items()):
        where = f"{len(names)} node(s), e.g. {names[0]!r}"
        if domain not in STANDARD_DOMAINS:
            problems.append(f"op {domain}.{op_type} ({where}): non-standard domain {domain!r}")
        else:
            problems.append(f"op {op_type} ({where}): not supported by TensorRT 10's parser")
    return problems


def check_qdq_zero_points(graph: Any) -> list[str]:
    from onnx import TensorProto, numpy_helper

    zero_points = {init.name: init for init in graph.initializer}
    bad: list[str] = []
    for node in iter_nodes(graph):
        if node.op_type not in QDQ_OPS or len(node.input) < QDQ_ZERO_POINT_INPUT + 1:
            continue
        init = zero_points.get(node.input[QDQ_ZERO_POINT_INPUT])
        if init is None:
            continue
        if init.data_type != TensorProto.INT8 or numpy_helper.to_array(init).any():
            bad.append(node.name or node.input[QDQ_ZERO_POINT_INPUT])
    if not bad:
        return []
    return [
        f"{len(bad)} Q/DQ node(s) with a zero point that is not int8 0, e.g. {bad[0]!r} "
        "(TensorRT wants symmetric int8)"
    ]


def _dims(value_info: Any) -> list[Any] | None:
    tensor_type = value_info.type.tensor_type
    return list(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def _describe(dim: Any) -> str:
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return repr(dim.dim_param) if dim.dim_param else "unknown"


def check_io_dims(graph: Any) -> list[str]:
    initializers = {init.name for init in graph.initializer}
    problems = []
    for role, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.name in initializers:
                continue  # old IR versions list initializers as inputs
            dims = _dims(value)
            if dims is None:
                problems.append(f"{role} {value.name!r}: no shape recorded (need static dims)")
                continue
            problems += [
                f"{role} {value.name!r} dim {axis} is {_describe(dim)}; "
                "only dim 0 (batch) may be dynamic"
                for axis, dim in enumerate(dims)
                if axis > 0 and not (dim.HasField("dim_value") and dim.dim_value > 0)
            ]
    return problems


def check_intermediate_dims(model: Any) -> list[str]:
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in fixed.graph.input:
        if _dims(value):
            value.type.tensor_type.shape.dim[0].dim_value = FIXED_BATCH
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        return [f"shape inference failed with the batch fixed to {FIXED_BATCH}: {exc}"]
    unresolved = [
        f"{value.name!r} dim {axis} ({_describe(dim)})"
        for value in inferred.graph.value_info
        for axis, dim in enumerate(_dims(value) or [])
        if not dim.HasField("dim_value")
    ]
    if not unresolved:
        return []
    shown = ", ".join(unresolved[:MAX_TENSORS_LISTED])
    more = len(unresolved) - MAX_TENSORS_LISTED
    return [
        f"{len(unresolved)} intermediate dim(s) not derived from the batch: {shown}"
        + (f" and {more} more" if more > 0 else "")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m export.opcheck", description=__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files to check")
    args = parser.parse_args(argv)
    failed = False
    for model_path in args.models:
        problems = check_tensorrt_compat(model_path)
        failed = failed or bool(problems)
        status = f"{len(problems)} problem(s)" if problems else "ok, no TensorRT 10 problems found"
        print(f"{model_path}: {status}")
        for problem in problems:
            print(f"  - {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except LungwatchError as error:
        raise SystemExit(f"opcheck: error: {error}") from None
