"""An embedded MQTT broker (amqtt) on loopback, for ``make demo`` when no broker is configured.
A ward runs Mosquitto or another real broker; this one lives inside the demo process so the
whole path (sink, spool, PUBACK, subscriber) can be shown without installing anything. Anonymous
clients only, no TLS, nothing persisted; amqtt is imported lazily (``lungwatch[demo]``)."""

from __future__ import annotations

import asyncio
import socket
import threading

from lungwatch.errors import LungwatchError

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# Only anonymous authentication: no $SYS publisher, no packet logger.
_PLUGINS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


class EmbeddedBrokerError(LungwatchError):
    """The embedded broker could not start."""


class EmbeddedBroker:
    """amqtt on ``host:port`` (``port=0``: a free port, read back from :attr:`port`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port if port else _free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Start the broker thread; return once the port accepts connections."""
        if self._thread is not None:
            raise EmbeddedBrokerError(f"embedded broker {self.address} is already started")
        self._thread = threading.Thread(target=self._serve, name="lungwatch-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise EmbeddedBrokerError(
                f"embedded broker {self.address} did not start in {timeout_s:g} s"
            )
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise EmbeddedBrokerError(f"embedded broker {self.address}: {self._error}")
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise EmbeddedBrokerError(
                f"embedded broker {self.address} did not stop in {timeout_s:g} s"
            )
        self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            self._started.set()  # unblock start() if _main failed before starting
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            from amqtt.broker import Broker
            from amqtt.errors import BrokerError
        except ImportError:
            self._error = EmbeddedBrokerError("needs amqtt: pip install 'lungwatch[demo]'")
            return
        listener = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        try:
            broker = Broker({"listeners": {"default": listener}, "plugins": _PLUGINS})
            await broker.start()
        except (BrokerError, OSError, ValueError) as exc:
            self._error = exc
            return
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await broker.shutdown()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
