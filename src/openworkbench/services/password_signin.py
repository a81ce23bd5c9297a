"""Signing in with a username and a password: the configured backends, the throttle, and the Workbench user.

Every refusal is the same to the person ("Wrong username or password"), whether the name is unknown, the
password wrong, the account locked or expired (PAM's account management), the Workbench user disabled, or the
account root or a system account (never checked against PAM at all: root's password cannot be guessed through
the page). The log says which, with the username and the client address, never the password.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from openworkbench.auth.passwords import LocalBackend, PamBackend, PasswordBackend, usable_password
from openworkbench.auth.throttle import Attempt, Throttle
from openworkbench.config import AuthSettings
from openworkbench.errors import InvalidParameter, PermissionDenied, Unauthenticated
from openworkbench.services.accounts import Accounts, check_username
from openworkbench.services.run_as import RunAsPolicy
from openworkbench.services.signin import SignIn

log = logging.getLogger(__name__)

REFUSED = "Wrong username or password."
MAX_USERNAME_CHARS = 255


@dataclass(frozen=True)
class Outcome:
    """A cookie on success; otherwise ``delay_s``, how long to wait before answering the refusal."""

    cookie: str | None
    delay_s: float = 0.0


def build_backends(settings: AuthSettings, accounts: Accounts) -> list[PasswordBackend]:
    backends: list[PasswordBackend] = []
    for name in settings.backends():
        if name == "pam":
            if os.geteuid() != 0:  # pam_unix then checks only the server's own account's password
                log.warning("auth.password_backends has \"pam\" but the server is not root: PAM cannot check "
                            "other users' passwords")
            backends.append(PamBackend(settings.pam_service))
        else:
            backends.append(LocalBackend(accounts.password_hash, accounts.rehash_password))
    return backends


class PasswordSignIn:
    def __init__(self, settings: AuthSettings, signin: SignIn, run_as: RunAsPolicy) -> None:
        self.signin = signin
        self.accounts = signin.accounts
        self.run_as = run_as
        self.backends = build_backends(settings, self.accounts)
        self.throttle = Throttle(settings.failed_sign_in_delay_s, settings.failed_sign_in_max_delay_s)
        self.successes = 0  # password sign-ins since start (metrics; failures: throttle.failures)

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    @staticmethod
    def keys(username: str, address: str) -> tuple[str, str]:
        # Case-folded: "Alice" and "alice" are one guesser's attempts on one account.
        return f"user:{username.strip().casefold()}", f"addr:{address}"

    def begin(self, username: str, address: str) -> Attempt | float:
        """The attempt for ``username`` from ``address``, to ``sign_in`` now (and ``end`` whatever happens); or
        the seconds before it may be checked at all."""
        return self.throttle.begin(*self.keys(username, address))

    def end(self, attempt: Attempt) -> None:
        self.throttle.end(attempt)

    def sign_in(self, attempt: Attempt, username: str, password: str, address: str) -> Outcome:
        """Check the password (blocking: PAM and argon2 take their time) and make the cookie."""
        username = username.strip()
        reason = self._refusal(username, password)
        user_id: int | None = None
        if reason is None:
            try:
                user_id = self.accounts.ensure_user(username)
                cookie = self.signin.sign_in_user(user_id)
            except (Unauthenticated, InvalidParameter):
                reason = "the Workbench user is disabled"
            else:
                self.throttle.succeeded(attempt)
                self.successes += 1
                log.info("user %r signed in with a password from %s", username, address)
                return Outcome(cookie)
        delay = self.throttle.failed(attempt)
        log.warning("failed sign-in for user %r from %s: %s (next answer delayed %.1f s)",
                    username[:MAX_USERNAME_CHARS], address, reason, delay)
        return Outcome(None, delay)

    def _refusal(self, username: str, password: str) -> str | None:
        """Why this password does not sign ``username`` in, or None when one backend accepts it."""
        if not self.backends:
            return "password sign-in is off (auth.password_backends is empty)"
        try:
            if len(username) > MAX_USERNAME_CHARS:
                raise InvalidParameter("username too long")
            check_username(username)
            self.run_as.check(username)
        except InvalidParameter:
            return "not a valid username"
        except PermissionDenied:
            return "root or a system account (never signed in with a password)"
        problem = usable_password(password)
        if problem is not None:
            return problem
        reasons = []
        for backend in self.backends:
            why = backend.check(username, password)
            if why is None:
                return None
            reasons.append(f"{backend.name}: {why}")
        return "; ".join(reasons)
