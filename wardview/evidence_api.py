"""The ward view's evidence and history routes (docs/evidence.md, "Access": what each answers).
Patient audio needs a named user: without users (the loopback demo) evidence routes answer 401."""

from __future__ import annotations

import io
import itertools
import json
import threading
import urllib.parse
from collections import OrderedDict
from typing import Any

import numpy as np
import scipy.signal
from PIL import Image

from lungwatch.clip import EvidenceError, clip_of
from lungwatch.events import is_segment
from wardview.history import History
from wardview.plot import Span, render

PICTURES = 64  # rendered pictures kept
MAX_HOURS = 72
Reply = tuple[int, bytes, str]


def _json(status: int, body: dict[str, Any]) -> Reply:
    return status, json.dumps(body).encode("utf-8"), "application/json"


class EvidencePages:
    def __init__(self, history: History | None) -> None:
        self.history = history
        self._pictures: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, query: str, named_user: bool) -> Reply | None:
        """The reply to ``path`` (None: not one of these routes)."""
        if path.startswith("/api/evidence/"):
            if not named_user:
                return _json(401, {"error": "listening to patient audio needs a user with the "
                                            "view or ack role (dashboard.users)"})  # fmt: skip
            return self._evidence(path[len("/api/evidence/") :])
        if path.startswith("/api/trend/"):
            return self._trend(path[len("/api/trend/") :], query)
        return None

    def _evidence(self, name: str) -> Reply:
        episode, _, suffix = name.partition(".")
        if not is_segment(episode) or suffix not in ("", "flac", "png"):
            return _json(404, {"error": f"no such evidence: {name[:80]!r}"})
        if self.history is None:
            return _json(404, {"error": "this view keeps no history (dashboard.history_path)"})
        found = self.history.clip(episode)
        if found is None:
            return _json(404, {"error": f"no evidence of episode {episode} (yet)"})
        header, flac, ids = found
        if suffix == "flac":
            return 200, flac, "audio/flac"
        try:  # a stored clip (perhaps from an older version) is checked again before any decode
            clip = clip_of(header, {"site": "-", "episode_id": episode, **ids}, flac)
            if suffix == "png":
                return 200, self._picture(episode, clip), "image/png"
        except EvidenceError as exc:
            return _json(422, {"error": f"the clip of episode {episode} cannot be shown: {exc}"})
        return _json(200, {
            "episode_id": episode, **ids, "event_type": clip.event_type,
            "start_utc": clip.start_utc, "duration_s": round(clip.duration_s, 3),
            "sample_rate_hz": clip.sample_rate_hz, "outputs": list(clip.outputs),
            "event_offset_s": round((clip.event_start_sample - clip.start_sample)
                                    / clip.sample_rate_hz, 3),
            "audio": f"/api/evidence/{episode}.flac", "picture": f"/api/evidence/{episode}.png",
        })  # fmt: skip

    def _picture(self, episode: str, clip: Any) -> bytes:
        with self._lock:
            if episode in self._pictures:
                self._pictures.move_to_end(episode)
                return self._pictures[episode]
        png = io.BytesIO()
        picture(clip).save(png, "PNG")
        data = png.getvalue()
        with self._lock:
            self._pictures[episode] = data
            while len(self._pictures) > PICTURES:
                self._pictures.popitem(last=False)
        return data

    def _trend(self, rest: str, query: str) -> Reply:
        parts = [urllib.parse.unquote(p) for p in rest.split("/")]
        if len(parts) != 2 or not all(is_segment(p) for p in parts):
            return _json(404, {"error": "the trend's address is /api/trend/<device>/<stream>"})
        if self.history is None:
            return _json(404, {"error": "this view keeps no history (dashboard.history_path)"})
        hours = urllib.parse.parse_qs(query).get("hours", ["6"])[0]
        if not hours.isdigit() or not 1 <= int(hours) <= MAX_HOURS:
            return _json(400, {"error": f"hours must be 1..{MAX_HOURS}, got {hours[:10]!r}"})
        trend = self.history.trend(parts[0], parts[1], int(hours))
        return _json(200, {"device_id": parts[0], "stream_id": parts[1], **trend})


SPECTROGRAM_BANDS = 64  # log-spaced over 50 Hz .. min(4 kHz, Nyquist)
SPECTROGRAM_FMIN_HZ, SPECTROGRAM_FMAX_HZ = 50.0, 4000.0
FRAME_S, HOP_S = 0.025, 0.010


def spectrogram(audio: np.ndarray, rate_hz: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """(frames, bands) log power (Hann frames; a band narrower than one FFT bin takes its
    nearest bin), frames per second, the bands' range: drawn without the device's front end."""
    low, high = SPECTROGRAM_FMIN_HZ, min(SPECTROGRAM_FMAX_HZ, rate_hz / 2)
    frame, hop = max(2, round(FRAME_S * rate_hz)), max(1, round(HOP_S * rate_hz))
    if audio.size < frame:
        return np.zeros((1, SPECTROGRAM_BANDS)), rate_hz / hop, (low, high)
    freqs, _, z = scipy.signal.stft(audio, rate_hz, nperseg=frame, noverlap=frame - hop,
                                    boundary=None, padded=False)  # fmt: skip
    power = np.abs(z) ** 2
    edges = np.searchsorted(freqs, np.geomspace(low, high, SPECTROGRAM_BANDS + 1))
    edges = np.clip(edges, 0, freqs.size - 1)
    bands = np.stack([power[a : max(b, a + 1)].mean(axis=0) for a, b in itertools.pairwise(edges)])
    return np.log(bands.T + 1e-12), rate_hz / hop, (low, high)


def picture(clip: Any) -> Image.Image:
    rate, audio = clip.sample_rate_hz, clip.audio()
    frames, frames_per_s, band_range = spectrogram(audio, rate)
    probs = clip.probabilities()
    step_s = clip.frame_samples / rate
    centres = clip.first_frame_sample / rate + step_s * (np.arange(probs.shape[0]) + 0.5)
    start_s = (clip.event_start_sample - clip.start_sample) / rate
    end = clip.event_end_sample
    end_s = audio.size / rate if end is None else (end - clip.start_sample) / rate
    shown = [i for i, name in enumerate(clip.outputs) if name != "Breath"]
    return render(
        title=f"{clip.event_type} {clip.start_utc}",
        spectrogram=frames,
        frames_per_s=frames_per_s,
        freq_range_hz=band_range,
        classes=[clip.outputs[i] for i in shown],
        window_centres_s=centres,
        window_hop_s=step_s,
        probabilities=probs[:, shown] if probs.size else np.zeros((0, len(shown))),
        detected=[Span(start_s, max(start_s, end_s), clip.event_type)],
        annotated=[],
        spectrogram_name="SPECTRUM",
    )
