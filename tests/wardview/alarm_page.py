"""What a nurse sees and hears of the ward view's alarm list, measured in the page (shared by
``tests/wardview/test_dashboard_alarm_page.py`` and ``python -m bench.alarm_soak``):

- :data:`SPY`: every oscillator the page starts (its frequency, when it sounds on the audio
  clock, the wall time), installed before the page loads (``Page.addScriptToEvaluateOnNew
  Document``): what the browser was asked to sound, not what the page logs;
- :data:`LISTEN`: what leaves the page, every 10 ms, read from the AnalyserNode between the
  page's alarm sound and the speakers (its RMS and strongest frequency);
- :data:`TABLE_GEOMETRY`: the rendered alarm table's faults (cells narrower than their
  header's words, a cell one letter per line, an Acknowledge button outside its cell or the
  window);
- :func:`visible`: the rows a nurse sees without scrolling, and how many are out of view.
"""

from __future__ import annotations

import itertools
from typing import Any

# every oscillator the page starts: its frequency and when (the audio clock) it sounds
SPY = """
window.__pulses = [];
(function () {
  const start = OscillatorNode.prototype.start;
  OscillatorNode.prototype.start = function (when) {
    window.__pulses.push([this.frequency.value, when || this.context.currentTime, Date.now()]);
    return start.apply(this, arguments);
  };
})();
"""
# what leaves the page, every 10 ms: [wall ms, RMS, frequency of the strongest bin (Hz)]
LISTEN = """
if (!window.__heard) {
  window.__heard = [];
  const a = window.lwSound.analyser, rate = window.lwSound.context.sampleRate;
  const wave = new Float32Array(a.fftSize), bins = new Float32Array(a.frequencyBinCount);
  setInterval(() => {
    a.getFloatTimeDomainData(wave);
    let sum = 0; for (const v of wave) sum += v * v;
    const rms = Math.sqrt(sum / wave.length);
    a.getFloatFrequencyData(bins);
    let top = 0; for (let i = 1; i < bins.length; i++) if (bins[i] > bins[top]) top = i;
    window.__heard.push([Date.now(), rms, top * rate / a.fftSize]);
    if (window.__heard.length > 60000) window.__heard.splice(0, 30000);  // the last 5-10 min
  }, 10);
  // wall times after `since` (ms) of sound above `floor` RMS whose strongest frequency is `hz`
  window.__heardSince = (since, hz, floor) => window.__heard
    .filter(([t, rms, f]) => t > since && rms > floor && Math.abs(f - hz) < 60).map(([t]) => t);
}
"""
HEARD_RMS = 0.02  # a pulse is about 0.1-0.2 RMS; silence 0
# the table's rendered layout, as a list of what is wrong (empty: it reads)
TABLE_GEOMETRY = """
const table = document.querySelector('#alarms');
const words = (node) => { const r = document.createRange(); r.selectNodeContents(node);
  return r.getBoundingClientRect().width; };
const heads = [...table.querySelectorAll('thead th')];
const headWidths = heads.map(words);
const wrong = [];
for (const tr of table.querySelectorAll('tbody tr')) {
  const name = `${tr.dataset.stream}/${tr.dataset.condition} (${tr.className})`;
  const cells = [...tr.children];
  if (cells.length !== heads.length) wrong.push(`${name}: ${cells.length} cells`);
  cells.forEach((td, i) => {
    const width = td.getBoundingClientRect().width;
    if (width + 0.5 < headWidths[i]) {
      wrong.push(`${name}: ${heads[i].textContent} cell ${width.toFixed(0)} px, its header's `
        + `words ${headWidths[i].toFixed(0)} px`);
    }
    const letters = td.innerText.replace(/\\s/g, '').length;
    const r = document.createRange(); r.selectNodeContents(td);
    const lines = new Set([...r.getClientRects()].filter((q) => q.width > 0)
      .map((q) => Math.round(q.bottom))).size;
    if (letters >= 4 && lines > 0 && letters / lines < 3) {
      wrong.push(`${name}: ${heads[i].textContent} cell ${letters} letters on ${lines} lines`);
    }
  });
  const button = tr.querySelector('button.ack');
  if (button) {
    const b = button.getBoundingClientRect(), c = button.closest('td').getBoundingClientRect();
    if (b.left < c.left - 0.5 || b.right > c.right + 0.5 || b.left < 0
        || b.right > window.innerWidth || button.scrollWidth > button.clientWidth + 1) {
      wrong.push(`${name}: Acknowledge button outside its cell or the window`);
    }
  }
}
const first = table.querySelector('tbody tr button.ack');
if (first) {
  const b = first.getBoundingClientRect();
  if (b.top < 0 || b.bottom > window.innerHeight) wrong.push('first Acknowledge below the window');
}
return wrong;
"""
# the rows a nurse sees without scrolling: [stream, condition, priority, state] of each row
# inside both the list's box and the window, top first; and how many are not in view
VISIBLE = """
const box = document.querySelector('#alarms').parentElement.getBoundingClientRect();
const bottom = Math.min(box.bottom, window.innerHeight);
const rows = [...document.querySelectorAll('#alarms tbody tr')];
const seen = rows.filter((tr) => { const r = tr.getBoundingClientRect();
  return r.top >= box.top - 0.5 && r.bottom <= bottom + 0.5; });
return {visible: seen.map((tr) => [tr.dataset.stream, tr.dataset.condition,
                                   tr.querySelector('td.prio').textContent, tr.dataset.state]),
        rows: rows.length, below: rows.length - seen.length,
        said: !document.querySelector('#alarms-below') ? null
          : document.querySelector('#alarms-below').hidden ? 0
          : Number(document.querySelector('#alarms-below').dataset.count)};
"""


def visible(driver: Any) -> dict[str, Any]:
    return driver.execute_script(VISIBLE)


def top_is(driver: Any, bed: str, condition: str) -> bool:
    rows = visible(driver)["visible"]
    return bool(rows) and rows[0][:2] == [bed, condition] and rows[0][3] == "alarming"


def heard_since(driver: Any, since_ms: float, hz: float) -> list[float]:
    """Wall times (ms) after ``since_ms`` at which the page's output carried sound whose
    strongest frequency is ``hz`` (within 60 Hz)."""
    script = "return window.__heardSince(arguments[0], arguments[1], arguments[2])"
    return driver.execute_script(script, since_ms, hz, HEARD_RMS)


def bursts(times_ms: list[float], gap_ms: float = 25.0) -> int:
    """How many separate pulses the sound times make (a pulse: samples closer than gap)."""
    count, last = 0, None
    for t in sorted(times_ms):
        if last is None or t - last > gap_ms:
            count += 1
        last = t
    return count


def overlapping_pulses(driver: Any) -> list[tuple[float, float]]:
    """Pairs of started pulses (audio-clock seconds) that sound at once: two patterns."""
    starts = sorted(when for _, when, _ in driver.execute_script("return window.__pulses"))
    return [(a, b) for a, b in itertools.pairwise(starts) if b - a < 0.15]
