"""Link URLs (both spellings) and transport opening errors."""

from __future__ import annotations

import socket

import pytest

from firmware_bridge.errors import TransportError, UrlError
from firmware_bridge.transport import Backoff, SerialTransport, UdpTransport
from firmware_bridge.urls import LinkUrl, check_options, int_option, parse_link_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp://0.0.0.0:5005", LinkUrl("udp", "0.0.0.0", 5005)),
        (
            "bridge://udp/0.0.0.0:5005?device=3",
            LinkUrl("udp", "0.0.0.0", 5005, options={"device": "3"}),
        ),
        ("tcp://10.0.0.7:7000", LinkUrl("tcp", "10.0.0.7", 7000)),
        ("bridge://tcp/[::1]:7000", LinkUrl("tcp", "::1", 7000)),
        (
            "serial:///dev/ttyUSB0?baud=921600",
            LinkUrl("serial", path="/dev/ttyUSB0", options={"baud": "921600"}),
        ),
        ("bridge://serial//dev/ttyACM1", LinkUrl("serial", path="/dev/ttyACM1")),
    ],
)
def test_both_spellings(text: str, expected: LinkUrl) -> None:
    url = parse_link_url(text)
    assert (url.scheme, url.host, url.port, url.path, url.options) == (
        expected.scheme, expected.host, expected.port, expected.path, expected.options
    )  # fmt: skip


def test_serial_baud_defaults_and_parses() -> None:
    assert parse_link_url("serial:///dev/x").baud == 115200
    assert parse_link_url("bridge://serial//dev/x?baud=0x100").baud == 256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://h:1", "scheme must be one of"),
        ("bridge://smoke/h:1", "transport must be one of"),
        ("udp://h", "HOST:PORT"),
        ("tcp://h:70000", "HOST:PORT"),
        ("serial://", "device path"),
    ],
)
def test_malformed_urls(text: str, message: str) -> None:
    with pytest.raises(UrlError, match=message):
        parse_link_url(text)


def test_options_are_checked_by_their_user() -> None:
    url = parse_link_url("udp://h:1?device=x&colour=red")
    with pytest.raises(UrlError, match="unknown option 'colour'"):
        check_options(url, ("device",))
    with pytest.raises(UrlError, match="device must be an integer"):
        int_option(url, "device", 0)


def test_udp_port_in_use_is_a_transport_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(TransportError, match="cannot bind"):
            UdpTransport("127.0.0.1", taken.getsockname()[1])


def test_missing_serial_device_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="/dev/does-not-exist"):
        SerialTransport("/dev/does-not-exist", 115200)


def test_backoff_doubles_up_to_the_limit_and_resets() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.next_delay_s() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_delay_s() == 0.1
