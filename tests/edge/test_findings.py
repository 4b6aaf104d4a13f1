"""Finding episodes: a wheeze or a crackle reaches the ward once its family recurs, the stream
and the whole-recording rule agree, and Stridor is never held."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.bed.detector import DetectorConfig, Transition
from edge.bed.findings import (
    SETTLE_S,
    FindingConfig,
    FindingTracker,
    RecurrenceRule,
    Span,
    episode_members,
    kept_events,
)
from edge.datapaths import sprsound_root
from lungwatch.events import Event, EventError, kind_of, snomed_ct

RATE = 100  # samples per second in these streams: times in hundredths


def onset(kind: str, start: float, peak: float = 0.9) -> Transition:
    s = round(start * RATE)
    return Transition(kind, "physiological", "low", "onset", s, None, peak, f"{kind}@{s}")


def ended(t: Transition, end: float) -> Transition:
    return Transition(
        t.type, t.kind, t.priority, "ended", t.start_sample, round(end * RATE), t.confidence, t.key
    )


def test_an_isolated_event_is_dropped_and_a_recurring_one_opens_an_episode() -> None:
    rule = RecurrenceRule(events=2, within_s=6.0)
    spans = [Span(1.0, 1.5), Span(20.0, 20.5), Span(24.0, 24.4), Span(29.0, 29.5), Span(50, 51)]
    # 1.0 alone; 20 and 24 recur (4 s apart) and open one; 29 starts 4.6 s after 24.4 ended:
    # the episode goes on; 50 is 20 s later, alone
    assert episode_members(spans, rule) == [[1, 2, 3]]
    assert episode_members(spans, RecurrenceRule(events=1, within_s=6.0)) == [[0], [1, 2, 3], [4]]
    assert len(episode_members(spans, RecurrenceRule(events=1, within_s=0.0))) == 5
    assert episode_members(spans, RecurrenceRule(events=3, within_s=6.0)) == []
    assert episode_members(spans, RecurrenceRule(events=3, within_s=10.0)) == [[1, 2, 3]]


def test_kept_events_report_members_episodes_and_when_they_open() -> None:
    events = [
        {"start_s": 1.0, "end_s": 1.4, "type": "Fine Crackle"},
        {"start_s": 3.0, "end_s": 3.4, "type": "Coarse Crackle"},
        {"start_s": 3.5, "end_s": 4.0, "type": "Wheeze"},
        {"start_s": 9.0, "end_s": 9.5, "type": "Stridor"},
    ]
    kept, episodes = kept_events(events, FindingConfig(enabled=True))
    assert [e["type"] for e in kept] == ["Fine Crackle", "Coarse Crackle", "Stridor"]
    assert episodes == [
        {
            "family": "DAS",
            "start_s": 1.0,
            "end_s": 3.4,
            "events": 2,
            "opened_s": 3.0,
            "first_event_s": 1.0,
        }
    ]
    everything, none = kept_events(events, FindingConfig(enabled=False))
    assert everything == events
    assert none == []


def run(tracker: FindingTracker, timeline: list[tuple[float, list[Transition]]]) -> list:
    out = []
    for now, transitions in timeline:
        out += tracker.take(transitions, round(now * RATE))
    return out + tracker.finish([], "end of stream")


def test_the_stream_holds_events_until_the_family_recurs_then_releases_them_in_order() -> None:
    tracker = FindingTracker(FindingConfig(enabled=True), RATE, Transition)
    a = onset("Fine Crackle", 1.0)
    b = onset("Coarse Crackle", 4.0)
    lone = onset("Wheeze", 2.0)
    stridor = onset("Stridor", 2.5)
    out = run(
        tracker,
        [
            (1.5, [a]),
            (1.8, [ended(a, 1.6)]),
            (2.3, [lone]),
            (2.6, [stridor]),
            (3.0, [ended(lone, 2.8), ended(stridor, 2.9)]),
            (4.4, [b]),  # the second crackle within 6 s: the episode opens with both
            (4.9, [ended(b, 4.8)]),
            (30.0, []),  # 6 s + SETTLE_S after the last crackle ended: the episode is over
        ],
    )
    said = [(t.type, t.state, t.kind) for t in out]
    assert said == [
        ("Stridor", "onset", "physiological"),  # never held
        ("Stridor", "ended", "physiological"),
        ("DAS", "onset", "finding"),
        ("Fine Crackle", "onset", "physiological"),
        ("Fine Crackle", "ended", "physiological"),
        ("Coarse Crackle", "onset", "physiological"),
        ("Coarse Crackle", "ended", "physiological"),
        ("DAS", "ended", "finding"),
    ]
    episode = out[2]
    assert episode.start_sample == a.start_sample
    assert episode.priority == "low"
    assert out[-1].end_sample == round(4.8 * RATE)
    assert out[-1].reason == "2 events"
    assert tracker.held_dropped == 1  # the lone wheeze never recurred


def test_an_event_dropped_unheard_stays_unheard_to_its_end() -> None:
    """A long wheeze held, then left behind by the window before it recurred: nothing of it
    is published, not even its end (an end without its onset would name an unknown event)."""
    tracker = FindingTracker(FindingConfig(enabled=True), RATE, Transition)
    long = onset("Wheeze", 1.0)
    later = onset("Wheeze", 20.0)
    out = tracker.take([long], 150) + tracker.take([later], 2050)
    out += tracker.take([ended(long, 21.0)], 2110)
    assert out == []
    assert tracker.held_dropped == 1


def test_the_episode_ends_only_once_the_rule_and_the_settling_time_passed() -> None:
    tracker = FindingTracker(FindingConfig(enabled=True), RATE, Transition)
    a, b = onset("Wheeze", 1.0), onset("Wheeze", 3.0)
    tracker.take([a, ended(a, 1.5), b, ended(b, 3.5)], 400)
    assert tracker.open_families() == ("CAS",)
    assert tracker.take([], round((3.5 + 6.0 + SETTLE_S - 0.1) * RATE)) == []
    (end,) = tracker.take([], round((3.5 + 6.0 + SETTLE_S + 0.1) * RATE))
    assert (end.type, end.state, end.kind) == ("CAS", "ended", "finding")
    assert tracker.open_families() == ()


def test_findings_are_on_where_a_rule_is_known_so_an_older_model_reports_as_measured() -> None:
    assert not FindingConfig().on  # no rule: a model fitted before finding episodes
    fitted = FindingConfig().with_manifest({"DAS": {"events": 3, "within_s": 4.0}})
    assert fitted.on
    assert fitted.das == RecurrenceRule(events=3, within_s=4.0)
    assert fitted.cas is None  # the default rule for the other family
    assert not FindingConfig(enabled=False).with_manifest({"DAS": {"events": 3}}).on
    assert FindingConfig(enabled=True).on


def test_disabled_findings_pass_every_transition_through() -> None:
    tracker = FindingTracker(FindingConfig(enabled=False), RATE, Transition)
    a = onset("Fine Crackle", 1.0)
    assert tracker.take([a, ended(a, 1.2)], 200) == [a, ended(a, 1.2)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 120.0), st.floats(0.1, 2.0), st.floats(0.05, 1.5)),
        min_size=0,
        max_size=25,
    ),
    st.integers(1, 3),
    st.sampled_from([2.0, 5.0, 8.0]),
)
def test_the_stream_and_the_whole_recording_rule_agree(events, m, w) -> None:
    """Events (start, length, announce delay <= 1.5 s < SETTLE_S) fed as a detector
    announces them: the events published are exactly those of the recording's episodes."""
    rule = RecurrenceRule(events=m, within_s=w)
    spans, items = [], []
    last_end = 0.0
    for start, length, delay in sorted(events):
        start = max(start, last_end + 0.05)  # one class's events do not overlap
        spans.append(Span(round(start * RATE), round((start + length) * RATE)))
        last_end = start + length
        items.append((start, length, delay))
    expected = {spans[i].start for ep in episode_members(spans, rule, RATE) for i in ep}
    timeline: list[tuple[float, Transition]] = []
    for start, length, delay in items:
        t = onset("Wheeze", start)
        timeline.append((start + min(delay, length), t))
        timeline.append((start + length + 0.01, ended(t, start + length)))
    timeline.sort(key=lambda x: x[0])
    tracker = FindingTracker(FindingConfig(cas=rule), RATE, Transition)
    out = run(tracker, [(now, [t]) for now, t in timeline] + [(200.0, [])])
    published = {t.start_sample for t in out if t.kind == "physiological" and t.state == "ended"}
    assert published == expected
    starts = [t for t in out if t.kind == "finding" and t.state == "onset"]
    ends = [t for t in out if t.kind == "finding" and t.state == "ended"]
    assert len(starts) == len(ends) == len(episode_members(spans, rule, RATE))


def test_a_finding_episode_is_a_valid_wire_message_of_its_own_kind() -> None:
    assert kind_of("CAS") == kind_of("DAS") == "finding"
    assert snomed_ct("CAS") == "56018004"
    assert snomed_ct("DAS") == "48409008"
    fields = dict(
        device_id="edge-1",
        site="ward-a",
        stream_id="bed-1",
        type="DAS",
        start_utc="2026-11-28T10:00:00Z",
        confidence=0.8,
        model_id="m",
        model_sha256="0" * 64,
    )
    event = Event.onset(**fields)
    assert event.kind == "finding"
    assert event.priority == "low"
    assert Event.from_json(event.to_json()) == event
    with pytest.raises(EventError, match="confidence"):
        Event.onset(**{**fields, "confidence": None})


def test_the_manifest_rules_apply_unless_the_config_sets_its_own() -> None:
    from edge.bed.chain import resolve_detector
    from edge.inference.manifest import load_manifest
    from tests.edge.runtime_helpers import MODEL_DIR

    manifest = load_manifest(MODEL_DIR / "manifest.json")
    fitted = resolve_detector(DetectorConfig(), manifest).findings
    assert manifest.detector_findings is not None
    assert fitted.cas == RecurrenceRule(**manifest.detector_findings["CAS"])
    own = RecurrenceRule(events=3, within_s=9.0)
    config = DetectorConfig(findings=FindingConfig(das=own))
    assert resolve_detector(config, manifest).findings.das == own


INTRA = sprsound_root() / "intra_test"


@pytest.mark.skipif(not INTRA.is_dir(), reason=f"SPRSound intra_test not at {INTRA}")
def test_detect_reports_only_episode_events_and_they_match_the_offline_rule(tmp_path: Path) -> None:
    """Through ``lungwatch detect`` (the device path) on real recordings: every event written
    belongs to an episode written beside it, and they are those the whole-recording rule keeps
    of every event the device heard."""
    from edge.monitor import DEFAULT_MODEL, resolve_model
    from edge.runtime.offline import detect_recordings

    files = sorted(INTRA.glob("*.flac"))[:60]
    out, episodes = tmp_path / "events.json", tmp_path / "episodes.json"
    cli = Path(sys.executable).parent / "lungwatch"  # the console script, as a user runs it
    audio = [a for f in files for a in ("--audio", str(f))]
    argv = [str(cli), "detect", *audio, "--out", str(out), "--episodes", str(episodes)]
    subprocess.run(argv, check=True, capture_output=True)
    said, eps = json.loads(out.read_text()), json.loads(episodes.read_text())
    folder, file = resolve_model(DEFAULT_MODEL)
    manifest_rules = resolve_detector_findings(folder)
    raw = detect_recordings(
        {f.stem: f for f in files},
        folder,
        file,
        detector=DetectorConfig(findings=FindingConfig(enabled=False)),
    )
    n = 0
    for name, record in raw.items():
        kept, offline = kept_events(record.physiological, manifest_rules)
        assert said[name] == kept, name
        assert [(e["type"], e["start_s"]) for e in eps[name]] == [
            (e["family"], e["start_s"]) for e in offline
        ], name
        n += len(eps[name])
        for event in said[name]:
            if event["type"] != "Stridor":
                assert any(e["start_s"] <= event["start_s"] <= e["end_s"] for e in eps[name])
    assert n > 0  # the recordings hold episodes: the check above checked something


def resolve_detector_findings(folder: Path) -> FindingConfig:
    from edge.bed.chain import resolve_detector
    from edge.inference.manifest import load_manifest

    return resolve_detector(DetectorConfig(), load_manifest(folder / "manifest.json")).findings


def test_a_beds_finding_rate_is_the_share_of_its_monitored_time_its_events_cover() -> None:
    """A recording with wheezes and two crackles through the public API: each family's rate
    is the time its published events cover over the time the bed was monitored."""
    from edge.audio import read_audio
    from lungwatch import Monitor
    from tests.edge.runtime_helpers import MODEL_DIR, REPO_ROOT

    monitor = Monitor.load(MODEL_DIR / "model.int8.onnx")
    bed = monitor.open_bed("bed-1")
    audio = read_audio(REPO_ROOT / "examples" / "64913238_0.6_1_p3_2175.flac",
                       target_rate_hz=monitor.sample_rate_hz).samples  # fmt: skip
    steps = [bed.push(audio[i : i + 8000]) for i in range(0, len(audio), 8000)]
    assert not any(s.quality.suppressed for s in steps)  # all of it monitored
    monitored = sum(len(s.probs) for s in steps) * monitor.grid.frame_samples
    rates = bed.chain.finding_rates()
    ended = [e for s in steps for e in s.events if e.state == "ended"]
    for family, types in (
        ("CAS", ("Wheeze", "Rhonchi")),
        ("DAS", ("Fine Crackle", "Coarse Crackle")),
    ):
        spans = sorted((e.start_s, e.end_s) for e in ended if e.type in types)
        assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans))  # no overlap
        covered = sum(end - start for start, end in spans) * monitor.sample_rate_hz
        assert rates[family] == pytest.approx(covered / monitored, abs=1e-3)
    assert rates["CAS"] > rates["DAS"] > 0  # the recording's wheezes and its two crackles
