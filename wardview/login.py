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
- **Failed attempts are bounded**, per client address and per user name, each to
  ``max_failures`` failures within ``window_s`` seconds:

  - an address over its bound is refused with :class:`LoginLimitedError` (HTTP 429,
    ``Retry-After``) without verifying anything, until its oldest failure is ``window_s``
    old;
  - a name over its bound is still verified, so a guesser elsewhere cannot lock its user
    out: the right password gets in, a wrong one is refused with :class:`LoginLimitedError`
    (429, not 401; names that are not configured are tracked like real ones, so a 429 does
    not tell them apart). What bounds guessing is then the per-address bound: each address
    gets ``max_failures`` wrong guesses per window;
  - the bound holds for concurrent attempts: an attempt is recorded as a failure of its
    name and address (under the lock, with the bound checked) *before* its password is
    verified, and taken back if it succeeds; so at most ``max_failures`` attempts from one
    address reach the verification in a window, however many arrive at once.

  A success clears its name's failures and, of its address's failures, those of that name
  (a user who logs in from an address cannot wipe out the address's failed guesses at
  other names). Counted in :attr:`Logins.counts`.
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
        # key (user:NAME or address:ADDRESS) -> its last failures: (clock, name tried)
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, name: str, password: str, address: str) -> DashboardUser | None:
        """The user whose ``name`` and ``password`` these are, else None (a failure counted
        against ``name`` and ``address``); :class:`LoginLimitedError` while ``address`` is
        over the bound (nothing verified), or for a wrong password while ``name`` is."""
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
        """A failure (or a pending attempt) of ``name`` against ``key``, now."""
        failures = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
        failures.append((self.clock(), name))
        self._failures[key] = failures  # the most recently failed last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def _succeed(self, user_key: str, address_key: str, name: str) -> None:
        """``name`` logged in: its failures go, and its own (pending one included) from the
        address; the address's failures of other names stay."""
        self._failures.pop(user_key, None)
        failures = self._failures.get(address_key)
        if failures is not None:
            kept = [f for f in failures if f[1] != name]
            if kept:
                failures.clear()
                failures.extend(kept)
            else:
                del self._failures[address_key]


def _find(users: tuple[DashboardUser, ...], name: str) -> DashboardUser | None:
    """The user called ``name``, every name compared (constant time in where it is)."""
    found = None
    for user in users:
        if hmac.compare_digest(user.name.encode("utf-8"), name.encode("utf-8")):
            found = user
    return found
