"""A recording's picture, drawn with NumPy (no matplotlib on the device): the demo's per
recording and the ward view's per alarm clip.

    rgb = render(title=..., spectrogram=frames, frames_per_s=100, classes=..., ...)
    write_png("out/demo/<record>.png", rgb)

Rows, top to bottom, on one time axis (one pixel column per feature frame, 10 ms):

- the record id and label;
- the spectrogram (the demo's: the model's log-mel frames; an alarm clip's: log-frequency
  bands; low bands at the bottom);
- one bar row per model class: the class probability of each window, drawn over the hop span
  centred on the window's centre (the detector's time convention, :mod:`edge.bed.detector`);
- ``DETECTED``: the physiological events the broker delivered; ``TECHNICAL``: technical ones;
- ``ANNOTATED``: the recording's annotated events;
- a time axis in seconds.

Labels use a built-in 5x7 pixel font (upper case, digits and a little punctuation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from wardview.imaging import colourise

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

GLYPH_W, GLYPH_H, ADVANCE_PX = 5, 7, 6
# 5x7 glyphs, one 5-bit row per group, top row first.
_GLYPH_ROWS = {
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    "&": "01100 10010 10100 01000 10101 10010 01101",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "?": "01110 10001 00001 00010 00100 00000 00100",
}
GLYPHS: dict[str, np.ndarray] = {
    char: np.array([[bit == "1" for bit in row] for row in rows.split()], dtype=bool)
    for char, rows in _GLYPH_ROWS.items()
}


class Span(NamedTuple):
    """An event on the recording's timeline, in seconds."""

    start_s: float
    end_s: float
    type: str


def draw_text(canvas: np.ndarray, x: int, y: int, text: str, colour: RGB = TEXT) -> None:
    """Write ``text`` (upper-cased; unknown characters as ``?``) with its top-left at x, y;
    glyphs that do not fit are clipped."""
    height, width = canvas.shape[:2]
    for i, char in enumerate(text.upper()):
        glyph = GLYPHS.get(char, GLYPHS["?"])
        left = x + i * ADVANCE_PX
        if left >= width:
            return
        rows = slice(max(y, 0), min(y + GLYPH_H, height))
        cols = slice(max(left, 0), min(left + GLYPH_W, width))
        part = glyph[rows.start - y : rows.stop - y, cols.start - left : cols.stop - left]
        canvas[rows, cols][part] = colour


class _Timeline:
    """Seconds -> pixel columns of the plot area (right of the margin)."""

    def __init__(self, frames_per_s: float, n_columns: int) -> None:
        self.frames_per_s, self.n_columns = frames_per_s, n_columns

    def columns(self, start_s: float, end_s: float) -> slice:
        lo = int(np.clip(round(start_s * self.frames_per_s), 0, self.n_columns))
        hi = int(np.clip(round(end_s * self.frames_per_s), 0, self.n_columns))
        return slice(MARGIN_PX + lo, MARGIN_PX + max(hi, lo + 1))


def _spectrogram_rows(spectrogram: np.ndarray) -> np.ndarray:
    """(n_frames, n_bands) -> RGB rows, low bands at the bottom, BAND_PX rows per band."""
    return np.repeat(colourise(spectrogram.T[::-1]), BAND_PX, axis=0)


def _class_rows(
    classes: Sequence[str], centres_s: np.ndarray, hop_s: float, probs: np.ndarray, tl: _Timeline
) -> np.ndarray:
    """One bar row per class: bar height = probability, in the class colour."""
    rows = np.full((CLASS_ROW_PX * len(classes), MARGIN_PX + tl.n_columns, 3), BACKGROUND, np.uint8)
    bar_px = CLASS_ROW_PX - 2
    for k, name in enumerate(classes):
        colour = CLASS_COLOURS.get(name, TEXT)
        bottom = (k + 1) * CLASS_ROW_PX - 1
        rows[bottom, MARGIN_PX:] = DIM
        draw_text(rows, 2, k * CLASS_ROW_PX + 3, name, colour)
        for centre_s, p in zip(centres_s, probs[:, k], strict=True):
            height = round(float(p) * bar_px)
            if height > 0:
                cols = tl.columns(centre_s - hop_s / 2, centre_s + hop_s / 2)
                rows[bottom - height : bottom, cols] = colour
    return rows


def _event_row(label: str, spans: Sequence[Span], height_px: int, tl: _Timeline) -> np.ndarray:
    """A strip with ``spans`` in their class colours (technical ones in grey)."""
    row = np.full((height_px, MARGIN_PX + tl.n_columns, 3), BACKGROUND, np.uint8)
    row[:, MARGIN_PX:] = DIM
    for span in spans:
        colour = CLASS_COLOURS.get(span.type, TECHNICAL_COLOUR)
        row[1 : height_px - 1, tl.columns(span.start_s, span.end_s)] = colour
    draw_text(row, 2, max(0, (height_px - GLYPH_H) // 2), label)
    return row


def _axis(duration_s: float, tl: _Timeline) -> np.ndarray:
    """Ticks every second, labels every two, and ``TIME (S)`` in the margin."""
    axis = np.full((AXIS_PX, MARGIN_PX + tl.n_columns, 3), BACKGROUND, np.uint8)
    for second in range(0, int(duration_s) + 1, TICK_EVERY_S):
        x = tl.columns(second, second).start
        if x >= axis.shape[1]:
            break
        axis[0:3, x] = TEXT
        if second % LABEL_EVERY_S == 0:
            draw_text(axis, x - (len(str(second)) * ADVANCE_PX) // 2, 5, str(second))
    draw_text(axis, 2, 5, "TIME (S)")
    return axis


def _spectrogram_block(
    spectrogram: np.ndarray, freq_range_hz: tuple[float, float], name: str = "LOG-MEL"
) -> np.ndarray:
    """The spectrogram right of the margin, labelled with its name and band edges."""
    rows = _spectrogram_rows(spectrogram)
    out = np.full((rows.shape[0], MARGIN_PX + rows.shape[1], 3), BACKGROUND, np.uint8)
    out[:, MARGIN_PX:] = rows
    draw_text(out, 2, (rows.shape[0] - GLYPH_H) // 2, name)
    low_hz, high_hz = freq_range_hz
    draw_text(out, 2, 1, f"{high_hz:.0f} HZ")
    draw_text(out, 2, rows.shape[0] - GLYPH_H - 1, f"{low_hz:.0f} HZ")
    return out


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
) -> np.ndarray:
    """The picture (see the module doc) as an ``(height, width, 3)`` uint8 array.

    ``spectrogram``: ``(n_frames, n_bands)`` from ``freq_range_hz[0]`` to ``[1]``;
    ``probabilities``: ``(n_windows, n_classes)``
    for windows centred at ``window_centres_s``; spans in seconds.
    """
    n_columns = max(int(spectrogram.shape[0]), 1)
    tl = _Timeline(frames_per_s, n_columns)
    width = MARGIN_PX + n_columns
    title_row = np.full((TITLE_PX, width, 3), BACKGROUND, np.uint8)
    draw_text(title_row, 2, 4, title)
    gap = np.full((GAP_PX, width, 3), BACKGROUND, np.uint8)
    physiological = [s for s in detected if s.type in CLASS_COLOURS]
    technical = [s for s in detected if s.type not in CLASS_COLOURS]
    blocks = [
        title_row,
        _spectrogram_block(spectrogram, freq_range_hz, spectrogram_name),
        gap,
        _class_rows(classes, window_centres_s, window_hop_s, probabilities, tl),
        gap,
        _event_row("DETECTED", physiological, EVENT_ROW_PX, tl),
        _event_row("TECHNICAL", technical, TECHNICAL_ROW_PX, tl),
        _event_row("ANNOTATED", annotated, EVENT_ROW_PX, tl),
        _axis(n_columns / frames_per_s, tl),
    ]
    return np.concatenate(blocks, axis=0)
