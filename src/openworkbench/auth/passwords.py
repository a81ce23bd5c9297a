"""Password checks for the sign-in page: PAM (the machine's accounts) and a local store of argon2id hashes.

A backend answers None when the password is right, else why not (for the log only: the person is told nothing
more than "wrong username or password"). Both take about as long for a user they do not know as for a wrong
password: the local store verifies against a dummy hash, and PAM runs its whole stack (pam_unix fails an unknown
user as slowly as a wrong password).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from openworkbench.errors import ConfigError, InvalidParameter

log = logging.getLogger(__name__)

# argon2-cffi's defaults are RFC 9106's low-memory profile of argon2id (t=3, m=64 MiB, p=4).
HASHER = PasswordHasher()
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; this bounds the work one request can ask for


class PasswordBackend(Protocol):
    name: str

    def check(self, username: str, password: str) -> str | None:
        """None: the password is right for ``username``; else the reason it is refused (never the password)."""


@functools.cache
def _dummy_hash() -> str:
    """Verified when the user has no local password, so that an unknown name costs the time a wrong password does.
    Made on first use: a hash costs 64 MiB and tens of ms, which no CLI command should pay at start-up."""
    return HASHER.hash("no such user: the verify only spends the time a real one would")


def usable_password(password: str) -> str | None:
    """Why a password can never be right, or None. A NUL would cut it short on its way through C (PAM)."""
    if not password:
        return "empty password"
    if "\0" in password:
        return "password contains a NUL character"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"password longer than {MAX_PASSWORD_CHARS} characters"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash to store for a new local password; refuses one that could never be used."""
    problem = usable_password(password)
    if problem is not None:
        raise InvalidParameter(f"Cannot set this password: {problem}")
    return HASHER.hash(password)


class LocalBackend:
    """Hashes in the store: ``load(username)`` gives the user's hash (None: no local password), ``rehash``
    stores a new one when argon2-cffi's defaults have moved on since it was made."""

    name = "local"

    def __init__(self, load: Callable[[str], str | None], rehash: Callable[[str, str], None]) -> None:
        self.load = load
        self.rehash = rehash

    def check(self, username: str, password: str) -> str | None:
        stored = self.load(username)
        try:
            HASHER.verify(stored or _dummy_hash(), password)
        except VerifyMismatchError:
            return "wrong local password" if stored else "no local password for this user"
        except (VerificationError, InvalidHashError) as exc:
            log.error("the stored password hash of user %r is unusable: %s", username, exc)
            return "unusable stored password hash"
        if stored is None:
            return "no local password for this user"  # (the dummy hash's phrase, typed in)
        if HASHER.check_needs_rehash(stored):
            self.rehash(username, HASHER.hash(password))
        return None


class PamBackend:
    """The machine's accounts through PAM (``pamela``, as JupyterHub's PAMAuthenticator): authentication, then
    account management (a locked, expired or otherwise refused account fails like a wrong password), then the
    credentials are re-initialised. The server must run as root to read /etc/shadow through pam_unix."""

    name = "pam"

    def __init__(self, service: str) -> None:
        try:
            import pamela  # type: ignore[import-untyped]  # loads libpam: only servers that use PAM need it
        except (ImportError, OSError) as exc:
            raise ConfigError(f"config key 'auth.password_backends': PAM is not usable here ({exc})") from None
        self._pamela = pamela
        self.service = service

    def check(self, username: str, password: str) -> str | None:
        pamela = self._pamela
        try:
            pamela.authenticate(username, password, service=self.service,
                                resetcred=pamela.PAM_REINITIALIZE_CRED, check=True)
        except pamela.PAMError as exc:
            return f"PAM ({self.service}): {exc}"
        return None
