"""Device inventory: ``deploy/devices/<DEVICE>.yaml`` -> :class:`Device` (validated once).

    device = load_device("jetson")            # deploy/devices/jetson.yaml
    device.path_of(device.inventory.models)   # relative paths: from the inventory's folder

Every key is documented in ``deploy/devices/jetson.yaml`` and ``docs/deploy.md``. Relative
paths (``models``, ``runtime_config``, ``target.key``, ``broker.ca_file``, ...) are resolved
against the folder of the inventory file; ``~`` is expanded. Errors are one line naming the
file and the key: ``deploy/devices/jetson.yaml: target.port must be ..., got 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deploy.errors import InventoryError, UnknownDeviceError
from edge.config import check, from_mapping, load_yaml
from edge.errors import ConfigError

DEVICES_DIR = Path(__file__).resolve().parent / "devices"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NO_SPACE_RE = re.compile(r"\S+")
NO_SPACE = "a non-empty string without whitespace"


@dataclass(frozen=True)
class TargetConfig:
    """How the workstation reaches the device."""

    transport: Literal["ssh", "local"] = "ssh"
    host: str = ""  # ssh: host name or address
    user: str = ""  # ssh: login user
    port: int = 22  # ssh: port
    key: str | None = None  # ssh: private key file (None: ssh's defaults / agent)
    known_hosts: str | None = None  # ssh: UserKnownHostsFile (None: ~/.ssh/known_hosts)
    host_key_checking: Literal["yes", "accept-new"] = "accept-new"
    copy: Literal["auto", "rsync", "cat"] = "auto"  # auto: rsync on both ends, else ssh cat
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        check(0 < self.port < 65536, "port", self.port, "an integer in 1..65535")
        check(self.connect_timeout_s >= 1, "connect_timeout_s", self.connect_timeout_s, ">= 1")
        if self.transport == "ssh":
            check(_is_word(self.host), "host", self.host, NO_SPACE + " (transport: ssh)")
            check(_is_word(self.user), "user", self.user, NO_SPACE + " (transport: ssh)")


@dataclass(frozen=True)
class InstallConfig:
    """How the wheel is installed into the release's virtual environment on the target."""

    deps: Literal["bundle", "none"] = "bundle"  # bundle: wheels of the deps in the bundle
    extras: tuple[str, ...] = ()  # extras of lungwatch to install (deps: bundle)
    requirements: tuple[str, ...] = ()  # further requirements to bundle (deps: bundle)
    platforms: tuple[str, ...] = ()  # pip download --platform tags (empty: this machine's)
    python_version: str | None = None  # pip download --python-version (None: this one's)
    index_urls: tuple[str, ...] = ()  # extra package indexes for pip download
    system_site_packages: bool = True  # venv sees the system's packages (JetPack TensorRT)
    with_pip: bool = True  # false: venv --without-pip (pip must come from the system site)
    extra_site_dirs: tuple[str, ...] = ()  # folders on the target appended to the venv's path

    def __post_init__(self) -> None:
        check(
            self.deps == "bundle" or not (self.extras or self.requirements),
            "extras",
            list(self.extras),
            "empty with deps: none (nothing else is installed)",
        )
        for name in ("extras", "requirements", "platforms", "extra_site_dirs"):
            values = getattr(self, name)
            check(all(_is_word(v) for v in values), name, list(values), f"a list of {NO_SPACE}s")


@dataclass(frozen=True)
class BrokerConfig:
    """The broker the workstation reads the device's retained status from (health check)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False  # TLS with the system CAs, or ca_file
    ca_file: str | None = None  # PEM CA that signed the broker's certificate
    username: str | None = None
    password_env: str | None = None  # environment variable holding the password
    timeout_s: float = 60.0  # how long to wait for the status ``online``

    def __post_init__(self) -> None:
        check(_is_word(self.host), "host", self.host, NO_SPACE)
        check(0 < self.port < 65536, "port", self.port, "an integer in 1..65535")
        check(self.timeout_s > 0, "timeout_s", self.timeout_s, "a number > 0")
        ok = self.password_env is None or self.username is not None
        check(ok, "password_env", self.password_env, "set together with username")


@dataclass(frozen=True)
class ServiceConfig:
    """How the runtime is kept running on the target."""

    manager: Literal["systemd", "process"] = "systemd"  # process: pid file (tests, no systemd)
    name: str = "lungwatch"  # systemd unit name (lungwatch.service)
    user: str = "lungwatch"  # systemd User= the runtime runs as
    sudo: bool = True  # systemd: run systemctl and the unit install with sudo -n
    stop_timeout_s: float = 20.0  # SIGTERM, then this long, then SIGKILL

    def __post_init__(self) -> None:
        check(bool(_NAME_RE.fullmatch(self.name)), "name", self.name, "a unit name [A-Za-z0-9_.-]")
        check(_is_word(self.user), "user", self.user, NO_SPACE)
        check(self.stop_timeout_s > 0, "stop_timeout_s", self.stop_timeout_s, "a number > 0")


@dataclass(frozen=True)
class Inventory:
    """One device (see ``deploy/devices/jetson.yaml`` for every key with a comment)."""

    target: TargetConfig
    prefix: str  # install folder on the target (absolute; local: may be relative to the file)
    python: str = "/usr/bin/python3"  # the target's interpreter that makes the venv
    jetpack: str | None = None  # JetPack release on the device (recorded, shown)
    tensorrt: str | None = None  # TensorRT version expected (compared with the engine's)
    precision: Literal["fp16", "int8", "best"] = "int8"  # engine precision
    engine: Literal["auto", "required", "off"] = "auto"  # auto: ONNX Runtime if no TensorRT
    onnx_model: str = "model.int8.onnx"  # engine source; what ONNX Runtime runs otherwise
    models: str = "../../models/sed"  # model folder (manifest.json + artifacts)
    runtime_config: str = "../configs/jetson-ward.yaml"  # lungwatch run --config YAML
    install: InstallConfig = field(default_factory=InstallConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def __post_init__(self) -> None:
        absolute = self.prefix.startswith("/") or self.target.transport == "local"
        ok = _is_word(self.prefix) and absolute and self.prefix != "/"
        check(ok, "prefix", self.prefix, "an absolute folder without whitespace (not /)")
        check(_is_word(self.python), "python", self.python, NO_SPACE)
        ok = _is_word(self.onnx_model) and self.onnx_model.endswith(".onnx")
        check(ok and "/" not in self.onnx_model, "onnx_model", self.onnx_model, "an .onnx name")


@dataclass(frozen=True)
class Device:
    """A loaded inventory: the DEVICE name, its file and the validated settings."""

    name: str
    path: Path
    inventory: Inventory

    @property
    def prefix(self) -> str:
        """The install folder on the target (a relative local prefix resolved here)."""
        return str(self.path_of(self.inventory.prefix))

    def path_of(self, value: str) -> Path:
        """A path from the inventory: ``~`` expanded, relative to the inventory's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()


def known_devices(devices_dir: Path = DEVICES_DIR) -> list[str]:
    """The DEVICE names with an inventory file in ``devices_dir``."""
    return sorted(p.stem for p in Path(devices_dir).glob("*.yaml"))


def inventory_path(name: str, devices_dir: Path = DEVICES_DIR) -> Path:
    """``devices_dir/<name>.yaml``; :class:`UnknownDeviceError` lists the known names."""
    path = Path(devices_dir) / f"{name}.yaml"
    if _NAME_RE.fullmatch(name) and path.is_file():
        return path
    known = ", ".join(known_devices(devices_dir)) or "none"
    raise UnknownDeviceError(
        f"unknown DEVICE {name!r}: no {path}; known devices: {known} "
        f"(add deploy/devices/<DEVICE>.yaml, see docs/deploy.md)"
    )


def load_device(name: str, devices_dir: Path = DEVICES_DIR) -> Device:
    """Read and validate ``<name>.yaml``; errors name the file and the key."""
    path = inventory_path(name, devices_dir)
    try:
        inventory = from_mapping(Inventory, load_yaml(path), source=str(path))
    except ConfigError as exc:
        raise InventoryError(str(exc)) from None
    device = Device(name, path, inventory)
    wanted: list[tuple[str, str | None, bool]] = [
        ("models", inventory.models, True),
        ("runtime_config", inventory.runtime_config, False),
    ]
    wanted += [("broker.ca_file", inventory.broker.ca_file, False)]
    _check_paths(device, wanted)
    if not (device.path_of(inventory.models) / "manifest.json").is_file():
        raise InventoryError(f"{path}: models: no manifest.json in {inventory.models}")
    return device


def check_ssh_files(device: Device) -> None:
    """The SSH key (and a known_hosts file that must be there) exist on this machine."""
    target = device.inventory.target
    if target.transport != "ssh":
        return
    wanted: list[tuple[str, str | None, bool]] = [("target.key", target.key, False)]
    if target.host_key_checking == "yes":  # accept-new may create the file
        wanted += [("target.known_hosts", target.known_hosts, False)]
    _check_paths(device, wanted)


def _check_paths(device: Device, wanted: list[tuple[str, str | None, bool]]) -> None:
    """Each (key, path, is_folder) given must exist on this machine."""
    for key, value, is_dir in wanted:
        if value is None:
            continue
        path = device.path_of(value)
        if not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise InventoryError(f"{device.path}: {key}: no such {kind} {path}")


def _is_word(value: object) -> bool:
    return isinstance(value, str) and bool(_NO_SPACE_RE.fullmatch(value))
