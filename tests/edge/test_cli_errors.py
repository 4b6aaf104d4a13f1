"""Every ``lungwatch`` subcommand answers a missing file, a garbage file and a bad argument with
one line on stderr that names what was wrong, and an exit status >= 1: never a traceback.

Each case runs the real console entry point in a subprocess (``python -m lungwatch.cli``, the
workstation script, which carries the device commands too)."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lungwatch.cli import COMMANDS as SUBCOMMANDS
from tests.edge.runtime_helpers import lungwatch

MISSING = "missing"  # placeholder for a path that does not exist
GARBAGE = "garbage"  # placeholder for a file of random bytes
CASES_DIR = "cases"
Answers = dict[tuple[str, str], subprocess.CompletedProcess[str]]  # (kind, subcommand) -> run

# subcommand -> (argv with a missing file, argv with a garbage file); None: takes no file.
# In each argv, "{missing}" and "{garbage}" become paths; the suffix says what the file plays.
FILE_CASES: dict[str, tuple[list[str], list[str]] | None] = {
    "demo": (["--config", "{missing}.yaml"], ["--config", "{garbage}.yaml"]),
    "features": (["{missing}.wav"], ["{garbage}.wav"]),
    "bench": None,
    "train": (["--config", "{missing}.yaml"], ["--config", "{garbage}.yaml"]),
    "cv": (
        ["train", "--config", "{missing}.yaml", "--design", "d", "--out", "{dir}"],
        ["train", "--config", "{garbage}.yaml", "--design", "d", "--out", "{dir}"],
    ),
    "predict": (
        ["--task", "1-2", "--audio", "{missing}", "--annotations", "{missing}", "--out", "p.json"],
        [
            "--task",
            "1-2",
            "--audio",
            "{dir}",
            "--annotations",
            "{dir}",
            "--model",
            "{garbage}.pt",
            "--out",
            "{dir}/p.json",
        ],
    ),
    "evaluate": (
        ["--task", "1-2", "--preds", "{missing}.json", "--annotations", "{dir}"],
        ["--task", "1-2", "--preds", "{garbage}.json", "--annotations", "{dir}"],
    ),
    "detect": (["--audio", "{missing}.wav"], ["--audio", "{garbage}.wav"]),
    "export": (
        ["--checkpoint", "{missing}.pt", "--out", "{dir}/m"],
        ["--checkpoint", "{garbage}.pt", "--out", "{dir}/m"],
    ),
    "tasks": (["--model", "{missing}"], ["--model", "{garbage}.onnx"]),
    "rules": (["--model", "{missing}"], ["--model", "{garbage}.onnx"]),
    "views": (["--model", "{missing}"], ["--model", "{garbage}.onnx"]),
    "respiration": (["--model", "{missing}"], ["--model", "{garbage}.onnx"]),
    "quantize": (
        ["--model", "{missing}.onnx", "--calib-dir", "{dir}", "--out", "{dir}/m.int8.onnx"],
        ["--model", "{garbage}.onnx", "--calib-dir", "{dir}", "--out", "{dir}/m.int8.onnx"],
    ),
    "engine": (
        ["{missing}.onnx", "--precision", "int8", "--out", "{dir}/m.plan"],
        ["{garbage}.onnx", "--precision", "int8", "--out", "{dir}/m.plan"],
    ),
    "verify": (
        ["--model-dir", "{missing}", "--reference"],
        ["--model-dir", "{garbage}.d", "--reference"],
    ),
    "run": (["--config", "{missing}.yaml"], ["--config", "{garbage}.yaml"]),
    "dashboard": (["--config", "{missing}.yaml"], ["--config", "{garbage}.yaml"]),
    "bridge": (["serial://{missing}"], ["--wav", "{garbage}.wav/out.wav", "udp://127.0.0.1:0"]),
    "emulate": (
        ["--audio", "{missing}.wav", "--to", "udp://127.0.0.1:9"],
        ["--audio", "{garbage}.wav", "--to", "udp://127.0.0.1:9"],
    ),
    "access": None,  # writes its folder (a garbage key there: tests/contracts/test_access.py)
    "gateway": (["--config", "{missing}.yaml"], ["--config", "{garbage}.yaml"]),
}

# subcommand -> an argv argparse refuses; its last word is what the error line must name
BAD_ARGUMENT: dict[str, list[str]] = {
    "demo": ["--no-such-option"],
    "features": ["x.wav", "--kind", "nope"],
    "bench": ["--seconds", "soon"],
    "train": ["--config", "x.yaml", "--no-such-option"],
    "predict": ["--task", "9-9"],
    "evaluate": ["--task", "9-9"],
    "detect": ["--audio", "x.wav", "--on", "high"],
    "export": ["--checkpoint", "x.pt", "--out", "y", "--opset", "new"],
    "tasks": ["--model", "m", "--dry-run", "--no-such-option"],
    "rules": ["--model", "m", "--no-such-option"],
    "cv": ["score", "--design", "d", "--budget", "lots"],
    "views": ["--model", "m", "--views", "validation,magic"],
    "respiration": ["--parts", "rate,magic"],
    "quantize": ["--model", "m.onnx", "--calib-dir", "d", "--out", "o.onnx", "--method", "magic"],
    "engine": ["--precision", "int3"],
    "verify": ["--reference", "--no-such-option"],
    "run": ["--config", "x.yaml", "--no-such-option"],
    "dashboard": ["--port", "eighty"],
    "bridge": ["udp://127.0.0.1:0", "--seconds", "soon"],
    "emulate": ["--loss", "lots"],
    "access": ["--site", "s", "--devices", "d", "--views", "v", "--dir", "x", "--role", "root"],
    "gateway": ["--config", "g.yaml", "--no-such-option"],
}


def test_every_subcommand_is_covered() -> None:
    assert set(FILE_CASES) == set(SUBCOMMANDS)
    assert set(BAD_ARGUMENT) == set(SUBCOMMANDS)


def _fill(argv: list[str], folder: Path) -> list[str]:
    names = {
        "missing": str(folder / MISSING),
        "garbage": str(folder / GARBAGE),
        "dir": str(folder / CASES_DIR),
    }
    return [arg.format(**names) for arg in argv]


def _garbage_files(folder: Path, argv: list[str]) -> None:
    """Random bytes at every ``{garbage}.<suffix>`` path of ``argv``; an empty ``{dir}``."""
    (folder / CASES_DIR).mkdir(exist_ok=True)
    noise = bytes(range(256)) * 8 + b"\x00\xff garbage \x1a" * 64
    for arg in argv:
        if arg.startswith("{garbage}"):
            path = Path(_fill([arg.split("/")[0]], folder)[0])
            path.write_bytes(noise)


def _assert_one_line(result_stderr: str, returncode: int, name: str, mentions: str) -> None:
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert returncode >= 1, result_stderr
    assert "Traceback" not in result_stderr, result_stderr
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith(f"lungwatch {name}: "), lines[0]
    assert mentions in lines[0], lines[0]
    assert "unexpected error" not in lines[0], lines[0]  # handled where it arises


def _cases() -> list[tuple[str, str]]:
    """Every (kind, subcommand) the tests below check: a missing file, a garbage file and a bad
    argument of each subcommand that has one."""
    files = [n for n, c in FILE_CASES.items() if c is not None]
    return (
        [("missing", n) for n in files]
        + [("garbage", n) for n in files]
        + [("argument", n) for n in sorted(SUBCOMMANDS)]
    )


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Answers:
    """Every case's answer, each its own ``lungwatch`` process in its own folder, as many at a
    time as there are cores (a process spends its seconds importing, the same as one at a
    time would)."""

    def run(kind: str, name: str) -> subprocess.CompletedProcess[str]:
        if kind == "argument":
            return lungwatch(name, *BAD_ARGUMENT[name])
        folder = tmp_path_factory.mktemp(f"{kind}-{name}")
        (folder / CASES_DIR).mkdir()
        case = FILE_CASES[name]
        assert case is not None
        argv = case[0] if kind == "missing" else case[1]
        if kind == "garbage":
            _garbage_files(folder, argv)
        return lungwatch(name, *_fill(argv, folder))

    cases = _cases()
    # made here, once: a worker given --basetemp (pytest-xdist) empties that folder on its first
    # call, which in two threads at once removes the other thread's case folder
    tmp_path_factory.getbasetemp()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda case: run(*case), cases))
    return dict(zip(cases, done, strict=True))


@pytest.mark.parametrize("name", [n for n, c in FILE_CASES.items() if c is not None])
def test_missing_file_is_one_line(name: str, answers: Answers) -> None:
    result = answers["missing", name]
    _assert_one_line(result.stderr, result.returncode, name, MISSING)


@pytest.mark.parametrize("name", [n for n, c in FILE_CASES.items() if c is not None])
def test_garbage_file_is_one_line(name: str, answers: Answers) -> None:
    result = answers["garbage", name]
    _assert_one_line(result.stderr, result.returncode, name, GARBAGE)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_bad_argument_is_one_line(name: str, answers: Answers) -> None:
    argv = BAD_ARGUMENT[name]
    result = answers["argument", name]
    assert result.returncode == 2, result.stderr
    _assert_one_line(result.stderr, result.returncode, name, argv[-1])
    assert "--help" in result.stderr  # says where the usage is


def test_unknown_command_is_one_line() -> None:
    result = lungwatch("no-such-command")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "lungwatch: unknown command 'no-such-command'"
