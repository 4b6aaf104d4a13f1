"""``lungwatch verify``: the reference written from the shipped FP32 model, and every artifact
checked against it through the device path (real files, a real ONNX Runtime session).

A corrupted INT8 file is caught two ways: flipped bytes by the manifest's sha256, and a still
valid ONNX whose quantization scales were changed (its sha256 updated in the manifest, so only
the gate can tell) by the output frames and the events. The tolerance boundaries are tested on
:func:`export.verify.compare` itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_audio
from edge.inference.manifest import load_manifest, sha256_file, verify_file
from edge.inference.manifest_write import record_artifact
from edge.runtime.offline import RecordingEvents
from export import verify
from export.verify import (
    REFERENCE_NAME,
    TOLERANCES,
    Recording,
    Reference,
    Tolerance,
    compare,
    match_events,
)

REPO = Path(__file__).resolve().parents[2]
SED = REPO / "models" / "sed"
EXAMPLES = sorted((REPO / "examples").glob("*.flac"))
FP32_STAGE = "onnxruntime model.onnx (fp32)"
INT8_STAGE = "onnxruntime model.int8.onnx (int8)"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``lungwatch verify ARGV`` in this process: (exit status, stdout, stderr)."""
    code = verify.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(stdout: str) -> dict[str, list[str]]:
    """Stage -> the cells of its table row."""
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| stage ")
    ]
    return {c[0]: c[1:] for c in cells}


def copy_models(dest: Path, source: Path = SED) -> Path:
    """The manifest and every file it lists (not model.pt: the device has no torch)."""
    dest.mkdir(parents=True)
    for name in ["manifest.json", *json.loads((source / "manifest.json").read_text())["files"]]:
        shutil.copy2(source / name, dest / name)
    return dest


def rerecord(folder: Path, name: str) -> None:
    """Update ``files[name]``'s sha256 and bytes to the file's (a change the manifest misses)."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["files"][name].update(
        sha256=sha256_file(folder / name), bytes=(folder / name).stat().st_size
    )
    path.write_text(json.dumps(data, indent=2))


def alter_int8_scale(folder: Path, factor: float = 2.0) -> str:
    """Multiply the weight scales of the first 96x96 1x1 convolution of ``model.int8.onnx``
    (one initializer) by ``factor``; the file stays a valid ONNX model and the manifest
    records its new sha256. Returns the initializer's name."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = folder / "model.int8.onnx"
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    weight_dq = [
        n for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
        and tuple(inits[n.input[0]].dims) == (96, 96, 1)
    ]  # fmt: skip
    scale = inits[weight_dq[0].input[1]]
    altered = numpy_helper.to_array(scale) * np.float32(factor)
    scale.CopyFrom(numpy_helper.from_array(altered.astype(np.float32), scale.name))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    rerecord(folder, path.name)
    return scale.name


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of models/sed whose reference was written here from the three examples."""
    folder = copy_models(tmp_path_factory.mktemp("verify") / "sed")
    (folder / REFERENCE_NAME).unlink(missing_ok=True)
    assert verify.main(["--model-dir", str(folder), "--write-reference"]) == 0
    return folder


@pytest.fixture
def folder(written: Path, tmp_path: Path) -> Path:
    """A private copy of ``written``, for tests that change files."""
    return Path(shutil.copytree(written, tmp_path / "sed"))


# -- the shipped models pass ------------------------------------------------------------------
def test_written_reference_passes_fp32_and_int8(
    written: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--model-dir", str(written), "--reference")
    assert code == 0, err
    table = rows(out)
    assert list(table) == [FP32_STAGE, INT8_STAGE]
    assert all(cells[-1] == "within tolerance" for cells in table.values())
    assert table[FP32_STAGE][0].startswith("0 / 0 ")  # the same model on the same machine
    found = re.search(r"3 recordings \(33\.8 s, 844 frames, (\d+) events\) from model\.onnx", out)
    assert found, out
    events = int(found.group(1))
    assert events >= 10  # the examples hold annotated crackles and wheezes the model finds
    assert table[FP32_STAGE][1].startswith(f"{events}/{events}, 0 missing, 0 extra")
    int8_max = float(table[INT8_STAGE][0].split(" / ")[0])
    assert 0 < int8_max <= TOLERANCES["int8"].max_abs_dp  # the INT8 model really ran


def test_reference_is_recorded_in_the_manifest(written: Path) -> None:
    manifest = load_manifest(written / "manifest.json")
    entry = verify_file(manifest, written / REFERENCE_NAME)
    assert entry.precision == "reference"
    assert entry.extra["source_sha256"] == manifest.files["model.onnx"].sha256
    assert entry.extra["recordings"] == [p.name for p in EXAMPLES]
    checked = entry.extra["checked"]
    assert set(checked) == {FP32_STAGE, INT8_STAGE}
    assert all(row["ok"] for row in checked.values())
    fp32, int8 = checked[FP32_STAGE], checked[INT8_STAGE]
    assert fp32["matched"] == fp32["reference_events"]  # the same model matches every event
    assert int8["matched"] >= 0.8 * int8["reference_events"]  # INT8 within its tolerance


def test_reference_holds_the_audio_and_is_written_identically(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (folder / REFERENCE_NAME).read_bytes()
    with np.load(folder / REFERENCE_NAME, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"].item()))
        for i, path in enumerate(EXAMPLES):
            expected = np.round(read_audio(path, target_rate_hz=8000).samples * 32768)
            assert meta["recordings"][i]["name"] == path.stem
            assert data[f"audio_{i}"].dtype == np.int16
            np.testing.assert_array_equal(data[f"audio_{i}"], expected)
    assert run(capsys, "--model-dir", str(folder), "--write-reference")[0] == 0
    assert (folder / REFERENCE_NAME).read_bytes() == before


def test_shipped_reference_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """models/sed ships its reference, listed in its manifest, and passes the gate."""
    assert REFERENCE_NAME in load_manifest(SED / "manifest.json").files
    code, out, err = run(capsys, "--model-dir", str(SED), "--reference")
    assert code == 0, err
    assert [cells[-1] for cells in rows(out).values()] == ["within tolerance"] * 2


def test_reference_check_needs_no_torch_onnx_or_training(written: Path) -> None:
    """What a device has: the check runs with torch, onnx and training unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'training'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from export.verify import main\n"
        "code = main(['--model-dir', sys.argv[1], '--reference'])\n"
        "assert not {'torch', 'onnx', 'training'} & set(sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(written)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "each within tolerance" in done.stdout


def test_model_option_checks_only_that_file(
    written: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "--model-dir", str(written), "--reference", "--model", "model.int8.onnx"
    )
    assert (code, list(rows(out))) == (0, [INT8_STAGE])
    code, _, err = run(capsys, "--model-dir", str(written), "--reference", "--model", "model.pt")
    assert code == 1
    assert "--model model.pt: not a model listed in" in err


# -- a corrupted INT8 file is caught ----------------------------------------------------------
def test_flipped_bytes_in_int8_are_refused_by_the_manifest_sha256(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray((folder / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.int8.onnx").write_bytes(bytes(data))
    code, out, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 1
    assert rows(out)[FP32_STAGE][-1] == "within tolerance"
    assert rows(out)[INT8_STAGE][-1].startswith("FAIL: model.int8.onnx: sha256 ")
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"lungwatch verify: error: beyond tolerance or refused: {INT8_STAGE}: model.int8.onnx: "
            "sha256 "
        )
    )
    assert "does not match the manifest" in err


def test_altered_int8_scale_passes_sha256_but_not_the_gate(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = alter_int8_scale(folder, 2.0)
    manifest = load_manifest(folder / "manifest.json")
    verify_file(manifest, folder / "model.int8.onnx")  # the sha256 check cannot see it
    code, out, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 1, f"scale {name} x2 passed:\n{out}"
    assert rows(out)[FP32_STAGE][-1] == "within tolerance"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"lungwatch verify: error: beyond tolerance or refused: {INT8_STAGE}: ")
    assert "frames max Δp" in last
    assert FP32_STAGE not in last


# -- the reference itself ---------------------------------------------------------------------
def test_tampered_reference_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray((folder / REFERENCE_NAME).read_bytes())
    data[-100] ^= 0x01
    (folder / REFERENCE_NAME).write_bytes(bytes(data))
    code, out, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert (code, out) == (1, "")
    assert err.startswith(f"lungwatch verify: error: {folder / REFERENCE_NAME}: changed since ")
    assert "sha256" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_reference_is_an_error(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / REFERENCE_NAME).unlink()
    code, out, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert (code, out) == (1, "")
    assert f"{folder / REFERENCE_NAME}: no verify reference" in err
    assert "--write-reference" in err


def test_unrecorded_reference_is_refused(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    del data["files"][REFERENCE_NAME]
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 1
    assert "not recorded in" in err


def test_reference_of_another_model_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = folder / "manifest.json"
    path.write_text(path.read_text().replace('"model_id": "', '"model_id": "other-', 1))
    code, _, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 1
    assert "model_id" in err
    assert "write the reference again (--write-reference)" in err


def test_reference_written_under_other_rules_is_refused(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference's events come from the manifest's detector and quality rules too."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["quality"]["poor_on"] = round(data["quality"]["poor_on"] + 0.05, 4)
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 1
    assert "detector, quality changed since; write the reference again" in err


def test_usage_errors(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        verify.main(["--model-dir", str(written), "--reference", "--audio", str(EXAMPLES[0])])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        verify.main(["--model-dir", str(written)])  # neither mode
    assert exc.value.code == 2


# -- engines ----------------------------------------------------------------------------------
@pytest.mark.skipif(verify.has_tensorrt(), reason="the path without TensorRT")
def test_engine_without_tensorrt_is_skipped_or_refused_when_named(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "model.plan").write_bytes(b"an engine this machine cannot open")
    record_artifact(folder / "manifest.json", folder / "model.plan", precision="int8")
    code, out, _ = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 0
    assert rows(out)["tensorrt model.plan (int8)"][-1] == "skipped: no TensorRT here"
    assert "verify: 2 of 3 artifacts checked, each within tolerance" in out
    code, _, err = run(capsys, "--model-dir", str(folder), "--reference", "--model", "model.plan")
    assert code == 1
    assert "--model model.plan: TensorRT is not importable here" in err


@pytest.mark.requires_tensorrt
def test_engine_built_here_passes_the_gate(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export import engine
    from tests.export.test_engine import _require_tensorrt

    _require_tensorrt()
    argv = [str(folder / "model.int8.onnx"), "--out", str(folder / "model.plan")]
    assert engine.main([*argv, "--precision", "int8", "--max-batch", "8"]) == 0
    code, out, err = run(capsys, "--model-dir", str(folder), "--reference")
    assert code == 0, f"{out}\n{err}"
    assert rows(out)["tensorrt model.plan (int8)"][-1] == "within tolerance"


# -- the comparison, at its boundaries --------------------------------------------------------
def event(start_s: float, end_s: float, kind: str = "physiological", type_: str = "Wheeze") -> dict:
    return {"kind": kind, "type": type_, "start_s": start_s, "end_s": end_s}


def reference_of(probs: np.ndarray, events: list[dict]) -> Reference:
    rec = Recording("r", np.zeros(8, np.int16), probs.astype(np.float32), events)
    return Reference(Path(REFERENCE_NAME), {"sample_rate_hz": 8000}, [rec])


def found_of(probs: np.ndarray, events: list[dict]) -> dict[str, RecordingEvents]:
    physiological = [
        {k: v for k, v in e.items() if k != "kind"} for e in events if e["kind"] == "physiological"
    ]
    technical = [
        {k: v for k, v in e.items() if k != "kind"} for e in events if e["kind"] == "technical"
    ]
    return {"r": RecordingEvents(physiological, technical, probs.astype(np.float32))}


BOUNDS = Tolerance(max_abs_dp=0.125, mean_abs_dp=0.0625, max_unmatched_share=0.25)
FOUR = [event(0.0, 1.0), event(2.0, 3.0), event(4.0, 5.0), event(6.0, 7.0)]


@pytest.mark.parametrize(
    ("delta", "ok"),
    [(0.125, False), (0.0625, True), (0.0, True)],  # 0.125 everywhere: max at its bound, mean above
)
def test_mean_bound(delta: float, ok: bool) -> None:
    base = np.full((8, 2), 0.5)
    result = compare(reference_of(base, []), found_of(base + delta, []), BOUNDS)
    assert (result.problems == []) == ok
    assert (result.max_abs_dp, result.mean_abs_dp) == (delta, delta)
    if not ok:
        assert result.problems == ["frames mean Δp 0.125 > 0.0625"]


@pytest.mark.parametrize(("peak", "ok"), [(0.125, True), (0.25, False)])
def test_max_bound(peak: float, ok: bool) -> None:
    base = np.full((8, 2), 0.5)
    got = base.copy()
    got[3, 1] += peak  # one output of one frame: mean peak / 16, under its bound
    result = compare(reference_of(base, []), found_of(got, []), BOUNDS)
    assert result.max_abs_dp == peak
    assert (result.problems == []) == ok
    if not ok:
        assert result.problems == ["frames max Δp 0.25 > 0.125"]


@pytest.mark.parametrize(("lost", "ok"), [(0, True), (1, True), (2, False)])
def test_event_bound(lost: int, ok: bool) -> None:
    """1 of 4 unmatched is 25 %, at the bound; 2 of 4 is beyond."""
    base = np.full((8, 2), 0.5)
    result = compare(reference_of(base, FOUR), found_of(base, FOUR[lost:]), BOUNDS)
    assert (result.matched, len(result.missing), result.extra) == (4 - lost, lost, [])
    assert (result.problems == []) == ok
    if not ok:
        assert result.problems == ["events: 2 unmatched (2 missing, 0 extra) of 4 > 25%"]


def test_fp32_allows_no_unmatched_event_and_counts_extra_ones() -> None:
    base = np.full((8, 2), 0.5)
    extra = [*FOUR, event(8.0, 9.0, "technical", "poor_signal")]
    result = compare(reference_of(base, FOUR), found_of(base, extra), TOLERANCES["fp32"])
    assert (result.matched, result.missing, len(result.extra)) == (4, [], 1)
    assert result.problems == ["events: 1 unmatched (0 missing, 1 extra) of 4 > 0%"]
    exact = compare(reference_of(base, FOUR), found_of(base, FOUR), TOLERANCES["fp32"])
    assert exact.problems == []


def test_events_match_by_kind_type_and_overlap_one_to_one() -> None:
    ref = [event(1.0, 2.0)]
    assert match_events(ref, [event(1.5, 2.5)])[0] == 1
    assert match_events(ref, [event(2.0, 3.0)])[0] == 0  # touching is not overlapping
    assert match_events(ref, [event(1.0, 2.0, type_="Fine Crackle")])[0] == 0
    assert match_events(ref, [event(1.0, 2.0, kind="technical")])[0] == 0
    matched, missing, extra = match_events([event(1.0, 2.0), event(1.5, 2.5)], [event(1.0, 3.0)])
    assert (matched, missing, extra) == (1, [event(1.5, 2.5)], [])


def test_frames_that_do_not_line_up_fail() -> None:
    base = np.full((8, 2), 0.5)
    short = compare(reference_of(base, []), found_of(base[:7], []), BOUNDS)
    assert short.problems == ["r: output frames (7, 2), reference (8, 2)"]
    undescribed = base.copy()
    undescribed[0] = np.nan
    assert compare(reference_of(base, []), found_of(undescribed, []), BOUNDS).problems == [
        "r: the frames described differ from the reference's"
    ]
    not_run = {"r": RecordingEvents(error="cannot read")}
    assert compare(reference_of(base, []), not_run, BOUNDS).problems == ["r: not run (cannot read)"]
