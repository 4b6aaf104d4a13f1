"""Tests of edge.audio: reading files, conversions, resampling, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge import audio
from edge.audio import (
    Audio,
    audio_file,
    audio_files_under,
    read_audio,
    resample,
    to_float32,
    to_mono,
    validate_samples,
)
from edge.datapaths import sprsound_root
from lungwatch.errors import AudioReadError, EmptyAudioError, InvalidAudioError

RATE_HZ = 8000
BLOCK_ALIGN_OFFSET = 32  # byte offset of nBlockAlign in a canonical 44-byte WAV header


def _ramp_int16(n_samples: int = 1000) -> np.ndarray:
    """int16 samples covering the full range, including both extremes."""
    return np.linspace(-32768, 32767, n_samples).round().astype(np.int16)


def _write_quirky_wav(path: Path, data: np.ndarray, block_align: int = 4) -> None:
    """A 16-bit mono WAV whose fmt chunk claims ``block_align`` bytes per frame."""
    sf.write(path, data, RATE_HZ, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    assert raw[36:40] == b"data", "expected a canonical 44-byte header"
    raw[BLOCK_ALIGN_OFFSET : BLOCK_ALIGN_OFFSET + 2] = block_align.to_bytes(2, "little")
    path.write_bytes(bytes(raw))


# --- read_audio on files -------------------------------------------------------------------


def test_reads_int16_wav_exactly(tmp_path: Path) -> None:
    data = _ramp_int16()
    path = tmp_path / "int16.wav"
    sf.write(path, data, RATE_HZ, subtype="PCM_16")
    result = read_audio(path)
    assert isinstance(result, Audio)
    assert result.samples.dtype == np.float32
    assert result.samples.shape == (data.size,)
    np.testing.assert_array_equal(result.samples, data.astype(np.float32) / 32768.0)
    assert result.samples.min() == -1.0
    assert result.sample_rate_hz == RATE_HZ
    assert result.original_rate_hz == RATE_HZ
    assert result.original_channels == 1
    assert result.original_subtype == "PCM_16"
    assert result.source == str(path)
    assert result.duration_s == pytest.approx(data.size / RATE_HZ)


def test_reads_float_wav_and_clips_overs(tmp_path: Path) -> None:
    data = np.array([0.0, 0.25, -0.5, 1.5, -2.0, 0.999], dtype=np.float32)
    path = tmp_path / "float.wav"
    sf.write(path, data, RATE_HZ, subtype="FLOAT")
    result = read_audio(path)
    assert result.original_subtype == "FLOAT"
    np.testing.assert_array_equal(
        result.samples, np.array([0.0, 0.25, -0.5, 1.0, -1.0, 0.999], dtype=np.float32)
    )


def test_reads_24_bit_flac_with_int32_scaling(tmp_path: Path) -> None:
    values_24 = np.array([-(2**23), -1, 0, 1, 2**23 - 1], dtype=np.int32)
    path = tmp_path / "pcm24.flac"
    sf.write(path, values_24 * 256, RATE_HZ, subtype="PCM_24")  # int32 left-justified
    result = read_audio(path)
    assert result.original_subtype == "PCM_24"
    np.testing.assert_array_equal(result.samples, (values_24 / 2.0**23).astype(np.float32))


def test_reads_uint8_wav(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    sf.write(path, np.array([-1.0, 0.0, 0.5]), RATE_HZ, subtype="PCM_U8")
    np.testing.assert_array_equal(read_audio(path).samples, [-1.0, 0.0, 0.5])


def test_stereo_is_mixed_to_mean(tmp_path: Path) -> None:
    left = np.full(100, 8192, dtype=np.int16)
    right = np.full(100, -16384, dtype=np.int16)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE_HZ, subtype="PCM_16")
    result = read_audio(path)
    assert result.original_channels == 2
    assert result.samples.shape == (100,)
    np.testing.assert_array_equal(result.samples, np.full(100, -0.125, dtype=np.float32))


def test_target_rate_resamples_and_keeps_frequency(tmp_path: Path) -> None:
    rate_in_hz, tone_hz = 44100, 440.0
    t_s = np.arange(rate_in_hz) / rate_in_hz
    path = tmp_path / "tone.flac"
    sf.write(path, 0.5 * np.sin(2 * np.pi * tone_hz * t_s), rate_in_hz, subtype="PCM_16")
    result = read_audio(path, target_rate_hz=RATE_HZ)
    assert result.sample_rate_hz == RATE_HZ
    assert result.original_rate_hz == rate_in_hz
    assert result.samples.shape == (RATE_HZ,)
    assert result.samples.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(result.samples))
    assert np.argmax(spectrum) * RATE_HZ / result.samples.size == pytest.approx(tone_hz, abs=1.0)


def test_empty_file_raises_empty_audio_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), RATE_HZ, subtype="PCM_16")
    with pytest.raises(EmptyAudioError, match=r"empty\.wav"):
        read_audio(path)


def test_nan_file_raises_with_count_and_first_index(tmp_path: Path) -> None:
    data = np.zeros(50, dtype=np.float32)
    data[[7, 9, 30]] = [np.nan, np.inf, np.nan]
    path = tmp_path / "nan.wav"
    sf.write(path, data, RATE_HZ, subtype="FLOAT")
    with pytest.raises(InvalidAudioError, match=r"nan\.wav: 3 of 50 .*first at index 7"):
        read_audio(path)


def test_garbage_file_raises_read_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioReadError, match=r"garbage\.wav: cannot read audio"):
        read_audio(path)


def test_truncated_riff_raises_read_error(tmp_path: Path) -> None:
    path = tmp_path / "truncated.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(AudioReadError, match=r"truncated\.wav"):
        read_audio(path)


def test_missing_file_raises_read_error_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.flac"
    with pytest.raises(AudioReadError, match=r"missing\.flac: cannot read audio: no such file"):
        read_audio(path)


def test_directory_raises_read_error(tmp_path: Path) -> None:
    with pytest.raises(AudioReadError, match="not a regular file"):
        read_audio(tmp_path)


def test_bad_target_rate_raises(tmp_path: Path) -> None:
    path = tmp_path / "ok.wav"
    sf.write(path, _ramp_int16(), RATE_HZ, subtype="PCM_16")
    with pytest.raises(InvalidAudioError, match=r"ok\.wav: .*to_hz=0"):
        read_audio(path, target_rate_hz=0)


# --- malformed WAV headers (nBlockAlign=4 for 16-bit mono) ---------------------------------


def test_quirky_block_align_wav_reads_exactly(tmp_path: Path) -> None:
    data = _ramp_int16(777)
    path = tmp_path / "quirky.wav"
    _write_quirky_wav(path, data)
    assert path.read_bytes()[BLOCK_ALIGN_OFFSET] == 4
    np.testing.assert_array_equal(read_audio(path).samples, data / np.float32(32768.0))


def test_wave_fallback_used_when_libsndfile_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _ramp_int16(321)
    path = tmp_path / "quirky.wav"
    _write_quirky_wav(path, data)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise sf.SoundFileRuntimeError("simulated: libsndfile refuses the header")

    monkeypatch.setattr(audio.sf, "SoundFile", refuse)
    result = read_audio(path)
    assert result.original_subtype == "PCM_16"
    assert result.original_channels == 1
    np.testing.assert_array_equal(result.samples, data / np.float32(32768.0))


def test_wave_fallback_matches_soundfile_for_24_bit_and_stereo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-(2**23), 2**23, size=(64, 2)).astype(np.int32) * 256
    path = tmp_path / "pcm24.wav"
    sf.write(path, data, RATE_HZ, subtype="PCM_24")
    frames, rate_hz, channels, subtype = audio._read_wav_with_wave(path)
    assert (rate_hz, channels, subtype) == (RATE_HZ, 2, "PCM_24")
    np.testing.assert_array_equal(frames, sf.read(path, dtype="int32")[0])


# --- to_mono / to_float32 / resample / validate_samples ------------------------------------


def test_to_mono_shapes() -> None:
    mono = np.arange(5, dtype=np.float32)
    assert to_mono(mono) is mono
    stereo = np.stack([mono, 3 * mono], axis=1)
    np.testing.assert_array_equal(to_mono(stereo), 2 * mono)
    assert to_mono(stereo).dtype == np.float32
    with pytest.raises(InvalidAudioError, match=r"clip: .*\(5, 2, 1\)"):
        to_mono(stereo[:, :, None], source="clip")
    with pytest.raises(InvalidAudioError, match=r"\(\)"):
        to_mono(np.float32(1.0))
    with pytest.raises(InvalidAudioError, match="no channels"):
        to_mono(np.zeros((5, 0)))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([-32768, 0, 16384, 32767], dtype=np.int16), [-1.0, 0.0, 0.5, 32767 / 32768]),
        (np.array([-(2**31), 0, 2**30], dtype=np.int32), [-1.0, 0.0, 0.5]),
        (np.array([0, 128, 192, 255], dtype=np.uint8), [-1.0, 0.0, 0.5, 127 / 128]),
        (np.array([-0.5, 0.25, 3.0, -np.inf], dtype=np.float64), [-0.5, 0.25, 1.0, -np.inf]),
    ],
)
def test_to_float32_scaling(values: np.ndarray, expected: list[float]) -> None:
    result = to_float32(values)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array(expected, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int64, np.complex64, np.object_])
def test_to_float32_rejects_unsupported_dtype(dtype: type) -> None:
    with pytest.raises(InvalidAudioError, match="mic0: unsupported sample dtype"):
        to_float32(np.zeros(4, dtype=dtype), source="mic0")


def test_resample_identity_and_length() -> None:
    x = np.random.default_rng(1).standard_normal(4410).astype(np.float32)
    assert resample(x, 8000, 8000) is x
    y = resample(x, 44100, 8000)
    assert y.dtype == np.float32
    assert y.shape == (800,)


def test_resample_uses_reduced_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def spy(x: np.ndarray, up: int, down: int) -> np.ndarray:
        calls.append((up, down))
        return np.zeros(1)

    monkeypatch.setattr(audio, "resample_poly", spy)
    resample(np.zeros(10), 44100, 4000)
    resample(np.zeros(10), 4000, 16000)
    assert calls == [(40, 441), (4, 1)]


@pytest.mark.parametrize(("from_hz", "to_hz"), [(0, 8000), (8000, -1), (8000.0, 4000), (True, 1)])
def test_resample_rejects_bad_rates(from_hz: object, to_hz: object) -> None:
    with pytest.raises(InvalidAudioError, match="positive integers"):
        resample(np.zeros(10), from_hz, to_hz)  # type: ignore[arg-type]


def test_validate_samples() -> None:
    ok = np.zeros(3, dtype=np.float32)
    assert validate_samples(ok, "src") is ok
    with pytest.raises(EmptyAudioError, match="src: audio holds no samples"):
        validate_samples(np.zeros(0, dtype=np.float32), "src")
    with pytest.raises(InvalidAudioError, match=r"src: expected 1-D samples, got shape \(2, 2\)"):
        validate_samples(np.zeros((2, 2), dtype=np.float32), "src")
    bad = np.array([0.0, -np.inf, 0.0, np.nan], dtype=np.float32)
    with pytest.raises(InvalidAudioError, match=r"src: 2 of 4 samples .*first at index 1"):
        validate_samples(bad, "src")


# --- the real malformed WAVs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def wav_quirk_paths() -> list[Path]:
    folder = sprsound_root() / "wav_quirks"
    if not folder.is_dir():
        pytest.skip(f"SPRSound data not found at {folder} (set LUNGWATCH_DATA_DIR)")
    return sorted(folder.glob("*.wav"))


@pytest.mark.requires_data
def test_real_wav_quirks_equal_their_flac_twins(wav_quirk_paths: list[Path]) -> None:
    assert len(wav_quirk_paths) == 12
    for wav_path in wav_quirk_paths:
        assert wav_path.read_bytes()[BLOCK_ALIGN_OFFSET] == 4, f"{wav_path} is not quirky"
        twin = wav_path.parent.parent / "train" / wav_path.with_suffix(".flac").name
        expected = read_audio(twin).samples
        np.testing.assert_array_equal(read_audio(wav_path).samples, expected)
        frames, rate_hz, _, _ = audio._read_wav_with_wave(wav_path)
        assert rate_hz == RATE_HZ
        np.testing.assert_array_equal(to_float32(frames[:, 0]), expected)


def test_audio_file_prefers_flac_and_keeps_dotted_stems(tmp_path: Path) -> None:
    stem = "40638274_9.7_1_p1_1696"  # SPRSound names hold dots
    assert audio_file(tmp_path, stem) is None
    (tmp_path / f"{stem}.wav").write_bytes(b"")
    assert audio_file(tmp_path, stem) == tmp_path / f"{stem}.wav"
    (tmp_path / f"{stem}.flac").write_bytes(b"")
    assert audio_file(tmp_path, stem) == tmp_path / f"{stem}.flac"


def test_audio_files_under_lists_audio_recursively_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "folder.wav").mkdir()  # a folder with an audio-looking name is not a file
    for name in ("b/z.FLAC", "a.wav", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert audio_files_under(tmp_path) == [tmp_path / "a.wav", tmp_path / "b/z.FLAC"]


def _wav_rate(path: Path, rate_hz: int) -> None:
    """Rewrite a WAV header's sample rate and byte rate (the file stays 16-bit mono)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF"
    assert data[12:16] == b"fmt "
    data[24:28] = rate_hz.to_bytes(4, "little")
    data[28:32] = (rate_hz * 2 & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _wav_rate(p, 2**31 - 1), "declares 2147483647 Hz"),
        (lambda p: _wav_rate(p, 1), "declares 1 Hz"),
        (lambda p: sf.write(p, np.zeros((800, 8), np.float32), 8000, subtype="PCM_16"),
         "8 channels; a stethoscope recording is mono or stereo"),
        (lambda p: sf.write(p, np.full(800, 1e30, np.float32), 8000, subtype="FLOAT"),
         "samples reach 1e\\+30; float audio must lie within"),
    ],
)  # fmt: skip
def test_a_file_no_stethoscope_records_is_refused_up_front(
    tmp_path: Path, make: object, message: str
) -> None:
    """Checked from the header before decoding (a claimed 2^31 Hz once led to a 320 GiB
    allocation), or from the samples: one line naming the file and what is wrong."""
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros(800, np.float32), 8000, subtype="PCM_16")
    make(path)  # type: ignore[operator]
    with pytest.raises(InvalidAudioError, match=message):
        audio.read_audio(path, target_rate_hz=8000)
