"""The respiratory rate's synthetic truth set (``training.data.breaths``): the generator keeps
its truth, and the device path counts breath cycles, not breath sounds, where an
inspiration and an expiration are heard as two humps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from edge.bed.agebands import age_band
from edge.monitor import resolve_model
from edge.runtime.offline import detect_recordings
from training.data.breaths import (
    DEVICE_RATES_HZ,
    Breathing,
    Truth,
    started_set,
    stretch,
    synthesize,
    truth_set,
)
from training.scoring.respiration import rate_summary


def test_the_truth_counts_the_cycles_heard_and_the_device_band_holds() -> None:
    spec = Breathing(rate_bpm=15.0, seconds=60.0, device_rate_hz=2000, jitter=0.0, seed=3)
    audio, truth = synthesize(spec)
    assert audio.dtype == np.float32
    assert audio.shape == (120_000,)
    assert np.max(np.abs(audio)) == pytest.approx(0.9, abs=1e-6)
    assert truth.cycles == 15
    assert truth.rate_bpm == pytest.approx(15.0)
    assert np.allclose(np.diff(truth.onsets_s), 4.0)
    # nothing above the device's own band: the mix is made at its rate
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / 2000)
    assert spectrum[freqs > 950].sum() < 1e-3 * spectrum.sum()
    paused = synthesize(Breathing(rate_bpm=15.0, pause_share=1.0, pause_s=4.0, jitter=0.0))[1]
    assert paused.cycles == 8  # every cycle twice as long
    with pytest.raises(ValueError, match="rate_bpm"):
        synthesize(Breathing(rate_bpm=0.5))
    with pytest.raises(ValueError, match="Nyquist"):
        synthesize(Breathing(rate_bpm=12, device_rate_hz=200))


def test_a_stretched_recording_breathes_faster_by_its_factor() -> None:
    audio, _ = synthesize(Breathing(rate_bpm=12.0, jitter=0.0, expiration_db=-80.0, seed=1))
    faster = stretch(audio, 1.25)
    assert faster.shape[0] == pytest.approx(audio.shape[0] / 1.25, abs=2)
    envelope = np.abs(faster.astype(np.float64))
    frame = 400
    levels = envelope[: envelope.size // frame * frame].reshape(-1, frame).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(levels - levels.mean()))
    peak_hz = np.argmax(spectrum[1:]) + 1
    per_minute = peak_hz / (levels.size * frame / 8000) * 60
    assert per_minute == pytest.approx(12.0 * 1.25, abs=1.0)
    with pytest.raises(ValueError, match="factor"):
        stretch(audio, 10.0)


def test_the_set_spans_rates_devices_ages_and_chests() -> None:
    specs = truth_set(60.0)
    assert {s.device_rate_hz for s, _ in specs} == {2000, 4000, 4500, 8000}
    rates = {s.rate_bpm for s, _ in specs}
    assert (min(rates), max(rates)) == (4.0, 60.0)
    assert max(s.rate_bpm for s, band in specs if band == "adult") == 60.0  # distress
    assert {band for _, band in specs} == {"adult", "child-1-5y"}
    assert len({s.label() for s, _ in specs}) == len(specs)  # one file name each
    assert any(s.expiration_db == 0.0 and s.ie_ratio == 1.0 for s, _ in specs)
    assert any(s.pause_share > 0 for s, _ in specs)
    assert any(s.expiration_band_hz == s.inspiration_band_hz for s, _ in specs)  # alike phases
    assert {s.heart_bpm for s, _ in specs} >= {60.0, 140.0}


def test_a_chest_started_mid_cycle_is_the_same_chest_from_later_on() -> None:
    """``start_s``: the recording begins that far into the chest's breathing; its truth counts
    the inspirations that peak inside it, and a cycle begun before it has a negative onset."""
    whole = Breathing(rate_bpm=12.0, seconds=70.0, device_rate_hz=2000, jitter=0.0, seed=4)
    audio, truth = synthesize(whole)
    later, later_truth = synthesize(replace(whole, seconds=60.0, start_s=10.0))
    tail = audio[20_000:]
    assert later.shape == tail.shape
    assert np.corrcoef(later, tail)[0, 1] > 0.9999  # the same sound, scaled to its own peak
    t_in = 5.0 / 3.0  # 1:2, a third of the 5-s cycle
    peaks = [t + t_in / 2 - 10.0 for t in truth.onsets_s]
    assert later_truth.cycles == sum(1 for p in peaks if 0.0 <= p < 60.0) == 12
    assert later_truth.rate_bpm == pytest.approx(12.0)  # from peak to peak
    assert later_truth.count_rate_bpm == pytest.approx(12.0)
    assert later_truth.onsets_s[0] < 0.0 < later_truth.onsets_s[1]  # the cycle the start cut
    assert np.allclose(np.diff(later_truth.onsets_s), 5.0)
    with pytest.raises(ValueError, match="start_s"):
        synthesize(replace(whole, start_s=-1.0))


def test_the_started_set_begins_at_every_point_of_a_cycle() -> None:
    specs = started_set(60.0)
    assert {s.device_rate_hz for s, _ in specs} == {2000, 4000, 4500, 8000}
    assert {band for _, band in specs} == {"adult"}
    assert not any(s.pause_share for s, _ in specs)
    assert len({s.label() for s, _ in specs}) == len(specs)
    shares = []  # where in its cycle each recording of the 2-kHz device begins
    for spec in (s for s, _ in specs if s.device_rate_hz == 2000):
        onsets = synthesize(spec)[1].onsets_s
        began = max(t for t in onsets if t <= 0.0)
        after = min(t for t in onsets if t > 0.0)
        shares.append(-began / (after - began))
    assert np.max(np.diff(sorted([0.0, *shares, 1.0]))) < 0.15  # no part of the cycle left out


# chests where each breath cycle is heard as two humps of like loudness: an expiration as loud
# as the inspiration and filling the cycle, or a little quieter and lower in pitch, or with a
# pause after a quarter of the cycles. The tracker of the revision before counted 24, 24, 16
# and 25 breaths on them (12, 18, 8 and 13 cycles): each sound a breath. The last, slow and
# paused, leaves a 30-s window 6 humps: while the phases' alternation needed 8, it was counted
# at 13 breaths for 8 cycles.
PAUSED = Breathing(
    rate_bpm=15,
    expiration_db=-3,
    ie_ratio=1.2,
    expiration_fraction=0.9,
    pause_share=0.25,
    pause_s=3.0,
    seed=7,
    device_rate_hz=2000,
)
TWO_HUMPS = [
    Breathing(rate_bpm=12, expiration_db=0, ie_ratio=1.0, expiration_fraction=1.0),
    Breathing(
        rate_bpm=18, expiration_db=-3, ie_ratio=1.2, expiration_fraction=0.9, device_rate_hz=4500
    ),
    Breathing(
        rate_bpm=8, expiration_db=0, ie_ratio=1.0, expiration_fraction=0.9, device_rate_hz=4500
    ),
    PAUSED,
    replace(PAUSED, rate_bpm=10, pause_s=4.5, seed=3005, device_rate_hz=4500),
]


def detected(clips: dict[str, tuple[np.ndarray, int]], folder: Path) -> dict[str, dict[str, Any]]:
    """Each clip (audio, its device's rate) written as that device would record it and read by
    ``lungwatch detect``'s path: the recording's respiration summary."""
    recordings = {}
    for name, (audio, rate_hz) in clips.items():
        recordings[name] = folder / f"{name}.wav"
        soundfile.write(recordings[name], audio, rate_hz, subtype="PCM_16")
    model_folder, file = resolve_model(Path("models/sed"))
    found = detect_recordings(recordings, model_folder, file)
    out = {}
    for name in clips:
        got = found[name].respiration
        assert got is not None
        out[name] = got
    return out


def through_the_device(
    specs: list[Breathing], folder: Path
) -> list[tuple[str, Truth, dict[str, Any]]]:
    """Each chest through :func:`detected`: (name, truth, the recording's respiration summary)."""
    clips, truths = {}, {}
    for i, spec in enumerate(specs):
        audio, truths[f"c{i}"] = synthesize(spec)
        clips[f"c{i}"] = (audio, spec.device_rate_hz)
    got = detected(clips, folder)
    return [(name, truth, got[name]) for name, truth in truths.items()]


def counted_once(specs: list[Breathing], folder: Path) -> list[tuple[str, Truth, dict[str, Any]]]:
    """:func:`through_the_device`, each chest assessable with every cycle counted once."""
    found = through_the_device(specs, folder)
    for name, truth, got in found:
        assert got["assessable"], (name, got)
        assert got["breaths"] == truth.cycles, (name, got["breaths"], truth.cycles)
    return found


def from_the_truth_set(names: tuple[str, ...]) -> list[Breathing]:
    """The truth set's chests of these labels."""
    specs = {spec.label(): spec for spec, _ in truth_set(60.0)}
    return [specs[n] for n in names]


def summary_row(truth: Truth, got: dict[str, Any]) -> dict[str, Any]:
    """An assessable chest's row for :func:`rate_summary`: the device's report beside its truth."""
    return {"assessable": True, "rate_bpm": got["rate_bpm"], "rate_ref_bpm": truth.rate_bpm,
            "breaths": got["breaths"], "cycles": truth.cycles, "period_ref_bpm": None,
            "live_median_bpm": None}  # fmt: skip


def test_one_breath_per_cycle_where_a_cycle_is_heard_as_two_humps(tmp_path: Path) -> None:
    rows = []
    for name, truth, got in through_the_device(TWO_HUMPS, tmp_path):
        assert got["assessable"], (name, got)
        assert abs(got["breaths"] - truth.cycles) <= 1, (name, got["breaths"], truth.cycles)
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=1.1), name
        rows.append(summary_row(truth, got))
    summary = rate_summary(rows)
    assert abs(summary["rate_bias_bpm"]) <= 0.5, summary  # the bias is reported, and small


# slow breathing whose breath sound (the inspiration with its long expiration) stands over
# half its height for longer than a breath at rest: with the width a breath may have fixed
# at 4 s the tracker refused most of these breaths as steps of the floor and called the
# chests not assessable (8 /min at 8 kHz: 4 breaths of 8, at 4.5 kHz with the expiration as
# loud: 6 of 8).
SLOW = [
    Breathing(rate_bpm=8, device_rate_hz=8000, seed=2000),
    Breathing(rate_bpm=8, expiration_db=0, ie_ratio=1.5, device_rate_hz=4500, seed=2001),
    Breathing(rate_bpm=10, expiration_db=0, ie_ratio=1.5, device_rate_hz=8000, seed=3001),
]


# adults breathing faster than 45 /min: the adult band looked for 5-45 /min and read these at a
# half or a third of their rate (a 60 /min adult about 20 /min: normal, no tachypnoea)
FAST_ADULTS = [
    Breathing(rate_bpm=55.0, device_rate_hz=2000, seed=550),
    Breathing(rate_bpm=60.0, device_rate_hz=4500, seed=601, expiration_db=0.0, ie_ratio=1.5),
    Breathing(rate_bpm=50.0, device_rate_hz=8000, seed=503, snr_db=15.0, expiration_db=-10.0),
]


def test_an_adult_breathing_fast_is_read_fast(tmp_path: Path) -> None:
    for name, truth, got in through_the_device(FAST_ADULTS, tmp_path):
        assert got["assessable"], (name, got)
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=1.1), (name, got)
        assert got["rate_bpm"] > age_band("adult").high_bpm  # tachypnoea, as the ward needs


# adults breathing at 50 /min with a pause of 0.9 s after a quarter of their cycles, on four
# devices, and at 30 and 40 /min on the wearable's 4.5 kHz: each cycle's breath sound fills
# it, so the activity's deepest troughs are the pauses, and the window's period followed them
# (3.2-7.6 s): its breaths each held two or three cycles, and the tracker before read
# 11.9-16.8 for 40.9 at 50 /min (no tachypnoea) or nothing, and nothing at 30 and 40 /min.
FAST_PAUSED = (
    *(f"rr50_fs{fs}_exp-3dB_ie1.2_hr75_snr30_pause0.25x0.9_s11005" for fs in (2000, 4000, 4500)),
    "rr50_fs8000_exp-3dB_ie1.2_hr75_snr30_pause0.25x0.9_s11005",
    "rr30_fs4500_exp-3dB_ie1.2_hr75_snr30_pause0.25x1.5_s9005",
    "rr40_fs4500_exp-3dB_ie1.2_hr75_snr30_pause0.25x1.1_s10005",
)


def test_fast_breathing_with_pauses_is_read_from_its_phases(tmp_path: Path) -> None:
    for name, truth, got in through_the_device(from_the_truth_set(FAST_PAUSED), tmp_path):
        assert got["assessable"], (name, got)
        assert abs(got["breaths"] - truth.cycles) <= 1, (name, got["breaths"], truth.cycles)
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=1.5), (name, got)
        assert got["rate_bpm"] > age_band("adult").high_bpm  # tachypnoea, as the ward needs


def test_slow_breathing_whose_breaths_are_long_is_counted(tmp_path: Path) -> None:
    for name, truth, got in through_the_device(SLOW, tmp_path):
        assert got["assessable"], (name, got)
        assert abs(got["breaths"] - truth.cycles) <= 1, (name, got["breaths"], truth.cycles)


# breathing too slow for a 30-s window to hold three cycles (opioid-depressed breathing), as
# a ward's bed streams it for four minutes, on three devices: the tracker that read only 30 s
# gave 4 /min a rate in 28-57 % of its analyses, raised bradypnoea on two chests of three for
# 66 and 175 s and nothing on one, and gave 3 /min (a 20-s cycle, under the adult apnoea
# time) no rate at all. At 3 /min the count may hold an expiration or two (14 for 12).
SLOWEST = [
    Breathing(rate_bpm=4, seconds=240, device_rate_hz=4500, ie_ratio=2.0, seed=4900),
    Breathing(rate_bpm=4, seconds=240, device_rate_hz=2000, expiration_db=0, ie_ratio=1.0,
              seed=2400),
    Breathing(rate_bpm=4, seconds=240, device_rate_hz=8000, expiration_db=-3, ie_ratio=1.5,
              seed=8400),
    Breathing(rate_bpm=3, seconds=240, device_rate_hz=8000, expiration_db=-3, ie_ratio=1.5,
              seed=8300),
]  # fmt: skip


def test_breathing_at_3_and_4_a_minute_is_read_and_raises_bradypnoea(tmp_path: Path) -> None:
    recordings, truths = {}, {}
    for i, spec in enumerate(SLOWEST):
        audio, truths[f"c{i}"] = synthesize(spec)
        recordings[f"c{i}"] = tmp_path / f"c{i}.wav"
        soundfile.write(recordings[f"c{i}"], audio, spec.device_rate_hz, subtype="PCM_16")
    model_folder, file = resolve_model(Path("models/sed"))
    found = detect_recordings(recordings, model_folder, file)
    for name, truth in truths.items():
        got = found[name].respiration
        assert got is not None
        assert got["assessable"], (name, got["assessed_share"])
        if truth.rate_bpm > 3.5:
            assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=0.2), name
            assert got["breaths"] == truth.cycles, name
        else:
            assert got["rate_bpm"] < 4.0, name
        alarms = [e for e in found[name].physiological if e["type"] == "bradypnoea"]
        assert alarms, name
        assert alarms[0]["start_s"] <= 60.0, name  # the rate out of range for 60 s, then on
        raised = sum(e["end_s"] - e["start_s"] for e in alarms)
        assert raised >= 0.5 * (SLOWEST[0].seconds - alarms[0]["start_s"]), name


# chests whose recording ends during the last cycle's expiration, where that sound rises once
# the inspiration has fallen: the tracker of the revision before counted it as one more breath
# (9, 11, 21 and 25 breaths for 8, 10, 20 and 24 cycles), +1 breath/min on a one-minute
# recording.
CUT_BY_THE_END = [
    Breathing(rate_bpm=8, device_rate_hz=8000, seed=2000),
    Breathing(rate_bpm=10, device_rate_hz=8000, seed=3000),
    Breathing(
        rate_bpm=20, expiration_db=-2, heart_bpm=140, heart_db=6, device_rate_hz=4000, seed=7002
    ),
    Breathing(
        rate_bpm=24, expiration_db=-10, heart_bpm=60, snr_db=15, device_rate_hz=2000, seed=8003
    ),
]


def test_a_breath_the_recording_end_cuts_is_not_counted_twice(tmp_path: Path) -> None:
    counted_once(CUT_BY_THE_END, tmp_path)


# chests whose inspiration and expiration are equally loud (I:E 1), from the truth set: the
# octave check takes the period as half the cycle, and the window's humps at the cycle passed
# the count check with the minimum gap of half a cycle, which kept either phase where the two
# come that far apart: an analysis near the end kept an expiration half a cycle after the
# last breath (7, 22, 9 and 16 breaths for 6, 20, 8 and 15 cycles). They are paired by
# phase now.
EQUALLY_LOUD = (
    "rr6_fs2000_exp0dB_ie1_hr75_snr30_s1004",
    "rr20_fs2000_exp0dB_ie1_hr75_snr30_s7004",
    "rr8_fs2000_exp0dB_ie1_hr75_snr30_s2004",
    "rr15_fs4000_exp0dB_ie1_hr75_snr30_s5004",
)


def test_equally_loud_phases_are_paired_into_cycles_to_the_recordings_end(tmp_path: Path) -> None:
    counted_once(from_the_truth_set(EQUALLY_LOUD), tmp_path)


def test_equally_loud_phases_at_60_a_minute_are_counted_once(tmp_path: Path) -> None:
    """The truth set's adults at 60 /min with phases equally loud (I:E 1) on 4 and 8 kHz: a
    window whose period is the cycle still held a stray other phase here and there; the humps
    at half the period are now judged by loudness too (the revision before counted 66 and 66
    for 60)."""
    names = ("rr60_fs4000_exp0dB_ie1_hr75_snr30_s12004", "rr60_fs8000_exp0dB_ie1_hr75_snr30_s12004")
    counted_once(from_the_truth_set(names), tmp_path)


def test_a_cycle_the_recording_start_cuts_counts_as_its_annotators_count_it(
    tmp_path: Path,
) -> None:
    """A recording that starts as a cycle's expiration fades holds that cycle, cut: ICBHI's
    annotators count it, and so does the recording's count (the revision before counted one
    fewer on every chest here, -3 breaths/min on a 20-s recording). A recording that starts in
    the pause before an inspiration holds no cut cycle (the other tests' chests)."""
    clips, expected = {}, {}
    for ie_ratio, heard, before_end in ((2.0, 0.5, 0.08), (1.5, 0.4, 0.12)):
        for rate in (15.0, 24.0, 30.0, 40.0):
            spec = Breathing(rate_bpm=rate, seconds=40.0, jitter=0.0, ie_ratio=ie_ratio,
                             expiration_fraction=heard, seed=int(rate))  # fmt: skip
            audio, truth = synthesize(spec)
            period = 60.0 / rate
            t_in = period / (1.0 + ie_ratio)
            # the third cycle's expiration sound ends here, its last stretch in the recording
            start = truth.onsets_s[2] + t_in + heard * (period - t_in) - before_end * period
            cycles = round(20.0 / period)  # the end cuts the same phase: whole inspirations
            fs = spec.device_rate_hz
            name = f"ie{ie_ratio:g}_rr{rate:g}"
            clip = audio[round(start * fs) : round((start + cycles * period) * fs)]
            clips[name] = (clip, fs)
            expected[name] = cycles + 1  # the start's cut cycle, then whole ones
    found = detected(clips, tmp_path)
    for name, cycles in expected.items():
        got = found[name]
        assert got["assessable"], (name, got)
        assert got["breaths"] == cycles, (name, got["breaths"], cycles)


def test_a_recording_begun_anywhere_in_a_cycle_reads_its_breathing_rate(tmp_path: Path) -> None:
    """The started set's chests on the wearable's 4.5-kHz band (those whose phases differ in
    spectrum; the alike ones have their own test): each recording begins at
    another point of its cycle. Where it begins as a breath fades, its count holds the cycle
    the start cut; its rate is read from breath to breath and holds no such cycle. The breaths
    per minute of audio, the recording's rate before, read them +0.73 breaths/min over."""
    specs = [spec for spec, _ in started_set(60.0) if spec.device_rate_hz == 4500
             and spec.expiration_band_hz != spec.inspiration_band_hz]  # alike: below  # fmt: skip
    rows, over = [], 0
    for name, truth, got in through_the_device(specs, tmp_path):
        assert got["assessable"], (name, got)
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=1.0), (name, got)
        over += got["breaths"] > truth.cycles
        rows.append(summary_row(truth, got))
    assert over >= len(specs) // 3  # cut cycles counted (a count per minute would read over)
    assert abs(rate_summary(rows)["rate_bias_bpm"]) <= 0.3


# chests whose expiration sounds as the inspiration does (the same band, nearly as long) and
# 2-3 dB softer, begun anywhere in a cycle: the phases do not differ in tilt, the activity's
# period is half the cycle, and the tracker of the revision before counted every expiration
# as a breath (8 /min read 16, 12 read 24, 18 read 22-35: +9.1 breaths/min on 40 such chests
# at 8-20 /min on 2 and 4.5 kHz). The humps alternate in loudness, and the activity is as
# alike two periods on as one: they are paired.
ALIKE = dict(ie_ratio=1.2, expiration_fraction=0.9, expiration_band_hz=(150.0, 1000.0))
ALIKE_PHASES = [
    Breathing(rate_bpm=8, device_rate_hz=4500, expiration_db=-2, start_s=9.3, seed=702, **ALIKE),
    Breathing(rate_bpm=12, device_rate_hz=2000, expiration_db=-2, start_s=7.8, seed=721, **ALIKE),
    Breathing(rate_bpm=18, device_rate_hz=4500, expiration_db=-3, start_s=4.7, seed=730, **ALIKE),
    Breathing(rate_bpm=20, device_rate_hz=8000, expiration_db=-2, snr_db=20, seed=741, **ALIKE),
]


def test_phases_alike_in_sound_are_paired_by_their_loudness(tmp_path: Path) -> None:
    rows = []
    for name, truth, got in through_the_device(ALIKE_PHASES, tmp_path):
        assert got["assessable"], (name, got)
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=1.1), (name, got, truth)
        rows.append(summary_row(truth, got))
    # +0.24 now: the expirations the first windows count, before 6 humps can be judged, are
    # withdrawn once a window pairs them (+0.75 before; before the loudness, +6.8)
    assert abs(rate_summary(rows)["rate_bias_bpm"]) <= 0.5


def test_phases_alike_in_sound_are_paired_again_after_a_lost_signal(tmp_path: Path) -> None:
    """The alike chests at 18 and 20 /min with 5 s of digital zeros from 35 s: each run of good
    signal in a window is judged on its own, so the run before the gap stays paired in the
    windows after it, and the run after it is paired once it holds 6 humps to judge (the
    revision before read 29.0 and 30.7: every hump of a window that held the gap a breath).
    Slower, the run after the gap is too short to judge before the stream ends: 8 and 12 /min
    read 13.5 and 16.8."""
    clips, truths = {}, {}
    for i, spec in enumerate(ALIKE_PHASES[2:]):
        audio, truths[f"c{i}"] = synthesize(spec)
        audio[35 * spec.device_rate_hz : 40 * spec.device_rate_hz] = 0.0
        clips[f"c{i}"] = (audio, spec.device_rate_hz)
    for name, got in detected(clips, tmp_path).items():
        assert got["assessable"], (name, got)
        assert got["rate_bpm"] == pytest.approx(truths[name].rate_bpm, abs=1.0), (name, got)


def test_an_expiration_showing_through_a_windows_cycle_is_paired_out(tmp_path: Path) -> None:
    """The truth set's alike chests at 20 and 24 /min on 2 and 8 kHz, begun with the recording:
    once a window's strongest period is the cycle, a few expirations still stand out as humps
    of their own, too few to fail the count check (25 %). Where two humps lie nearer than 0.75
    of a cycle, the humps at half the period are judged as the phases, by tilt or loudness,
    and the expirations among them paired out (the revision before counted 21 and 23 for 20,
    26 and 25 for 24)."""
    specs = [
        spec
        for spec, age in truth_set()
        if age == "adult"
        and spec.expiration_band_hz == spec.inspiration_band_hz
        and spec.rate_bpm in (20.0, 24.0)
        and spec.device_rate_hz in (2000, 8000)
    ]
    assert len(specs) == 4
    for name, truth, got in counted_once(specs, tmp_path):
        assert got["rate_bpm"] == pytest.approx(truth.rate_bpm, abs=0.2), (name, got, truth)


def test_breaths_that_vary_in_loudness_keep_the_chests_timing() -> None:
    """``loudness_spread_db``: each phase of each cycle louder or softer by up to that much, from
    draws of its own: the chest's timing (and every chest without it) stays as it was."""
    plain = Breathing(rate_bpm=12.0, device_rate_hz=4000, jitter=0.0, heart_bpm=0.0,
                      snr_db=80.0, expiration_db=-80.0, seed=4)  # fmt: skip
    varied = replace(plain, loudness_spread_db=6.0)
    audio, truth = synthesize(plain)
    varied_audio, varied_truth = synthesize(varied)
    assert varied_truth == truth
    assert varied.label() == plain.label().replace("_s4", "_vary6dB_s4")

    def levels(x: np.ndarray) -> np.ndarray:  # each inspiration's level (dB), its first 5 s
        spans = [(t, t + 5.0 / 3.0) for t in truth.onsets_s if 0.0 <= t < 58.0]
        rms = [np.sqrt(np.mean(x[round(a * 4000) : round(b * 4000)] ** 2)) for a, b in spans]
        return 20 * np.log10(np.array(rms))

    steady, spread = levels(audio), levels(varied_audio)
    assert np.ptp(steady) < 0.5
    assert np.ptp(spread) > 4.0
    assert np.all(np.abs((spread - steady) - np.median(spread - steady)) <= 12.5)
    for bad in (-1.0, float("nan"), 21.0):
        with pytest.raises(ValueError, match="loudness_spread_db"):
            synthesize(replace(plain, loudness_spread_db=bad))


def test_transient_sounds_are_added_on_draws_of_their_own() -> None:
    """``transients_per_min``: noise bursts at random times, from draws of their own: the
    chest's breaths stay as they were, and the bursts stand out over them."""
    plain = Breathing(rate_bpm=12.0, device_rate_hz=4500, seed=9, **ALIKE)
    noisy = replace(plain, transients_per_min=6.0, transient_db=12.0)
    audio, truth = synthesize(plain)
    noisy_audio, noisy_truth = synthesize(noisy)
    assert noisy_truth == truth
    assert noisy.label() == plain.label().replace("_s9", "_tr6x12dB_s9")
    peak = lambda x: float(np.max(np.abs(x)))  # noqa: E731
    assert peak(noisy_audio / peak(noisy_audio) - audio / peak(audio)) > 0.3
    for bad in (-1.0, float("nan"), 61.0):
        with pytest.raises(ValueError, match="transients_per_min"):
            synthesize(replace(plain, transients_per_min=bad))
    for bad in (float("nan"), float("inf"), 41.0):
        with pytest.raises(ValueError, match="transient_db"):
            synthesize(replace(noisy, transient_db=bad))


# Phases alike in sound (the expiration 2 dB softer) with a transient sound now and then (3 a
# minute, +6 dB over the recording's RMS): a burst on a phase puts it out of turn, and a window
# that needed every hump to turn counted both phases (+2.29 breaths/min, 7 of 12 within one
# breath, on 2026-12-01; +1.67 and 9 of 12 with a few humps allowed out of turn). Now every other
# hump louder on average is taken too, and a window half the cycle of a rate read within the
# last window takes a looser chance (docs/respiration.md, "Phases alike in sound"): 10 of 12
# within one breath, +1.14 (2026-12-02); 8 /min at 2 kHz (a window's 6-8 humps) reads 16 for 8.
TRANSIENT_ALIKE = [
    Breathing(
        rate_bpm=rate,
        device_rate_hz=fs,
        expiration_db=-2.0,
        seed=100 * i + fs,
        transients_per_min=3.0,
        transient_db=6.0,
        **ALIKE,
    )
    for fs in (2000, 4500)
    for i, rate in enumerate((8.0, 10.0, 12.0, 15.0, 18.0, 20.0))
]


def test_phases_alike_in_sound_with_a_transient_now_and_then_are_paired(tmp_path: Path) -> None:
    found = through_the_device(TRANSIENT_ALIKE, tmp_path)
    within_one = [abs(got["breaths"] - truth.cycles) <= 1 for _, truth, got in found]
    rows = [summary_row(truth, got) for _, truth, got in found]
    assert sum(within_one) >= 10, [(n, g["breaths"], t.cycles) for n, t, g in found]
    assert rate_summary(rows)["rate_bias_bpm"] <= 1.5


# Slow chests whose humps a 30-s window holds too few of to judge (5 or 6 at 6 /min): alike in
# sound, and lower-pitched in expiration with a pause after a quarter of the cycles. Windows
# that judged them paired them, the others counted both phases: 10 breaths for 6 cycles and
# 9-10 for 5 (2026-12-01). Where the period is half the cycle of a rate read within the last
# window, 4 humps are judged (docs/respiration.md, "Phases alike in sound").
SLOW_ALIKE = tuple(f"rr6_fs{fs}_exp-2dB_ie1.2_hr75_snr30_alike_s1006" for fs in DEVICE_RATES_HZ)
SLOW_PAUSED = tuple(
    f"rr6_fs{fs}_exp-3dB_ie1.2_hr75_snr30_pause0.25x7.5_s1005" for fs in DEVICE_RATES_HZ
)


def test_slow_chests_whose_windows_hold_few_humps_are_not_counted_twice(tmp_path: Path) -> None:
    found = through_the_device(from_the_truth_set(SLOW_ALIKE + SLOW_PAUSED), tmp_path)
    for name, truth, got in found:
        assert got["assessable"], name
        assert got["breaths"] <= truth.cycles + 2, (name, got["breaths"], truth.cycles)
        assert got["rate_bpm"] <= truth.rate_bpm + 1.5, (name, got["rate_bpm"], truth.rate_bpm)


# Phases alike in sound whose loudness varies from breath to breath (±3 dB each, the expiration
# 4 dB softer): the loudness no longer turns at every hump, and the windows whose period is half
# the cycle counted both phases: +4.64 breaths/min, 1 of 8 within one breath (2026-12-01; 12 /min
# at 2 kHz read 21.4). Every other hump louder on average, the looser chance where a rate twice
# the period was read within the last window, and the withdrawal of both phases counted before
# the window that pairs them (docs/respiration.md, "Phases alike in sound"): +0.78, 5 of 8
# (2026-12-02), short of the target (8 /min at 4.5 kHz reads 12 for 8, 20 /min 21-22 for 20).
VARYING_ALIKE = [
    Breathing(
        rate_bpm=rate,
        device_rate_hz=fs,
        expiration_db=-4.0,
        loudness_spread_db=3.0,
        seed=100 * i + 7 * fs,
        **ALIKE,
    )
    for fs in (2000, 4500)
    for i, rate in enumerate((8.0, 12.0, 15.0, 20.0))
]


@pytest.fixture(scope="module")
def varying_alike(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[str, Truth, dict[str, Any]]]:
    return through_the_device(VARYING_ALIKE, tmp_path_factory.mktemp("varying"))


def test_phases_alike_in_sound_varying_in_loudness_are_mostly_paired(
    varying_alike: list[tuple[str, Truth, dict[str, Any]]],
) -> None:
    within_one = [abs(got["breaths"] - truth.cycles) <= 1 for _, truth, got in varying_alike]
    rows = [summary_row(truth, got) for _, truth, got in varying_alike]
    assert sum(within_one) >= 5, [(n, g["breaths"], t.cycles) for n, t, g in varying_alike]
    assert rate_summary(rows)["rate_bias_bpm"] <= 1.2


@pytest.mark.xfail(strict=True, reason="alike phases varying in loudness are counted over")
def test_phases_alike_in_sound_varying_in_loudness_are_paired(
    varying_alike: list[tuple[str, Truth, dict[str, Any]]],
) -> None:
    rows = [summary_row(truth, got) for _, truth, got in varying_alike]
    assert abs(rate_summary(rows)["rate_bias_bpm"]) <= 0.5
