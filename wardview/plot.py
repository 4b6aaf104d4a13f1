"""A recording's picture (Pillow): the demo's per recording, the ward view's per alarm clip.
Rows on one time axis (a pixel column per 10-ms frame): title, spectrogram, a bar row per model
class (each window's probability over the hop span centred on it: :mod:`edge.bed.detector`'s
convention), the detected, technical and annotated events, seconds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
BACKGROUND: RGB = (16, 16, 20)
TEXT: RGB = (230, 230, 230)
DIM: RGB = (60, 60, 66)
TECHNICAL_COLOUR: RGB = (200, 200, 200)
CLASS_COLOURS: dict[str, RGB] = {
    "Normal": (120, 120, 120),
    "Rhonchi": (60, 200, 120),
    "Wheeze": (60, 140, 255),
    "Stridor": (170, 80, 255),
    "Coarse Crackle": (240, 50, 50),
    "Fine Crackle": (255, 160, 40),
    "Wheeze+Crackle": (255, 60, 200),
    "Poor Quality": (200, 200, 200),
}
_RAMP = np.array(  # perceptual dark-to-bright ramp: black, purple, orange, pale yellow
    [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64
)
FONT = ImageFont.load_default(10)
MARGIN_PX = 112  # left margin for row labels
TITLE_PX = 14
BAND_PX = 2  # picture rows per mel band
GAP_PX = 4
CLASS_ROW_PX = 12
EVENT_ROW_PX = 12
TECHNICAL_ROW_PX = 8
AXIS_PX = 14
TICK_EVERY_S = 1
LABEL_EVERY_S = 2


class Span(NamedTuple):
    """An event on the recording's timeline, in seconds."""

    start_s: float
    end_s: float
    type: str


def colourise(values: np.ndarray, low_pct: float = 2.0, high_pct: float = 99.5) -> np.ndarray:
    """Map a 2-D array to RGB uint8 (h, w, 3), clipping at the given percentiles."""
    lo, hi = np.percentile(values, [low_pct, high_pct])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * (len(_RAMP) - 1)
    index = np.minimum(scaled.astype(np.int64), len(_RAMP) - 2)
    frac = (scaled - index)[..., None]
    rgb = _RAMP[index] * (1.0 - frac) + _RAMP[index + 1] * frac
    return rgb.round().astype(np.uint8)


class _Canvas:
    """The picture's drawing surface: seconds -> pixel columns right of the margin."""

    def __init__(self, frames_per_s: float, n_columns: int, height: int) -> None:
        self.frames_per_s, self.n_columns = frames_per_s, n_columns
        self.image = Image.new("RGB", (MARGIN_PX + n_columns, height), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.draw.font = FONT

    def columns(self, start_s: float, end_s: float) -> tuple[int, int]:
        """The first and last pixel column of ``start_s .. end_s`` (at least one column)."""
        lo = int(np.clip(round(start_s * self.frames_per_s), 0, self.n_columns))
        hi = int(np.clip(round(end_s * self.frames_per_s), 0, self.n_columns))
        return MARGIN_PX + lo, MARGIN_PX + max(hi, lo + 1) - 1

    def fill(self, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
        self.draw.rectangle((x0, y0, x1, y1), fill=colour)

    def label(self, y: int, text: str, colour: RGB = TEXT, anchor: str = "lm") -> None:
        """``text`` in the left margin, placed at ``y`` by ``anchor`` (default: its middle)."""
        self.draw.text((2, y), text, fill=colour, anchor=anchor)

    def spectrogram(
        self, y: int, frames: np.ndarray, range_hz: tuple[float, float], name: str
    ) -> int:
        """BAND_PX rows per band, low bands at the bottom; the next row."""
        rows = np.repeat(colourise(frames.T[::-1]), BAND_PX, axis=0)
        self.image.paste(Image.fromarray(rows), (MARGIN_PX, y))
        end = y + rows.shape[0]
        self.label((y + end) // 2, name)
        self.label(y + 1, f"{range_hz[1]:.0f} Hz", anchor="la")
        self.label(end - 1, f"{range_hz[0]:.0f} Hz", anchor="ld")
        return end

    def classes(
        self, y: int, names: Sequence[str], centres_s: np.ndarray, hop_s: float, probs: np.ndarray
    ) -> int:
        bar_px = CLASS_ROW_PX - 2
        for k, name in enumerate(names):
            colour = CLASS_COLOURS.get(name, TEXT)
            bottom = y + (k + 1) * CLASS_ROW_PX - 1
            self.fill(MARGIN_PX, bottom, self.image.width - 1, bottom, DIM)
            self.label(bottom - CLASS_ROW_PX // 2, name, colour)
            for centre_s, p in zip(centres_s, probs[:, k], strict=True):
                height = round(float(p) * bar_px)
                if height > 0:
                    x0, x1 = self.columns(centre_s - hop_s / 2, centre_s + hop_s / 2)
                    self.fill(x0, bottom - height, x1, bottom - 1, colour)
        return y + CLASS_ROW_PX * len(names)

    def events(self, y: int, label: str, spans: Sequence[Span], height_px: int) -> int:
        self.fill(MARGIN_PX, y, self.image.width - 1, y + height_px - 1, DIM)
        for span in spans:
            x0, x1 = self.columns(span.start_s, span.end_s)
            colour = CLASS_COLOURS.get(span.type, TECHNICAL_COLOUR)
            self.fill(x0, y + 1, x1, y + height_px - 2, colour)
        self.label(y + height_px // 2, label)
        return y + height_px

    def axis(self, y: int, duration_s: float) -> None:
        for second in range(0, int(duration_s) + 1, TICK_EVERY_S):
            x = self.columns(second, second)[0]
            if x >= self.image.width:
                break
            self.fill(x, y, x, y + 2, TEXT)
            if second % LABEL_EVERY_S == 0:
                self.draw.text((x, y + 9), str(second), fill=TEXT, anchor="mm")
        self.label(y + 9, "time (s)")


def render(
    *,
    title: str,
    spectrogram: np.ndarray,
    frames_per_s: float,
    freq_range_hz: tuple[float, float],
    classes: Sequence[str],
    window_centres_s: np.ndarray,
    window_hop_s: float,
    probabilities: np.ndarray,
    detected: Sequence[Span],
    annotated: Sequence[Span],
    spectrogram_name: str = "LOG-MEL",
) -> Image.Image:
    """``spectrogram``: ``(n_frames, n_bands)`` over ``freq_range_hz``; ``probabilities``:
    ``(n_windows, n_classes)`` for windows centred at ``window_centres_s``; spans in seconds."""
    n_columns = max(int(spectrogram.shape[0]), 1)
    height = (TITLE_PX + BAND_PX * spectrogram.shape[1] + 2 * GAP_PX + CLASS_ROW_PX * len(classes)
              + 2 * EVENT_ROW_PX + TECHNICAL_ROW_PX + AXIS_PX)  # fmt: skip
    canvas = _Canvas(frames_per_s, n_columns, height)
    canvas.label(TITLE_PX // 2, title)
    y = canvas.spectrogram(TITLE_PX, spectrogram, freq_range_hz, spectrogram_name) + GAP_PX
    y = canvas.classes(y, classes, window_centres_s, window_hop_s, probabilities) + GAP_PX
    y = canvas.events(y, "DETECTED", [s for s in detected if s.type in CLASS_COLOURS], EVENT_ROW_PX)
    technical = [s for s in detected if s.type not in CLASS_COLOURS]
    y = canvas.events(y, "TECHNICAL", technical, TECHNICAL_ROW_PX)
    y = canvas.events(y, "ANNOTATED", annotated, EVENT_ROW_PX)
    canvas.axis(y, n_columns / frames_per_s)
    return canvas.image
