"""Audio input as float32 mono in [-1, 1], in plain NumPy so device and training read alike.

Integer PCM is scaled as libsndfile scales it (a WAV and its FLAC twin give bit-identical samples);
every error message starts with the source. Where libsndfile refuses a RIFF/WAVE file (some
stethoscopes write a wrong ``nBlockAlign``), :func:`read_audio` falls back to Python's ``wave``."""

from __future__ import annotations

import math
import numbers
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from lungwatch.errors import AudioReadError, EmptyAudioError, InvalidAudioError

INT16_FULL_SCALE = float(2**15)
INT32_FULL_SCALE = float(2**31)
UINT8_MIDPOINT = 128.0
UINT8_FULL_SCALE = float(2**7)
FULL_SCALE_MIN = -1.0
FULL_SCALE_MAX = 1.0
RIFF_MAGIC = b"RIFF"
WAVE_MAGIC = b"WAVE"
RIFF_HEADER_BYTES = 12
BITS_PER_BYTE = 8
DEFAULT_SOURCE = "<array>"
AUDIO_SUFFIXES: tuple[str, ...] = (".flac", ".wav")  # recordings; FLAC preferred over WAV

_READ_DTYPE_BY_SUBTYPE = {"PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32"}
_FLOAT_READ_DTYPE = "float32"


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded mono audio and where it came from (``original_*``: as stored in the file)."""

    samples: np.ndarray
    sample_rate_hz: int
    source: str
    original_rate_hz: int
    original_channels: int
    original_subtype: str

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate_hz


def audio_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` + the first suffix that exists (``stem`` as is: SPRSound names hold dots)."""
    return next((p for s in AUDIO_SUFFIXES if (p := folder / f"{stem}{s}").is_file()), None)


def audio_files_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
    )


def read_audio(path: str | Path, *, target_rate_hz: int | None = None) -> Audio:
    """Raises AudioReadError (missing, unreadable, not audio), EmptyAudioError or
    InvalidAudioError (NaN/Inf, or ``target_rate_hz`` not positive)."""
    file_path = Path(path)
    source = str(file_path)
    if not file_path.exists():
        raise AudioReadError(f"{source}: cannot read audio: no such file")
    if not file_path.is_file():
        raise AudioReadError(f"{source}: cannot read audio: not a regular file")
    try:
        frames, rate_hz, channels, subtype = _read_with_soundfile(file_path)
    except (sf.SoundFileError, OSError) as exc:
        if not _is_riff_wave(file_path):
            raise AudioReadError(f"{file_path}: cannot read audio: {exc}") from exc
        frames, rate_hz, channels, subtype = _read_wav_with_wave(file_path)
    if np.issubdtype(frames.dtype, np.floating) and frames.size:  # integer PCM cannot exceed
        finite = np.abs(frames[np.isfinite(frames)])  # (NaN and Inf: validate_samples)
        peak = float(finite.max()) if finite.size else 0.0
        if peak > MAX_FLOAT_PEAK:
            raise InvalidAudioError(
                f"{source}: samples reach {peak:.3g}; float audio must lie within +-1 full "
                f"scale (up to {MAX_FLOAT_PEAK:g} is taken, clipped): rescale the file"
            )
    samples = to_mono(to_float32(frames, source=source), source=source)
    validate_samples(samples, source)
    out_rate_hz = rate_hz
    if target_rate_hz is not None:
        _check_rates(rate_hz, target_rate_hz, source)
        samples = resample(samples, rate_hz, target_rate_hz, source=source)
        samples = np.clip(samples, FULL_SCALE_MIN, FULL_SCALE_MAX)
        out_rate_hz = int(target_rate_hz)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    return Audio(samples, out_rate_hz, source, rate_hz, channels, subtype)


MAX_FLOAT_PEAK = 2.0  # float samples beyond this are not audio at full scale (1.0)
MIN_FILE_RATE_HZ = 1_000  # a lung sound needs hundreds of Hz; below this it is not audio
MAX_FILE_RATE_HZ = 384_000  # the highest rate audio interfaces record
MAX_FILE_CHANNELS = 2  # a stethoscope records mono (a stereo file is mixed down)
MAX_FILE_SAMPLES = 1 << 30  # samples x channels decoded at most (37 h at 8 kHz mono)


def check_header(rate_hz: int, channels: int, frames: int, source: str) -> None:
    """InvalidAudioError naming what the header declares that no stethoscope recording is
    (checked before decoding, so a header claiming billions of samples costs nothing)."""
    if not MIN_FILE_RATE_HZ <= rate_hz <= MAX_FILE_RATE_HZ:
        raise InvalidAudioError(
            f"{source}: its header declares {rate_hz} Hz; audio files are read at "
            f"{MIN_FILE_RATE_HZ}-{MAX_FILE_RATE_HZ} Hz"
        )
    if not 1 <= channels <= MAX_FILE_CHANNELS:
        raise InvalidAudioError(
            f"{source}: {channels} channels; a stethoscope recording is mono or stereo "
            "(take the channel you want out first, e.g. sox in.wav out.wav remix 1)"
        )
    if frames * channels > MAX_FILE_SAMPLES:
        raise InvalidAudioError(
            f"{source}: its header declares {frames} frames x {channels} channel(s), more "
            f"than {MAX_FILE_SAMPLES} samples; split the recording"
        )


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int, int, str]:
    with sf.SoundFile(str(path)) as reader:
        check_header(int(reader.samplerate), int(reader.channels), int(reader.frames), str(path))
        dtype = _READ_DTYPE_BY_SUBTYPE.get(reader.subtype, _FLOAT_READ_DTYPE)
        frames = reader.read(dtype=dtype, always_2d=True)
        return frames, int(reader.samplerate), int(reader.channels), str(reader.subtype)


def _is_riff_wave(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            header = handle.read(RIFF_HEADER_BYTES)
    except OSError:
        return False
    return header[:4] == RIFF_MAGIC and header[8:12] == WAVE_MAGIC


def _read_wav_with_wave(path: Path) -> tuple[np.ndarray, int, int, str]:
    """Integer PCM WAV by ``wave``, in the integer dtype libsndfile would give."""
    try:
        with wave.open(str(path), "rb") as reader:
            channels, width_bytes = reader.getnchannels(), reader.getsampwidth()
            rate_hz = reader.getframerate()
            check_header(int(rate_hz), int(channels), int(reader.getnframes()), str(path))
            raw = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioReadError(f"{path}: cannot read audio: {exc}") from exc
    values = _pcm_bytes_to_array(raw, width_bytes, str(path))
    n_frames = values.shape[0] // channels
    frames = values[: n_frames * channels].reshape(n_frames, channels)
    subtype = "PCM_U8" if width_bytes == 1 else f"PCM_{BITS_PER_BYTE * width_bytes}"
    return frames, int(rate_hz), int(channels), subtype


def _pcm_bytes_to_array(raw: bytes, width_bytes: int, source: str) -> np.ndarray:
    """Little-endian PCM bytes -> 1-D integer array (24-bit is left-justified into int32)."""
    if width_bytes == 1:
        return np.frombuffer(raw, dtype=np.uint8)
    if width_bytes in (2, 4):
        return np.frombuffer(raw, dtype=f"<i{width_bytes}").astype(f"i{width_bytes}")
    if width_bytes == 3:
        triplets = np.frombuffer(raw[: len(raw) - len(raw) % 3], dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((triplets.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = triplets
        return padded.view("<i4").reshape(-1).astype(np.int32)
    raise AudioReadError(f"{source}: cannot read audio: unsupported sample width {width_bytes}")


def to_mono(x: np.ndarray, *, source: str = DEFAULT_SOURCE) -> np.ndarray:
    """``(n,)`` as is, ``(n, channels)`` by their mean; float32 stays float32, else float64."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise InvalidAudioError(
            f"{source}: expected shape (n,) or (n, channels), got {x.shape} ({x.ndim}-D)"
        )
    if x.shape[1] == 0:
        raise InvalidAudioError(f"{source}: audio of shape {x.shape} has no channels")
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    return np.asarray(np.mean(x, axis=1, dtype=np.float64), dtype=out_dtype)


def to_float32(x: np.ndarray, *, source: str = DEFAULT_SOURCE) -> np.ndarray:
    """Float32 in [-1, 1], any shape; floats clipped, NaN and Inf left to ``validate_samples``."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        return (x.astype(np.float32) / np.float32(INT16_FULL_SCALE)).astype(np.float32)
    if x.dtype == np.int32:
        return (x.astype(np.float64) / INT32_FULL_SCALE).astype(np.float32)
    if x.dtype == np.uint8:
        return ((x.astype(np.float32) - UINT8_MIDPOINT) / UINT8_FULL_SCALE).astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32)  # always a copy
        np.clip(out, FULL_SCALE_MIN, FULL_SCALE_MAX, out=out, where=np.isfinite(out))
        return out
    raise InvalidAudioError(
        f"{source}: unsupported sample dtype {x.dtype} "
        "(expected int16, int32, uint8 or floating point)"
    )


def resample(
    x: np.ndarray, from_hz: int, to_hz: int, *, source: str = DEFAULT_SOURCE
) -> np.ndarray:
    """Float32, not clipped (``resample_poly``'s filter may overshoot full scale slightly)."""
    _check_rates(from_hz, to_hz, source)
    if from_hz == to_hz:
        return x
    divisor = math.gcd(int(from_hz), int(to_hz))
    up, down = int(to_hz) // divisor, int(from_hz) // divisor
    return np.asarray(resample_poly(x, up, down), dtype=np.float32)


def _check_rates(from_hz: object, to_hz: object, source: str) -> None:
    for name, rate in (("from_hz", from_hz), ("to_hz", to_hz)):
        if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
            raise InvalidAudioError(
                f"{source}: sample rates must be positive integers, got {name}={rate!r}"
            )


def validate_samples(x: np.ndarray, source: str) -> np.ndarray:
    """``x`` unchanged, or EmptyAudioError / InvalidAudioError (not 1-D, NaN or Inf)."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise InvalidAudioError(f"{source}: expected 1-D samples, got shape {x.shape}")
    if x.shape[0] == 0:
        raise EmptyAudioError(f"{source}: audio holds no samples")
    bad = ~np.isfinite(x)
    if n_bad := int(np.count_nonzero(bad)):
        first = int(np.argmax(bad))
        raise InvalidAudioError(
            f"{source}: {n_bad} of {x.shape[0]} samples are NaN or Inf "
            f"(first at index {first}: {x[first]})"
        )
    return x
