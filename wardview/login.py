"""HTTP Basic logins checked in the same time whether or not the user exists, and a bound on
failed attempts per client address and per user name (docs/dashboard.md, "Hardening").
The bound holds for concurrent attempts: each is recorded as a failure of its name and address
under the lock *before* its password is verified, and taken back if it succeeds."""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from lungwatch.passwords import HASH_ITERATIONS, hash_iterations, hash_password, verify_password
from wardview.config import DashboardUser

log = logging.getLogger("lungwatch.dashboard")

MAX_TRACKED = 10_000  # names and addresses whose failures are remembered (oldest forgotten)


class LoginLimitedError(Exception):
    """Too many failed logins for this name or address; retry after :attr:`retry_after_s`."""

    def __init__(self, retry_after_s: float, what: str) -> None:
        super().__init__(f"too many failed logins {what}; retry in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class Logins:
    def __init__(
        self,
        users: Iterable[DashboardUser],
        max_failures: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        verify: Callable[[str, str], bool] = verify_password,
    ) -> None:
        self.users = tuple(users)
        self.max_failures, self.window_s = max_failures, window_s
        self.clock, self.verify = clock, verify
        costs = [hash_iterations(u.password_hash) or HASH_ITERATIONS for u in self.users]
        self.dummy_hash = hash_password(secrets.token_urlsafe(24), max(costs or [HASH_ITERATIONS]))
        self.counts = {"ok": 0, "failed": 0, "limited": 0}
        # key (user:NAME or address:ADDRESS) -> its last failures: (clock, name tried)
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, name: str, password: str, address: str) -> DashboardUser | None:
        """The user, else None; :class:`LoginLimitedError` while ``address`` is over the bound
        (nothing verified), or for a wrong password while ``name`` is."""
        user_key, address_key = f"user:{name}", f"address:{address}"
        with self._lock:
            retry_s = self._retry_after_s(address_key)
            if retry_s > 0:
                self.counts["limited"] += 1
                raise LoginLimitedError(retry_s, "from this address")
            name_limited = self._retry_after_s(user_key) > 0
            for key in (user_key, address_key):  # pending: concurrent attempts count too
                self._fail(key, name)
        user = _find(self.users, name)
        ok = self.verify(password, user.password_hash if user is not None else self.dummy_hash)
        with self._lock:
            if user is not None and ok:
                self.counts["ok"] += 1
                self._succeed(user_key, address_key, name)
                return user
            self.counts["limited" if name_limited else "failed"] += 1
            retry_s = self._retry_after_s(user_key)
        log.warning("failed login for %r from %s", name[:64], address)
        if name_limited:
            raise LoginLimitedError(max(retry_s, 1.0), "for this user")
        return None

    def _retry_after_s(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[0][0] + self.window_s - self.clock())

    def _fail(self, key: str, name: str) -> None:
        failures = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        failures.append((self.clock(), name))
        self._failures[key] = failures  # the most recently failed last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def _succeed(self, user_key: str, address_key: str, name: str) -> None:
        """The address's failures of other names stay (a user cannot wipe them out)."""
        self._failures.pop(user_key, None)
        kept = [f for f in self._failures.get(address_key, ()) if f[1] != name]
        if kept:
            self._failures[address_key] = deque(kept, maxlen=self.max_failures)
        else:
            self._failures.pop(address_key, None)


def _find(users: tuple[DashboardUser, ...], name: str) -> DashboardUser | None:
    """The user called ``name``, every name compared (constant time in where it is)."""
    found = None
    for user in users:
        if hmac.compare_digest(user.name.encode("utf-8"), name.encode("utf-8")):
            found = user
    return found
