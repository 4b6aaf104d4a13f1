"""Broker access (lungwatch.access, ``lungwatch access``) against a real Mosquitto started with the
generated files: anonymous clients cannot connect, a device cannot acknowledge another's
alarms, forge another's events or acknowledge its own, and a ward view's command arrives."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from lungwatch.access import acl_text, generate, password_line
from lungwatch.commandauth import derive_device_key, read_key
from lungwatch.errors import ConfigError
from lungwatch.passwords import verify_password
from tests.brokers import HOST, Mosquitto, _wait_port, free_port, require_mosquitto
from tests.edge.runtime_helpers import lungwatch

SITE = "ward-3"
ROOT = f"lungwatch/v1/{SITE}"
WAIT_S = 10.0


def login(directory: Path, name: str) -> dict[str, str]:
    settings = yaml.safe_load((directory / "clients" / f"{name}.yaml").read_text())
    return settings["mqtt"]


class Client:
    """A paho client with a name's credentials that keeps what it receives."""

    def __init__(self, port: int, credentials: dict[str, str] | None, name: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.connack = threading.Event()
        self.refused: Any = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{name}")
        if credentials is not None:
            self.client.username_pw_set(credentials["username"], credentials["password"])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        assert self.connack.wait(WAIT_S)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.refused = reason if reason.is_failure else None
        self.connack.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload)))
            self.arrived.notify_all()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(WAIT_S)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def wait_for(self, payload: bytes, timeout_s: float = WAIT_S) -> bool:
        with self.arrived:
            seen = lambda: any(p == payload for _, p in self.messages)  # noqa: E731
            return self.arrived.wait_for(seen, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def clients(port: int, directory: Path, *names: str) -> Iterator[list[Client]]:
    made = [Client(port, login(directory, name), name) for name in names]
    try:
        yield made
    finally:
        for client in made:
            client.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Mosquitto]]:
    require_mosquitto()
    directory = tmp_path / "access"
    generate(SITE, ["jetson-1", "jetson-2"], ["ward-view"], directory)
    broker = Mosquitto(tmp_path, include=directory / "mosquitto" / "lungwatch.conf").start()
    try:
        yield directory, broker
    finally:
        broker.stop()


def test_anonymous_and_wrong_passwords_are_refused(site: tuple[Path, Mosquitto]) -> None:
    directory, broker = site
    anonymous = Client(broker.port, None, "anonymous")
    wrong = Client(broker.port, {"username": "jetson-1", "password": "guess"}, "wrong")
    right = Client(broker.port, login(directory, "jetson-1"), "right")
    try:
        assert anonymous.refused is not None
        assert wrong.refused is not None
        assert right.refused is None
    finally:
        for client in (anonymous, wrong, right):
            client.close()


def test_only_a_ward_view_reaches_a_device_and_devices_publish_only_their_own(
    site: tuple[Path, Mosquitto],
) -> None:
    """jetson-2 sends an acknowledge to jetson-1 and forges jetson-1's ``ended`` event;
    jetson-1 acknowledges itself: none of it is delivered. Each client then publishes one
    message it may send, after the refused ones on the same connection (so had the broker
    passed them, they would have arrived first): those arrive."""
    directory, broker = site
    with clients(broker.port, directory, "ward-view", "jetson-1", "jetson-2") as made:
        view, device, other = made
        view.subscribe(f"{ROOT}/#")
        device.subscribe(f"{ROOT}/jetson-1/command")
        ack = json.dumps({"action": "acknowledge", "stream_id": "bed-1", "target": "Wheeze"})
        forged_end = json.dumps({"state": "ended", "type": "Fine Crackle", "forged": True})
        other.publish(f"{ROOT}/jetson-1/command", b"from jetson-2: " + ack.encode())
        other.publish(f"{ROOT}/jetson-1/bed-1/event", forged_end.encode())
        device.publish(f"{ROOT}/jetson-1/command", b"from jetson-1: " + ack.encode())
        other.publish(f"{ROOT}/jetson-2/bed-1/event", b"jetson-2 own event")
        device.publish(f"{ROOT}/jetson-1/metrics", b"jetson-1 own metrics")
        view.publish(f"{ROOT}/jetson-1/command", ack.encode())
        assert view.wait_for(b"jetson-2 own event")
        assert view.wait_for(b"jetson-1 own metrics")
        assert device.wait_for(ack.encode())
        assert all(b"forged" not in payload for _, payload in view.messages)
        assert [payload for _, payload in device.messages] == [ack.encode()]
        # a device cannot read the site's other topics
        other.subscribe(f"{ROOT}/#")
        device.publish(f"{ROOT}/jetson-1/bed-1/event", b"jetson-1 event")
        assert view.wait_for(b"jetson-1 event")
        assert all(payload != b"jetson-1 event" for _, payload in other.messages)


def test_the_broker_drops_an_oversized_message(site: tuple[Path, Mosquitto]) -> None:
    """``max_packet_size``: a 100 KB message on a topic its sender may use never reaches the
    ward view; a small one from another client afterwards does."""
    directory, broker = site
    with clients(broker.port, directory, "ward-view", "jetson-1", "jetson-2") as made:
        view, device, other = made
        view.subscribe(f"{ROOT}/#")
        device.client.publish(f"{ROOT}/jetson-1/bed-1/event", b"x" * 100_000, qos=0)
        other.publish(f"{ROOT}/jetson-2/metrics", b"after the big one")
        assert view.wait_for(b"after the big one")
        assert not view.wait_for(b"x" * 100_000, timeout_s=1.5), "the broker passed it on"


def test_a_second_run_keeps_secrets_and_adds_a_device(tmp_path: Path) -> None:
    directory = tmp_path / "access"
    first = {c.name: c.password for c in generate(SITE, ["jetson-1"], ["view"], directory)}
    master = read_key(directory / "keys" / "command-master.key")
    second = {
        c.name: c.password for c in generate(SITE, ["jetson-1", "jetson-2"], ["view"], directory)
    }
    assert second["jetson-1"] == first["jetson-1"]
    assert second["view"] == first["view"]
    assert read_key(directory / "keys" / "command-master.key") == master
    for device in ("jetson-1", "jetson-2"):
        key = read_key(directory / "keys" / f"{device}.command.key")
        assert key == derive_device_key(master, SITE, device)
    settings = yaml.safe_load((directory / "clients" / "jetson-2.yaml").read_text())
    assert Path(settings["commands"]["key_file"]).name == "jetson-2.command.key"
    view = yaml.safe_load((directory / "clients" / "view.yaml").read_text())
    assert Path(view["dashboard"]["command_key_file"]).name == "command-master.key"
    for path in directory.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path


def test_the_acl_names_each_device_topic_and_no_write_to_its_own_command_topic() -> None:
    from lungwatch.access import Client as AccessClient

    text = acl_text(SITE, [AccessClient("d1", "device", "x"), AccessClient("v", "view", "y")])
    device_block = text.split("user d1\n")[1].split("\n\n")[0].splitlines()
    assert f"topic read {ROOT}/d1/command" in device_block
    assert not any(line.startswith("topic write") and "command" in line for line in device_block)
    assert f"topic write {ROOT}/+/command" in text.split("user v\n")[1]


def test_password_lines_are_what_mosquitto_passwd_would_accept(tmp_path: Path) -> None:
    """The broker itself checks the format in the tests above; here the line's layout."""
    line = password_line("jetson-1", "secret", salt=bytes(12))
    name, rest = line.split(":", 1)
    assert name == "jetson-1"
    assert rest.startswith("$7$101$AAAAAAAAAAAAAAAA$")


@pytest.mark.parametrize(
    ("devices", "views", "message"),
    [
        (["bad name"], ["v"], "without spaces"),
        (["a:b"], ["v"], "without spaces"),
        (["d"], ["d"], "distinct"),
        (["d"], [], "at least one ward view"),
    ],
)
def test_bad_client_lists_are_refused(
    tmp_path: Path, devices: list[str], views: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        generate(SITE, devices, views, tmp_path / "access")


def test_a_garbage_key_or_a_file_for_a_folder_is_one_line(tmp_path: Path) -> None:
    args = ["--site", SITE, "--views", "view", "--devices", "j1"]
    folder = tmp_path / "a"
    (folder / "keys").mkdir(parents=True, mode=0o700)
    folder.chmod(0o700)
    garbage = folder / "keys" / "command-master.key"
    garbage.write_bytes(bytes(range(256)))
    garbage.chmod(0o600)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for where, named in ((folder, "64 hex characters"), (not_a_folder, "not a folder")):
        result = lungwatch("access", *args, "--dir", str(where))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert named in result.stderr, result.stderr


def test_the_command_line_writes_the_files(tmp_path: Path) -> None:
    args = ["--site", SITE, "--views", "view"]
    result = lungwatch("access", *args, "--devices", "j1", "--dir", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    assert "lungwatch.conf" in result.stdout
    assert (tmp_path / "a" / "mosquitto" / "acl").is_file()
    bad = lungwatch("access", *args, "--devices", "x y", "--dir", str(tmp_path / "b"))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "without spaces" in bad.stderr


def test_a_folder_others_may_change_or_a_planted_link_is_not_used(tmp_path: Path) -> None:
    """A pre-made world-writable folder is refused (someone else could plant files there);
    a link left at a temporary name is replaced, never written through."""
    open_folder = tmp_path / "open"
    (open_folder / "mosquitto").mkdir(parents=True)
    open_folder.chmod(0o700)
    (open_folder / "mosquitto").chmod(0o777)
    with pytest.raises(ConfigError, match=r"mosquitto: mode 0777; group or others"):
        generate(SITE, ["j1"], ["view"], open_folder)
    assert not (open_folder / "mosquitto" / "passwd").exists()
    folder = tmp_path / "closed"
    (folder / "mosquitto").mkdir(parents=True, mode=0o700)
    folder.chmod(0o700)
    target = tmp_path / "victim.txt"
    target.write_text("keep me\n")
    (folder / "mosquitto" / ".passwd.tmp").symlink_to(target)
    generate(SITE, ["j1"], ["view"], folder)
    assert target.read_text() == "keep me\n"
    passwd = folder / "mosquitto" / "passwd"
    assert passwd.read_text().startswith("j1:$7$")
    assert not passwd.is_symlink()
    assert oct(passwd.stat().st_mode & 0o777) == "0o600"


def test_a_ward_on_one_machine_from_the_generated_files(tmp_path: Path) -> None:
    """``--listener`` and ``--users``: Mosquitto started on ``lungwatch.conf`` exactly as
    written serves the clients with the addresses their files name; the view's users log in
    with the passwords written for them."""
    binary = require_mosquitto()
    port, directory = free_port(), tmp_path / "access"
    result = lungwatch(
        "access", "--site", SITE, "--devices", "j1", "--views", "view",
        "--users", "nurse:ack", "porter:view", "--listener", f"{HOST}:{port}",
        "--dir", str(directory),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conf = directory / "mosquitto" / "lungwatch.conf"
    assert f"broker: mosquitto -c {conf}" in result.stdout
    view = yaml.safe_load((directory / "clients" / "view.yaml").read_text())
    users = {u["name"]: u for u in view["dashboard"]["users"]}
    assert {n: u["role"] for n, u in users.items()} == {"nurse": "ack", "porter": "view"}
    for name, user in users.items():
        password_file = directory / "users" / f"{name}.password"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        assert verify_password(password_file.read_text().strip(), user["password_hash"])
    log = tmp_path / "mosquitto.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, broker, log)
        assert view["mqtt"]["host"] == HOST
        assert view["mqtt"]["port"] == port
        with clients(port, directory, "j1", "view") as (device, ward_view):
            assert device.refused is None
            assert ward_view.refused is None
            device.subscribe(f"{ROOT}/j1/command")
            ward_view.publish(f"{ROOT}/j1/command", b"ack")
            assert device.wait_for(b"ack")
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    again = lungwatch(
        "access", "--site", SITE, "--devices", "j1", "--views", "view",
        "--users", "nurse:ack", "--dir", str(directory),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    kept = yaml.safe_load((directory / "clients" / "view.yaml").read_text())["dashboard"]
    password = (directory / "users" / "nurse.password").read_text().strip()
    assert verify_password(password, kept["users"][0]["password_hash"]), "kept across runs"
    assert "listener" not in (directory / "mosquitto" / "lungwatch.conf").read_text()
    assert os.stat(directory).st_mode & 0o077 == 0


def test_no_login_can_take_another_clients_connection_over(
    site: tuple[Path, Mosquitto],
) -> None:
    """``use_username_as_clientid``: the broker makes each connection's client id its user
    name, so a client with device jetson-2's login, connecting again and again under the id
    a device's name suggests or under jetson-1's own id, does not disconnect jetson-1; nor
    does jetson-1's clips' connection, which has a login of its own (``jetson-1/evidence``,
    the device's password). A second connection with jetson-1's own login does (the same
    broker: the check can fail)."""
    from lungwatch.mqtt import MqttConfig

    directory, broker = site
    own = login(directory, "jetson-1")
    config = MqttConfig(port=broker.port, username=own["username"], password=own["password"],
                        site=SITE, device_id="jetson-1")  # fmt: skip
    real_id = config.effective_client_id
    evidence = yaml.safe_load((directory / "clients" / "jetson-1.yaml").read_text())["evidence"]
    assert evidence == {"username": "jetson-1/evidence"}

    def kicks(username: str, password: str, client_id: str) -> bool:
        lost = threading.Event()
        victim = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=real_id)
        victim.username_pw_set(own["username"], own["password"])
        victim.on_disconnect = lambda *args: lost.set()
        victim.connect(HOST, broker.port)
        victim.loop_start()
        try:
            for _ in range(3):
                thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
                thief.username_pw_set(username, password)
                thief.connect(HOST, broker.port)
                thief.loop_start()
                lost.wait(0.5)
                thief.disconnect()
                thief.loop_stop()
            return lost.is_set()
        finally:
            victim.disconnect()
            victim.loop_stop()

    other = login(directory, "jetson-2")
    assert not kicks(other["username"], other["password"], f"lungwatch-{SITE}-jetson-1")
    assert not kicks(other["username"], other["password"], real_id)
    assert not kicks(evidence["username"], own["password"], f"{real_id}-evidence")
    assert kicks(own["username"], own["password"], "any-id")


def test_a_devices_clips_login_may_publish_its_clips_only(site: tuple[Path, Mosquitto]) -> None:
    """The clips' connection (``jetson-1/evidence``) may publish on jetson-1's evidence
    topics and nothing else: an event it sends never reaches the ward view."""
    directory, broker = site
    own = login(directory, "jetson-1")
    clips = {"username": "jetson-1/evidence", "password": own["password"]}
    with clients(broker.port, directory, "ward-view") as (view,):
        view.subscribe(f"{ROOT}/#")
        sender = Client(broker.port, clips, "jetson-1-clips")
        try:
            assert sender.refused is None, sender.refused
            sender.publish(f"{ROOT}/jetson-1/bed-1/event", b"forged event")
            sender.publish(f"{ROOT}/jetson-2/bed-1/evidence", b"another device's clip")
            sender.publish(f"{ROOT}/jetson-1/bed-1/evidence", b"its own clip")
            assert view.wait_for(b"its own clip")
            assert not view.wait_for(b"forged event", 0.5)
            assert not view.wait_for(b"another device's clip", 0.5)
        finally:
            sender.close()


@pytest.mark.parametrize("item", ["../../x:ack", "a/b:view", "..:ack", ".hidden:view",
                                  "nurse a:ack", "x" * 65 + ":view", "nurse:admin"])  # fmt: skip
def test_a_user_name_is_a_plain_name_and_never_a_path(tmp_path: Path, item: str) -> None:
    """A view user's name names its password file: ``--users ../../x:ack`` would have written
    ``x.password`` two folders above the access folder."""
    with pytest.raises(ConfigError, match="--users takes NAME:ROLE"):
        generate(SITE, ["d"], ["v"], tmp_path / "access", users=[item])
    assert not (tmp_path / "x.password").exists()
    assert not list(tmp_path.parent.glob("x.password"))
