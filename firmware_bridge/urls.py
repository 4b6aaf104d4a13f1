"""Link URLs, shared by the bridge, the emulator and the runtime's ``bridge://`` source.

Two spellings of the same three links (who binds, connects and listens: docs/firmware-protocol.md,
8)::

    udp://HOST:PORT                 bridge://udp/HOST:PORT          datagrams, one frame each
    tcp://HOST:PORT                 bridge://tcp/HOST:PORT          a byte stream over TCP
    serial:///dev/ttyUSB0?baud=N    bridge://serial//dev/ttyUSB0?baud=N   USB serial (pyserial)

IPv6 hosts go in brackets (``udp://[::1]:5005``). Query options are returned as given; each
user checks the ones it knows (:func:`check_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from firmware_bridge.errors import UrlError

SCHEMES = ("udp", "tcp", "serial")
DEFAULT_BAUD = 115200


@dataclass(frozen=True)
class LinkUrl:
    scheme: str  # "udp", "tcp" or "serial"
    host: str = ""  # udp/tcp
    port: int = 0  # udp/tcp
    path: str = ""  # serial device
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""  # as written

    @property
    def baud(self) -> int:
        return int_option(self, "baud", DEFAULT_BAUD)


def parse_link_url(text: str) -> LinkUrl:
    """Parse either spelling (see the module docstring); raises UrlError naming the problem."""
    parts = urlsplit(text)
    if parts.scheme == "bridge":
        scheme, rest = parts.netloc, parts.path[1:] if parts.path.startswith("/") else parts.path
    elif parts.scheme in SCHEMES:
        scheme, rest = parts.scheme, parts.netloc + parts.path
    else:
        raise UrlError(f"{text}: scheme must be one of udp://, tcp://, serial:// or bridge://")
    if scheme not in SCHEMES:
        raise UrlError(f"{text}: transport must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "serial":
        if not rest:
            raise UrlError(f"{text}: serial URL needs a device path, e.g. serial:///dev/ttyUSB0")
        return LinkUrl("serial", path=rest, options=options, text=text)
    host, sep, port_text = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UrlError(f"{text}: address must look like HOST:PORT with PORT in 0..65535")
    return LinkUrl(scheme, host=host.strip("[]"), port=int(port_text), options=options, text=text)


def int_option(url: LinkUrl, name: str, default: int) -> int:
    """An integer option (decimal or 0x-hex), ``default`` when absent."""
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        return int(raw, 0)
    except ValueError:
        raise UrlError(f"{url.text}: option {name} must be an integer, got {raw!r}") from None


def float_option(url: LinkUrl, name: str, default: float) -> float:
    raw = url.options.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UrlError(f"{url.text}: option {name} must be a number, got {raw!r}") from None


def check_options(url: LinkUrl, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(url.options) - set(allowed))
    if unknown:
        raise UrlError(f"{url.text}: unknown option {unknown[0]!r} (known: {', '.join(allowed)})")
