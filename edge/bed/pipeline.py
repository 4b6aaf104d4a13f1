"""Per-stream pipeline: chunks -> streaming front ends -> feature windows (the model's chunks).

For any chunking a window equals training's view, ``extract(audio, spec.replace(kind=k))`` stacked
over the kinds and cut at ``s = 0, hop_frames, ...`` (tested to 1e-4); a window is released once
every kind (cwt has lookahead) has produced its last frame. Timeline: a jump forward or a chunk
marked ``missing`` becomes zeros marked missing; over a loss shorter than ``conceal_max_samples``
the feature frames repeat the frame before it, so a streaming model's context carries on over a
spectrum like its neighbours' rather than a hole of digital silence; an overlap is dropped and
counted; NaN/Inf samples become zeros, counted. Memory is allocated once: a chunk is processed in
pieces of at most ``max_piece_samples``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numba import njit

from edge.bed.quality import QualityMeasures, measure
from edge.features import (
    FEATURE_KINDS,
    FeatureSpec,
    FrameStream,
    lookahead_samples,
    make_stream,
    make_streams,
)
from edge.sources.base import SourceChunk
from lungwatch.errors import LungwatchError

DEFAULT_PIECE_SAMPLES = 4096  # the front ends' default largest chunk: no reallocation
OK, MISSING, INVALID = 0, 1, 2  # per-sample flags


class PipelineError(LungwatchError, ValueError):
    """The pipeline was configured or fed wrongly."""


@dataclass(frozen=True)
class WindowReady:
    """One feature window of one stream, ready for the model: ``features`` float32
    ``(n_kinds, n_bands, window_frames)``. The quality fields describe the audio new since the
    previous window, ``[quality_start_sample, end_sample)`` (the whole first window)."""

    features: np.ndarray
    start_frame: int
    start_sample: int
    end_sample: int
    quality_start_sample: int
    audio_quality: QualityMeasures
    missing_fraction: float  # of the whole window
    hop_missing_fraction: float
    invalid_samples: int  # NaN/Inf samples replaced by zeros in the last hop (or first window)
    padded_frames: int = 0  # trailing frames that are end-of-stream padding (StreamPipeline.flush)
    hop_missing_samples: int = 0  # missing samples in the last hop (the span judged for gaps)
    # (n_level_bands, window_frames) float32: the level front end's frames; None: features[0]
    levels: np.ndarray | None = None

    @property
    def level_frames(self) -> np.ndarray:
        return self.features[0] if self.levels is None else self.levels


@njit(cache=True)
def _ingest(x, audio, flags, pos):
    """Copy ``x`` into ``audio[pos:]``, NaN/Inf replaced by 0 and flagged; returns their count."""
    bad = 0
    for i in range(x.shape[0]):
        value = x[i]
        if np.isfinite(value):
            audio[pos + i] = value
            flags[pos + i] = OK
        else:
            audio[pos + i] = 0.0
            flags[pos + i] = INVALID
            bad += 1
    return bad


@njit(cache=True)
def _store_frames(frames, ring, j):
    """Write ``frames`` (m, F) into the columns from ``j`` of ``ring`` (F, R), wrapping."""
    ring_frames = ring.shape[1]
    m = frames.shape[0]
    first = min(m, ring_frames - j)
    for b in range(frames.shape[1]):
        row = ring[b]
        for i in range(first):
            row[j + i] = frames[i, b]
        for i in range(first, m):
            row[i - first] = frames[i, b]


class StreamPipeline:
    def __init__(
        self,
        spec: FeatureSpec,
        kinds: tuple[str, ...],
        window_frames: int,
        hop_frames: int,
        *,
        max_piece_samples: int = DEFAULT_PIECE_SAMPLES,
        conceal_max_samples: int = 0,
        level_spec: FeatureSpec | None = None,
        level_bands: int | None = None,
    ) -> None:
        """``level_spec``: the front end whose frames each window carries as ``levels`` for the
        breath tracker, which needs frames the model's front end may normalise away or
        band-limit (None, or the first kind's own spec: ``features[0]``). ``level_bands``:
        only the lowest that many of its bands (None: all)."""
        if not kinds or any(k not in FEATURE_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise PipelineError(f"kinds must be distinct names from {FEATURE_KINDS}, got {kinds!r}")
        if window_frames < 1 or hop_frames < 1:
            raise PipelineError(
                f"window_frames and hop_frames must be >= 1, got {window_frames} and {hop_frames}"
            )
        if not 0 <= conceal_max_samples <= max_piece_samples:
            raise PipelineError(
                f"conceal_max_samples must be in [0, {max_piece_samples}], got "
                f"{conceal_max_samples}"
            )
        self.spec, self.kinds = spec, tuple(kinds)
        self._conceal_max = conceal_max_samples
        self.window_frames, self.hop_frames = window_frames, hop_frames
        specs = [spec.replace(kind=k) for k in kinds]
        lookahead = max(lookahead_samples(s) for s in specs)
        frame, hop = spec.frame_samples, spec.hop_samples
        self.window_samples = (window_frames - 1) * hop + frame
        self.hop_samples = hop_frames * hop
        self._quality_samples = max(self.hop_samples, frame)
        self._piece = max_piece_samples
        self._lookahead = lookahead
        self._keep = max(self.window_samples, self._quality_samples) + lookahead
        self._audio = np.zeros(self._keep + self._piece, dtype=np.float32)
        self._flags = np.zeros(self._keep + self._piece, dtype=np.uint8)
        ring_frames = window_frames + -(-(max_piece_samples + lookahead) // hop) + 2
        self._ring = np.zeros((len(kinds), spec.n_bands, ring_frames), dtype=np.float32)
        self._level_stream: FrameStream | None = None
        self._levels: np.ndarray | None = None
        if level_spec is None or level_spec == specs[0]:
            first = make_stream(specs[0], max_chunk_samples=max_piece_samples)
        else:
            shape = (level_spec.frame_samples, level_spec.hop_samples)
            if shape != (frame, hop) or lookahead_samples(level_spec) > lookahead:
                raise PipelineError(
                    f"level_spec must have the frame and hop of the spec ({frame}, {hop}) and "
                    f"no more lookahead, got {shape}"
                )
            # the first kind's stream is pushed first (_advance), so the levels can read its STFT
            if level_bands is not None and not 1 <= level_bands <= level_spec.n_bands:
                raise PipelineError(
                    f"level_bands must be in [1, {level_spec.n_bands}], got {level_bands}"
                )
            first, self._level_stream = make_streams(
                specs[0], level_spec, level_bands, max_chunk_samples=max_piece_samples
            )
            rows = level_spec.n_bands if level_bands is None else level_bands
            self._levels = np.zeros((rows, ring_frames), dtype=np.float32)
        rest = [make_stream(s, max_chunk_samples=max_piece_samples) for s in specs[1:]]
        self._streams = [first, *rest]
        self._counts = [0] * len(kinds)
        self.reset()

    def reset(self) -> None:
        for stream in self._streams:
            stream.reset()
        self._audio[:] = 0.0
        self._flags[:] = OK
        self._ring[:] = 0.0
        if self._level_stream is not None:
            self._level_stream.reset()
            self._levels[:] = 0.0  # type: ignore[index]
        self._level_count = 0
        self._counts = [0] * len(self._counts)
        self._pos = 0  # next write index in _audio
        self._base = 0  # stream sample index of _audio[0]
        self._next_start = 0  # start frame of the next window
        self.samples_seen = 0  # = the next expected sample index
        self.missing_samples = 0
        self._concealed: list[tuple[int, int]] = []  # short losses, stream samples [a, b)
        self.invalid_samples = 0
        self._flagged_until = 0  # no missing or NaN/Inf sample at or after this stream index
        self.overlap_samples_dropped = 0
        self.windows_emitted = 0

    @property
    def frames_complete(self) -> int:
        """Frames every kind (and the level front end) has produced."""
        if self._level_stream is not None:
            return min(*self._counts, self._level_count)
        return min(self._counts)

    @property
    def samples_to_next_window(self) -> int:
        """Samples still to push before the next window is complete (at least 1)."""
        start = self._next_start * self.spec.hop_samples
        return max(1, start + self.window_samples + self._lookahead - self.samples_seen)

    def push(self, chunk: SourceChunk) -> list[WindowReady]:
        ready: list[WindowReady] = []
        x = chunk.samples
        gap = chunk.first_sample - self.samples_seen
        if gap > 0:
            self._fill_missing(gap, ready)
        elif gap < 0:
            skip = min(-gap, x.shape[0])
            self.overlap_samples_dropped += skip
            x = x[skip:]
        if chunk.missing:
            self._fill_missing(x.shape[0], ready)
            return ready
        for start in range(0, x.shape[0], self._piece):
            piece = x[start : start + self._piece]
            at = self._make_room(piece.shape[0])
            bad = _ingest(piece, self._audio, self._flags, at)
            if bad:
                self.invalid_samples += bad
                self._flagged_until = self._base + at + piece.shape[0]
            self._advance(at, piece.shape[0], ready)
        return ready

    def flush(self, fill: np.ndarray, through_frame: int) -> list[WindowReady]:
        """After the stream's last chunk: the windows that cover every frame before
        ``through_frame``, frames past the real ones set to ``fill`` (K, F) and counted in
        ``padded_frames``. No more audio is taken afterwards without :meth:`reset`."""
        fill = np.asarray(fill, np.float32)
        if fill.shape != self._ring.shape[:2]:
            raise PipelineError(f"flush frame must be {self._ring.shape[:2]}, got {fill.shape}")
        real = self.frames_complete
        if real == 0:
            return []  # nothing to describe
        ring_frames = self._ring.shape[2]
        ready: list[WindowReady] = []
        while self._next_start < through_frame:
            end = self._next_start + self.window_frames
            for t in range(max(real, end - ring_frames), end):
                self._ring[:, :, t % ring_frames] = fill
                if self._levels is not None:  # padding: past what the level readers take
                    self._levels[:, t % ring_frames] = 0.0
            window = self._window(self._next_start, real_end_sample=self.samples_seen)
            padded = min(self.window_frames, end - real)
            ready.append(dataclasses.replace(window, padded_frames=padded))
            self._next_start += self.hop_frames
        return ready

    def _fill_missing(self, n: int, ready: list[WindowReady]) -> None:
        self.missing_samples += n
        if n < self._conceal_max:  # a short loss: the features over it are held (_advance)
            self._concealed.append((self.samples_seen, self.samples_seen + n))
        while n > 0:
            size = min(n, self._piece)
            at = self._make_room(size)
            self._audio[at : at + size] = 0.0
            self._flags[at : at + size] = MISSING
            self._flagged_until = self._base + at + size
            self._advance(at, size, ready)
            n -= size

    def _make_room(self, n: int) -> int:
        if self._pos + n > self._audio.shape[0]:
            drop = self._pos - self._keep
            self._audio[: self._keep] = self._audio[drop : self._pos]
            self._flags[: self._keep] = self._flags[drop : self._pos]
            self._base += drop
            self._pos = self._keep
        return self._pos

    def _advance(self, at: int, n: int, ready: list[WindowReady]) -> None:
        samples = self._audio[at : at + n]
        for k, stream in enumerate(self._streams):
            self._counts[k] = self._store(stream.push(samples), self._ring[k], self._counts[k])
        if self._level_stream is not None and self._levels is not None:
            frames = self._level_stream.push(samples)[:, : self._levels.shape[0]]
            self._level_count = self._store(frames, self._levels, self._level_count)
        self._pos = at + n
        self.samples_seen += n
        complete = self.frames_complete
        while self._next_start + self.window_frames <= complete:
            ready.append(self._window(self._next_start))
            self._next_start += self.hop_frames

    def _store(self, frames: np.ndarray, ring: np.ndarray, count: int) -> int:
        m = frames.shape[0]
        if m == 0:
            return count
        if self._concealed:
            frames = self._hold_concealed(count, frames, ring)
        _store_frames(frames, ring, count % ring.shape[1])
        return count + m

    def _hold_concealed(self, first: int, frames: np.ndarray, ring: np.ndarray) -> np.ndarray:
        hop, size = self.spec.hop_samples, self.spec.frame_samples
        ring_frames = ring.shape[1]
        out = frames
        for i in range(frames.shape[0]):
            lo = (first + i) * hop
            if not any(a < lo + size and lo < b for a, b in self._concealed):
                continue
            if out is frames:
                out = frames.copy()
            if i > 0:
                out[i] = out[i - 1]
            elif first > 0:
                out[i] = ring[:, (first - 1) % ring_frames]
        done = self.frames_complete * hop
        self._concealed = [(a, b) for a, b in self._concealed if b > done]
        return out

    def _window(self, start_frame: int, real_end_sample: int | None = None) -> WindowReady:
        frames = np.arange(start_frame, start_frame + self.window_frames)  # in the rings, wrapping
        features = self._ring.take(frames, axis=2, mode="wrap")
        levels = None if self._levels is None else self._levels.take(frames, axis=1, mode="wrap")
        start = start_frame * self.spec.hop_samples
        end = start + self.window_samples
        q_start = start if self.windows_emitted == 0 else max(0, end - self._quality_samples)
        if real_end_sample is not None:  # a flushed window: judge only the audio there was
            end = min(end, real_end_sample)
            q_start = max(0, min(q_start, end - self.spec.frame_samples))
        if self._flagged_until <= min(start, q_start):  # every sample here arrived and is finite
            hop_missing = window_missing = invalid = 0
        else:
            hop_flags = self._flags[q_start - self._base : end - self._base]
            hop_missing = int(np.count_nonzero(hop_flags == MISSING))
            window_missing = int(
                np.count_nonzero(self._flags[start - self._base : end - self._base] == MISSING)
            )
            invalid = int(np.count_nonzero(hop_flags == INVALID))
        self.windows_emitted += 1
        return WindowReady(
            features=features,
            start_frame=start_frame,
            start_sample=start,
            end_sample=end,
            quality_start_sample=q_start,
            audio_quality=measure(
                self._audio[q_start - self._base : end - self._base], self.spec.sample_rate_hz
            ),
            missing_fraction=window_missing / self.window_samples,
            hop_missing_fraction=hop_missing / (end - q_start),
            hop_missing_samples=hop_missing,
            invalid_samples=invalid,
            levels=levels,
        )
