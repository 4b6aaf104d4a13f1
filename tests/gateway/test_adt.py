"""Who lies in which bed (gateway.adt): a file of HL7 v2 ADT messages the hospital's interface
engine appends to, read again as it grows; the gateway's messages name the patient the feed
last placed at the bed's location (PID-3), else the configured one, else the bed itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.adt import AdtFeed
from gateway.config import BedEntry, GatewayConfig, Hl7Config
from gateway.outbox import Outbox
from gateway.service import Intake, hl7_route
from lungwatch.errors import ConfigError
from tests.brokers import finding_events

SITE, DEVICE = "ward-3", "dev-1"


def adt(event: str, patient: str, where: str, prior: str = "", control: str = "M") -> str:
    return "\n".join([
        f"MSH|^~\\&|ADT|HOSP|LUNGWATCH|WARD|20261127060000||ADT^{event}^ADT_A01|{control}|P|2.5",
        f"EVN|{event}|20261127060000",
        f"PID|||{patient}~77^^^OTHER^PI||DOE^JANE",
        f"PV1||I|{where}|||{prior}",
    ]) + "\n"  # fmt: skip


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


def test_admit_transfer_and_discharge_move_a_patient_between_beds(tmp_path: Path) -> None:
    feed_path = tmp_path / "adt.hl7"
    feed_path.write_text(adt("A01", "111^^^HOSP^MR", "ICU^1^1^HOSP"), encoding="utf-8")
    feed = AdtFeed(feed_path)
    assert feed.patient_at("ICU^1^1^HOSP") == "111^^^HOSP^MR"
    assert feed.patient_at("ICU^1^1") == "111^^^HOSP^MR"  # facility on one side only
    assert feed.patient_at("ICU^1^1^OTHER") is None  # another hospital's bed
    append(feed_path, adt("A02", "111^^^HOSP^MR", "ICU^1^2^HOSP", prior="ICU^1^1^HOSP"))
    assert feed.patient_at("ICU^1^1^HOSP") is None
    assert feed.patient_at("ICU^1^2^HOSP") == "111^^^HOSP^MR"
    append(feed_path, adt("A01", "222^^^HOSP^MR", "ICU^1^1^HOSP"))
    append(feed_path, "MSH|this is not a message\nPID\n")  # counted, passed over
    append(feed_path, adt("A05", "333^^^HOSP^MR", "ICU^1^3^HOSP"))  # pre-admit: not a bed yet
    append(feed_path, adt("A03", "111^^^HOSP^MR", "ICU^1^2^HOSP"))
    assert feed.patient_at("ICU^1^2^HOSP") is None
    assert feed.patient_at("ICU^1^1^HOSP") == "222^^^HOSP^MR"
    assert feed.patient_at("ICU^1^3^HOSP") is None
    assert feed.counts == {"applied": 4, "passed_over": 1, "unreadable": 1}
    feed_path.unlink()  # the file goes away: what it said is kept
    assert feed.patient_at("ICU^1^1^HOSP") == "222^^^HOSP^MR"


def test_the_gateways_messages_name_the_feeds_patient_else_the_configured_one(
    tmp_path: Path,
) -> None:
    feed_path = tmp_path / "adt.hl7"
    feed_path.write_text(adt("A01", "111^^^HOSP^MR", "ICU^1^1^HOSP"), encoding="utf-8")
    hl7 = Hl7Config(host="127.0.0.1")
    beds = (BedEntry(DEVICE, "bed-1", "ICU^1^1^HOSP", "999^^^HOSP^MR"),
            BedEntry(DEVICE, "bed-2", "ICU^1^2^HOSP", "888^^^HOSP^MR"))  # fmt: skip
    config = GatewayConfig(site=SITE, hl7=hl7, beds=beds, adt_file=str(feed_path),
                           alarm_reports=False)  # fmt: skip
    outbox = Outbox(tmp_path / "q.sqlite")
    gate = Intake(config, [hl7_route(hl7, outbox)])
    for bed in ("bed-1", "bed-2", "bed-3"):
        [event] = finding_events(1, site=SITE, device_id=DEVICE, stream_id=bed)
        assert gate.handle(event.topic, event.to_json().encode()) == "queued"
    rows = outbox._db.execute("SELECT message FROM outbox ORDER BY seq").fetchall()
    pid3 = [next(s for s in text.split("\r") if s.startswith("PID")).split("|")[3]
            for (text,) in rows]  # fmt: skip
    assert pid3 == ["111^^^HOSP^MR", "888^^^HOSP^MR", f"{DEVICE}.bed-3^^^LUNGWATCH^ANON"]
    with pytest.raises(ConfigError, match="adt_file"):
        Intake(GatewayConfig(site=SITE, hl7=hl7, adt_file=str(tmp_path / "none.hl7")), [])
