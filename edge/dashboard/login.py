"""The ward view's logins: HTTP Basic credentials checked in the same time whether or not the
user exists, and a bound on failed attempts.

    logins = Logins(config.users, max_failures=5, window_s=300.0)
    user = logins.check(name, password, client_address)   # DashboardUser, None, or raises
                                                          # LoginLimitedError (429)

- **Same work for every name**: every configured name is compared in constant time
  and the password is always verified
  against a PBKDF2 hash: the user's, or for a name that is not configured
  :attr:`Logins.dummy_hash`, a hash of a random password at the highest cost among the users.
  An unknown name therefore costs what a known one does (no timing oracle of who exists);
  users whose hashes have a lower cost than the others are the exception (give every user the
  default cost).
- **Failed attempts are bounded**, per user name and per client address: after
  ``max_failures`` failures within ``window_s`` seconds, further attempts on that name or from
  that address are refused with :class:`LoginLimitedError` (HTTP 429, ``Retry-After``) without
  verifying anything, until the oldest failure is ``window_s`` old. Names that are not
  configured are tracked like real ones (a 429 must not tell them apart). A success clears
  the name's and the address's failures. Counted in :attr:`Logins.counts`.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from edge.dashboard.config import (
    HASH_ITERATIONS,
    DashboardUser,
    hash_iterations,
    hash_password,
    verify_password,
)

log = logging.getLogger("lungwatch.dashboard")

MAX_TRACKED = 10_000  # names and addresses whose failures are remembered (oldest forgotten)


class LoginLimitedError(Exception):
    """Too many failed logins for this name or address; retry after :attr:`retry_after_s`."""

    def __init__(self, retry_after_s: float, what: str) -> None:
        super().__init__(f"too many failed logins {what}; retry in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class Logins:
    """The configured users' logins (see the module doc)."""

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
        self.dummy_hash = hash_password(
            secrets.token_urlsafe(24), max(costs, default=HASH_ITERATIONS)
        )
        self.counts = {"ok": 0, "failed": 0, "limited": 0}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, name: str, password: str, address: str) -> DashboardUser | None:
        """The user whose ``name`` and ``password`` these are, else None (a failure counted
        against ``name`` and ``address``); :class:`LoginLimitedError` while either is over
        the bound (nothing verified)."""
        keys = (f"user:{name}", f"address:{address}")
        with self._lock:
            retry_s, key = max((self._retry_after_s(k), k) for k in keys)
            if retry_s > 0:
                self.counts["limited"] += 1
                what = "for this user" if key.startswith("user:") else "from this address"
                raise LoginLimitedError(retry_s, what)
        user = _find(self.users, name)
        ok = self.verify(password, user.password_hash if user is not None else self.dummy_hash)
        with self._lock:
            if user is not None and ok:
                self.counts["ok"] += 1
                for k in keys:
                    self._failures.pop(k, None)
                return user
            self.counts["failed"] += 1
            for k in keys:
                self._fail(k)
        log.warning("failed login for %r from %s", name[:64], address)
        return None

    def _retry_after_s(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self._failures.get(key)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(0.0, times[0] + self.window_s - self.clock())

    def _fail(self, key: str) -> None:
        times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        times.append(self.clock())
        self._failures[key] = times  # the most recently failed last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)


def _find(users: tuple[DashboardUser, ...], name: str) -> DashboardUser | None:
    """The user called ``name``, every name compared (constant time in where it is)."""
    found = None
    for user in users:
        if hmac.compare_digest(user.name.encode("utf-8"), name.encode("utf-8")):
            found = user
    return found
