"""Shared vectors: the Python encoder, the decoder and the C reference encoder agree (v1, and
v2 sealed by the C encoder with libsodium's ChaCha20-Poly1305)."""

from __future__ import annotations

import hashlib
import hmac
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware_bridge.parser import FrameParser
from firmware_bridge.protocol import (
    SESSION_INFO_IDS,
    SESSION_KEY_INFO,
    SESSION_KEY_SALT,
    session_key,
)
from tests.firmware_bridge.vectors import SPEC, Vector, load_vectors

C_DIR = Path(__file__).parents[2] / "firmware_bridge" / "c"
VECTORS = load_vectors()
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-pedantic", "-Werror", "-O2"]
SOURCES = ["make_vectors.c", "lungwatch_frame.c", "lungwatch_seal.c"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_python_encoder_matches_checked_in_bytes(vector: Vector) -> None:
    assert vector.encode() == vector.path.read_bytes()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_checked_in_bytes_decode_to_the_vector(vector: Vector) -> None:
    parser = FrameParser(default_key=vector.key, allow_v1=vector.frame.session is None)
    (frame,) = parser.push(vector.path.read_bytes())
    assert frame._replace(flags=frame.flags & ~1, verified=False) == vector.frame
    assert frame.verified == (vector.key is not None)


SEALED = [v for v in VECTORS if v.frame.session is not None and v.frame.payload]


@pytest.mark.parametrize("vector", SEALED, ids=lambda v: v.name)
def test_v2_vectors_do_not_carry_the_payload_in_clear(vector: Vector) -> None:
    data, payload = vector.path.read_bytes(), vector.frame.payload
    assert data[2] == 2
    assert payload[:16] not in data
    assert data[40 : 40 + len(payload)] != payload


@pytest.fixture(scope="module")
def make_vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc) on PATH; CI installs gcc")
    folder = tmp_path_factory.mktemp("c")
    probe = folder / "probe.c"
    probe.write_text("#include <sodium.h>\nint main(void) { return sodium_init() < 0; }\n")
    if subprocess.run([compiler, str(probe), "-o", str(folder / "probe"), "-lsodium"]).returncode:
        pytest.skip("libsodium is not installed (requirements/debian-packages.txt: libsodium-dev)")
    exe = folder / "make_vectors"
    sources = [str(C_DIR / name) for name in SOURCES]
    subprocess.run([compiler, *CFLAGS, "-o", str(exe), *sources, "-lsodium"], check=True)
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


def test_c_session_key_matches_rfc5869_hkdf(make_vectors: Path) -> None:
    """lwf_session_key (HKDF on the C HMAC) against the cryptography package's HKDF-SHA256."""
    rng = random.Random(2)
    cases = [(rng.randbytes(rng.choice([16, 32, 64, 65, 100])), rng.getrandbits(32),
              rng.getrandbits(16), rng.getrandbits(32)) for _ in range(40)]  # fmt: skip
    lines = [f"hkdf k{i} {k.hex()} {d} {s} {n}" for i, (k, d, s, n) in enumerate(cases)]
    produced = run_c(make_vectors, "\n".join(lines) + "\n")
    for i, (key, device, stream, session) in enumerate(cases):
        info = SESSION_KEY_INFO + SESSION_INFO_IDS.pack(device, stream, session)
        expected = HKDF(hashes.SHA256(), 32, SESSION_KEY_SALT, info).derive(key)
        assert produced[f"k{i}"] == expected == session_key(key, device, stream, session)


@pytest.mark.parametrize(
    "line",
    [
        "audio too_long 1 0 0 0 8000 0 1 711 1 -",  # 711 int16 samples > 1420 bytes
        "audio2 too_long 1 0 0 0 8000 0 1 707 1 1 " + "00" * 32,  # > 1412 bytes in v2
        "heartbeat2 short_key 1 0 0 0 8000 0 1 " + "00" * 15,  # device keys: >= 16 bytes
        "heartbeat2 no_key 1 0 0 0 8000 0 1 -",
    ],
)
def test_c_encoder_refuses_bad_arguments(make_vectors: Path, line: str) -> None:
    done = subprocess.run([str(make_vectors)], input=line + "\n", capture_output=True, text=True)
    assert done.returncode == 1
    assert "line 1" in done.stderr
