"""A device's equipment identifier (lungwatch.equipment): a MAC becomes its EUI-64 by the
IEEE's FFFE rule, an EUI-64 is kept, anything else is refused naming it; a device's runtime
configuration takes a configured one or its host's, and its status carries it."""

from __future__ import annotations

import json
import uuid

import pytest

from edge.runtime.config import RuntimeConfig, StreamConfig
from lungwatch.equipment import eui64, host_eui64
from lungwatch.errors import ConfigError
from lungwatch.events import status_payload


def test_a_mac_becomes_an_eui64_and_an_eui64_is_kept() -> None:
    assert eui64("00:1b:63:84:45:e6") == "001B63FFFE8445E6"
    assert eui64("00-1B-63-84-45-E6") == "001B63FFFE8445E6"
    assert eui64("0012a3fffe4567ab") == "0012A3FFFE4567AB"
    for bad in ("", "xyz", "00:1b:63:84:45", "0012A3FFFE4567AB00", "00:00:00:00:00:00",
                "0012A3FFFE4567A^"):  # fmt: skip
        with pytest.raises(ValueError, match=r"EUI-64|all zeros"):
            eui64(bad)


def test_the_hosts_eui64_is_its_macs_or_none_where_python_made_one_up(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(uuid, "getnode", lambda: 0x001B638445E6)
    assert host_eui64() == "001B63FFFE8445E6"
    monkeypatch.setattr(uuid, "getnode", lambda: 0x011B638445E6)  # multicast bit: random
    assert host_eui64() == ""


def test_a_devices_configuration_names_its_equipment_and_its_status_says_it() -> None:
    streams = (StreamConfig(id="bed-1", source="x.wav"),)
    config = RuntimeConfig(streams=streams, equipment_eui64="00:1b:63:84:45:e6")
    assert config.mqtt_config.eui64 == "001B63FFFE8445E6"
    assert RuntimeConfig(streams=streams).mqtt_config.eui64 == host_eui64()
    with pytest.raises(ConfigError, match="equipment_eui64"):
        RuntimeConfig(streams=streams, equipment_eui64="not-a-mac")
    body = json.loads(status_payload("online", "ward-1", "edge-1", "connected",
                                     eui64="001B63FFFE8445E6"))  # fmt: skip
    assert body["eui64"] == "001B63FFFE8445E6"
    assert "eui64" not in json.loads(status_payload("online", "ward-1", "edge-1", "connected"))
