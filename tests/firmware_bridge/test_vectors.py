"""Shared vectors: the Python encoder, the decoder and the C reference encoder agree."""

from __future__ import annotations

import hashlib
import hmac
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_bridge.parser import FrameParser
from tests.firmware_bridge.vectors import SPEC, Vector, load_vectors

C_DIR = Path(__file__).parents[2] / "firmware_bridge" / "c"
VECTORS = load_vectors()
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-pedantic", "-Werror", "-O2"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_python_encoder_matches_checked_in_bytes(vector: Vector) -> None:
    assert vector.encode() == vector.path.read_bytes()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_checked_in_bytes_decode_to_the_vector(vector: Vector) -> None:
    parser = FrameParser(default_key=vector.key)
    (frame,) = parser.push(vector.path.read_bytes())
    assert frame._replace(flags=frame.flags & ~1, verified=False) == vector.frame
    assert frame.verified == (vector.key is not None)


@pytest.fixture(scope="module")
def make_vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc) on PATH; CI installs gcc")
    exe = tmp_path_factory.mktemp("c") / "make_vectors"
    sources = [str(C_DIR / "make_vectors.c"), str(C_DIR / "lungwatch_frame.c")]
    subprocess.run([compiler, *CFLAGS, "-o", str(exe), *sources], check=True)
    return exe


def run_c(exe: Path, text: str) -> dict[str, bytes]:
    done = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
    return {
        name: bytes.fromhex(hex_)
        for name, hex_ in (line.split() for line in done.stdout.splitlines())
    }


def test_c_encoder_matches_checked_in_bytes(make_vectors: Path) -> None:
    produced = run_c(make_vectors, SPEC.read_text(encoding="utf-8"))
    assert sorted(produced) == sorted(v.name for v in VECTORS)
    for vector in VECTORS:
        assert produced[vector.name] == vector.path.read_bytes(), vector.name


def test_c_sha256_and_hmac_match_hashlib(make_vectors: Path) -> None:
    rng = random.Random(1)
    cases = []  # message lengths around every padding boundary, keys around the block size
    for n in [*range(0, 130), 200, 511, 512, 1000]:
        data, key = rng.randbytes(n), rng.randbytes(rng.choice([0, 1, 16, 63, 64, 65, 100, 200]))
        cases.append((n, data, key))
    lines = [f"sha256 s{n} {d.hex() or '-'}\nhmac h{n} {k.hex() or '-'} {d.hex() or '-'}"
             for n, d, k in cases]  # fmt: skip
    produced = run_c(make_vectors, "\n".join(lines) + "\n")
    for n, data, key in cases:
        assert produced[f"s{n}"] == hashlib.sha256(data).digest()
        assert produced[f"h{n}"] == hmac.new(key, data, hashlib.sha256).digest()


def test_c_encoder_refuses_bad_arguments(make_vectors: Path) -> None:
    bad = "audio too_long 1 0 0 0 8000 0 1 711 1 -\n"  # 711 int16 samples > 1420 bytes
    done = subprocess.run([str(make_vectors)], input=bad, capture_output=True, text=True)
    assert done.returncode == 1
    assert "line 1" in done.stderr
