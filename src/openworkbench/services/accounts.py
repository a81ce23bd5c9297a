"""Workbench users and API tokens, and authenticating a request's token."""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from openworkbench.auth.cache import PrincipalCache
from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.auth.tokens import TOKEN_KINDS, hash_token, new_token, parse_authorization
from openworkbench.errors import InvalidParameter, NotFound, Unauthenticated
from openworkbench.store import Store
from openworkbench.store.schema import ApiToken, BrowserSession, User, utcnow

# Recording "last used" on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=5)


def isoformat(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z") if value else None


def posix_uid(username: str) -> int | None:
    try:
        return pwd.getpwnam(username).pw_uid
    except KeyError:
        return None


@dataclass(frozen=True)
class TokenInfo:
    name: str
    kind: str
    username: str
    created: datetime
    last_used: datetime | None


class Accounts:
    def __init__(self, store: Store, cache: PrincipalCache | None = None) -> None:
        self.store = store
        self.cache = cache

    # -- users -------------------------------------------------------------------------------
    def add_user(self, username: str, admin: bool = False, super_admin: bool = False) -> None:
        check_username(username)
        with self.store.session() as db:
            if db.scalar(select(User).where(User.username == username)):
                raise InvalidParameter(f"user '{username}' already exists")
            db.add(User(username=username, is_admin=admin or super_admin, is_super_admin=super_admin))

    def ensure_user(self, username: str, admin: bool = False, super_admin: bool = False) -> int:
        """Register the user if new and raise (never lower) their standing; return the id."""
        check_username(username)
        with self.store.session() as db:
            user = db.scalar(select(User).where(User.username == username))
            if user is None:
                user = User(username=username, is_admin=False, is_super_admin=False)
                db.add(user)
            user.is_admin = user.is_admin or admin or super_admin
            user.is_super_admin = user.is_super_admin or super_admin
            db.flush()
            return user.id

    def disable_user(self, username: str) -> None:
        with self.store.session() as db:
            user = db.scalar(select(User).where(User.username == username))
            if user is None:
                raise NotFound(f"no user '{username}'")
            user.disabled = True

    def set_disabled(self, principal: Principal, username: str, disabled: bool) -> None:
        """The Admin page's disable / enable: an admin with write access, never on themselves."""
        require(principal, Action.MANAGE_USERS)
        if username == principal.username:
            raise InvalidParameter("you cannot disable or enable yourself")
        with self.store.session() as db:
            user = db.scalar(select(User).where(User.username == username))
            if user is None:
                raise NotFound(f"no user '{username}'")
            user.disabled = disabled  # the auth epoch's trigger ends their cached sign-ins at once

    def user_id(self, username: str) -> int | None:
        with self.store.session() as db:
            return db.scalar(select(User.id).where(User.username == username))

    def list_users(self) -> list[dict[str, Any]]:
        with self.store.session() as db:
            users = db.scalars(select(User).order_by(User.username)).all()
            return [_user_json(user) for user in users]

    # -- local passwords (hashed by auth/passwords.py) ----------------------------------------
    def password_hash(self, username: str) -> str | None:
        with self.store.session() as db:
            return db.scalar(select(User.password_hash).where(User.username == username))

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Register the user if new and store the hash of their local password. Their password sign-ins end:
        whoever knew the old password is signed out."""
        user_id = self.ensure_user(username)
        with self.store.session() as db:
            db.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))
            db.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id))

    def rehash_password(self, username: str, password_hash: str) -> None:
        """The same password, hashed with newer parameters: nobody is signed out."""
        with self.store.session() as db:
            db.execute(update(User).where(User.username == username).values(password_hash=password_hash))

    # -- tokens ------------------------------------------------------------------------------
    def generate_token(self, kind: str, name: str, username: str) -> str:
        if kind not in TOKEN_KINDS:
            raise InvalidParameter(f"unknown token kind '{kind}'; expected one of {', '.join(TOKEN_KINDS)}")
        if not name.strip():
            raise InvalidParameter("the token name must not be empty")
        with self.store.session() as db:
            if db.scalar(select(ApiToken.id).where(ApiToken.name == name)):
                raise InvalidParameter(f"a token named '{name}' already exists")
            if db.scalar(select(User.disabled).where(User.username == username)):
                raise InvalidParameter(f"user '{username}' is disabled: a token for them could never be used")
        user_id = self.ensure_user(
            username, admin=kind.startswith("admin"), super_admin=kind.startswith("super-admin")
        )
        token = new_token()
        with self.store.session() as db:
            db.add(ApiToken(name=name, kind=kind, user_id=user_id, token_hash=hash_token(token)))
        return token

    def revoke_token(self, name: str) -> None:
        with self.store.session() as db:
            token = db.scalar(select(ApiToken).where(ApiToken.name == name))
            if token is None:
                raise NotFound(f"no token named '{name}'")
            db.delete(token)

    def list_tokens(self) -> list[TokenInfo]:
        query = select(ApiToken, User.username).join(User).order_by(ApiToken.created)
        with self.store.session() as db:
            return [
                TokenInfo(t.name, t.kind, username, t.created, t.last_used)
                for t, username in db.execute(query)
            ]

    # -- a signed-in user's own tokens (the API tokens page) ------------------------------------
    def own_tokens(self, principal: Principal) -> list[TokenInfo]:
        query = (select(ApiToken, User.username).join(User).where(User.id == principal.user_id)
                 .order_by(ApiToken.created))
        with self.store.session() as db:
            return [TokenInfo(t.name, t.kind, username, t.created, t.last_used) for t, username in db.execute(query)]

    def create_own_token(self, principal: Principal, label: str) -> tuple[str, str]:
        """A new ``user`` token of the caller (admin kinds stay CLI-only): its stored name and the token.

        Token names are unique server-wide: the stored name is ``<username>:<label>`` (usernames have no
        colon), so one user's label never collides with, nor reveals, another user's."""
        label = label.strip()
        if not label or len(label) > 100 or not label.isprintable():
            raise InvalidParameter("the token name must be 1 to 100 printable characters")
        name = f"{principal.username}:{label}"
        return name, self.generate_token("user", name, principal.username)

    def revoke_own_token(self, principal: Principal, name: str) -> None:
        """Revoke one of the caller's own ``user`` tokens; anyone else's is "not found", never told apart."""
        with self.store.session() as db:
            token = db.scalar(select(ApiToken).where(ApiToken.name == name, ApiToken.user_id == principal.user_id))
            if token is None or token.kind != "user":
                raise NotFound(f"you have no user token named '{name}'")
            db.delete(token)

    def cached(self, authorization: str | None) -> Principal | None:
        """``authenticate`` from memory and one read of the auth epoch (safe on the event loop); None: ask
        ``authenticate``."""
        token = parse_authorization(authorization)
        if token is None or self.cache is None:
            return None
        return self.cache.get(hash_token(token))

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an Authorization header; Unauthenticated otherwise."""
        token = parse_authorization(authorization)
        if token is None:
            raise Unauthenticated("Authentication required: send 'Authorization: Bearer <api token>'")
        token_hash = hash_token(token)
        if self.cache is not None and (known := self.cache.get(token_hash)) is not None:
            return known
        epoch = self.cache.begin() if self.cache else None
        query = select(ApiToken, User).join(User).where(ApiToken.token_hash == token_hash)
        with self.store.session() as db:
            row = db.execute(query).first()
            if row is None:
                raise Unauthenticated("Invalid or revoked API token")
            api_token, user = row
            principal = principal_of(api_token, user)
            now = utcnow()
            if api_token.last_used is None or now - api_token.last_used > LAST_USED_RESOLUTION:
                api_token.last_used = now
                user.last_sign_in = now
            # Fresh until its last use is due to be recorded again.
            fresh_for = (api_token.last_used + LAST_USED_RESOLUTION - now).total_seconds()
        if self.cache is not None:
            self.cache.put(token_hash, principal, epoch, fresh_for)
        return principal


def principal_of(api_token: ApiToken, user: User) -> Principal:
    """The caller a valid token stands for; a disabled user is refused whatever the token."""
    if user.disabled:
        raise Unauthenticated(f"User '{user.username}' is disabled")
    return Principal.from_standing(user.id, user.username, api_token.kind, user.is_admin, user.is_super_admin)


def check_username(username: str) -> None:
    if not username or username != username.strip() or any(c in username for c in "/:\0\n"):
        raise InvalidParameter(f"invalid username {username!r}")


def _user_json(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "status": "Inactive" if user.disabled else "Active",
        "isAdmin": user.is_admin or user.is_super_admin,
        "isSuperAdmin": user.is_super_admin,
        "uid": posix_uid(user.username),
        "lastSignIn": isoformat(user.last_sign_in),
        "created": isoformat(user.created),
    }
