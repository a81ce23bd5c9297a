"""Browser sign-in: an API token, entered once, or a password becomes an HttpOnly cookie.

The cookie is random and stored only hashed; it is tied to the token that signed in, so
revoking the token (or disabling the user) ends the browser's access at once. A password sign-in
(services/password_signin.py) has no token: its cookie is tied to the user, and disabling the user ends it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from openworkbench.auth.permissions import Principal
from openworkbench.auth.tokens import hash_token, new_token, parse_authorization, parse_rpc_cookie, rpc_cookie_matches
from openworkbench.errors import Unauthenticated
from openworkbench.proxy import SIGN_IN_COOKIE
from openworkbench.services.accounts import Accounts, principal_of
from openworkbench.sessions.states import FINAL
from openworkbench.store.schema import ApiToken, BrowserSession, Session, User, utcnow

COOKIE_NAME = SIGN_IN_COOKIE  # the proxy strips it, so an IDE never sees it
LIFETIME = timedelta(days=7)
# A session origin's own sign-in (sessions/origins.py): shorter, never beyond the main sign-in's.
ORIGIN_LIFETIME = timedelta(hours=12)
COOKIE_KEY = "cookie:"  # cookies and tokens share one cache; their hashes cannot collide with this prefix
COOKIE_FRESH_S = 60.0  # a cached sign-in is looked up again at least this often
# A session's own code calls the API with this header instead of a token (the product's RS_SESSION_RPC_COOKIE).
RPC_COOKIE_HEADER = "x-rs-session-server-rpc-cookie"


def session_rpc_cookie(header: str | None, cookie_header: str | None) -> str | None:
    """The RPC cookie of a request: its header, else a ``Cookie`` holding it (mirai sends the bare cookie as
    the whole ``Cookie`` header; a ``name=<cookie>`` pair is found as well). Nothing else of ``Cookie``."""
    if header:
        return header
    for part in (cookie_header or "").split(";"):
        candidate = part.split("=", 1)[-1].strip()
        if parse_rpc_cookie(candidate) is not None:
            return candidate
    return None


class SignIn:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.store = accounts.store

    def sign_in(self, token: str) -> str:
        """Check the token and return a new cookie value for the browser."""
        self.accounts.authenticate(f"Bearer {token}")
        cookie = new_token()
        with self.store.session() as db:
            token_id = db.scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token)))
            if token_id is None:  # revoked in between
                raise Unauthenticated("Invalid or revoked API token")
            db.execute(delete(BrowserSession).where(BrowserSession.expires < utcnow()))
            db.add(BrowserSession(cookie_hash=hash_token(cookie), token_id=token_id, expires=utcnow() + LIFETIME))
        return cookie

    def sign_in_user(self, user_id: int) -> str:
        """A new cookie for a user whose password was checked (a password sign-in: no token)."""
        cookie = new_token()
        with self.store.session() as db:
            user = db.get(User, user_id)
            if user is None or user.disabled:
                raise Unauthenticated("This user may not sign in")
            user.last_sign_in = utcnow()
            db.execute(delete(BrowserSession).where(BrowserSession.expires < utcnow()))
            db.add(BrowserSession(cookie_hash=hash_token(cookie), user_id=user_id, expires=utcnow() + LIFETIME))
        return cookie

    def origin_cookie(self, main_cookie_hash: str, part: str) -> tuple[str, datetime]:
        """A new sign-in for the session origin of ``part``, tied to the same token as the main sign-in.

        Its value starts with ``<part>.``: the session routes accept it on that session's host only (a main
        sign-in has no dot), so it opens nothing else even if a browser were made to send it elsewhere.
        """
        with self.store.session() as db:
            main = db.scalar(select(BrowserSession).where(
                BrowserSession.cookie_hash == main_cookie_hash, BrowserSession.expires > utcnow()))
            if main is None:
                raise Unauthenticated("Not signed in, or the sign-in has expired")
            cookie = f"{part}.{new_token()}"
            expires = min(main.expires, utcnow() + ORIGIN_LIFETIME)
            db.add(BrowserSession(cookie_hash=hash_token(cookie), token_id=main.token_id, user_id=main.user_id,
                                  expires=expires))
        return cookie, expires

    def sign_out(self, cookie: str) -> None:
        with self.store.session() as db:
            db.execute(delete(BrowserSession).where(BrowserSession.cookie_hash == hash_token(cookie)))

    def cached(self, authorization: str | None, cookie: str | None) -> Principal | None:
        """``authenticate`` from memory and one read of the auth epoch (safe on the event loop); None: ask
        ``authenticate``."""
        if parse_authorization(authorization) is not None or not cookie:
            return self.accounts.cached(authorization)
        cache = self.accounts.cache
        return cache.get(COOKIE_KEY + hash_token(cookie)) if cache else None

    def cookie_fresh_until(self, cookie: str) -> float | None:
        """When the cached sign-in of ``cookie`` goes stale (``time.monotonic()``: by its expiry at the latest),
        from memory alone; None when it is not cached."""
        cache = self.accounts.cache
        return cache.fresh_until(COOKIE_KEY + hash_token(cookie)) if cache else None

    def rpc_caller(self, authorization: str | None, session_cookie: str | None,
                   page_cookie: str | None = None) -> Principal:
        """The caller of an RPC: the Authorization header first, then a session's RPC cookie, then the sign-in
        cookie of one of our pages (``page_cookie``: only once api/rpc.py's CSRF check has passed)."""
        if parse_authorization(authorization) is not None or not (session_cookie or page_cookie):
            return self.accounts.authenticate(authorization)
        if not session_cookie:
            return self.authenticate(None, page_cookie)  # the token's kind capped by standing, as for the API
        parsed = parse_rpc_cookie(session_cookie)
        if parsed is None:
            raise Unauthenticated("Invalid session RPC cookie")
        session_id, expires = parsed
        query = select(Session.secret, Session.state, User).join(User).where(Session.id == session_id)
        with self.store.session() as db:
            row = db.execute(query).first()
        if row is None or not rpc_cookie_matches(session_cookie, row.secret):
            raise Unauthenticated("Invalid session RPC cookie")
        if row.state in FINAL:
            raise Unauthenticated(f"The session of this RPC cookie has ended ({row.state})")
        if expires <= utcnow():
            raise Unauthenticated("The session RPC cookie has expired: read a new one from "
                                  "$PWB_SESSION_RUNTIME_DIR/rpc_cookie")
        user = row[2]
        if user.disabled:
            raise Unauthenticated(f"User '{user.username}' is disabled")
        # The session's code acts as its user, with a user token's power whatever the user's standing.
        principal = Principal.from_standing(user.id, user.username, "user", user.is_admin, user.is_super_admin)
        return dataclasses.replace(principal, session_id=session_id)

    def authenticate(self, authorization: str | None, cookie: str | None) -> Principal:
        """The caller of a browser or API request: the Authorization header first, then the cookie."""
        if parse_authorization(authorization) is not None or not cookie:
            return self.accounts.authenticate(authorization)
        cookie_hash = hash_token(cookie)
        cache = self.accounts.cache
        epoch = cache.begin() if cache else None
        # A token's sign-in is its token's user; a password sign-in names its user itself.
        query = (
            select(ApiToken, User, BrowserSession.expires)
            .select_from(BrowserSession)
            .outerjoin(ApiToken, BrowserSession.token_id == ApiToken.id)
            .join(User, User.id == func.coalesce(ApiToken.user_id, BrowserSession.user_id))
            .where(BrowserSession.cookie_hash == cookie_hash, BrowserSession.expires > utcnow())
        )
        with self.store.session() as db:
            row = db.execute(query).first()
        if row is None:
            raise Unauthenticated("Not signed in, or the sign-in has expired")
        principal = principal_of(row[0], row[1]) if row[0] is not None else password_principal(row[1])
        if cache is not None:
            remaining = (row[2] - utcnow()).total_seconds()
            cache.put(COOKIE_KEY + cookie_hash, principal, epoch, min(remaining, COOKIE_FRESH_S))
        return principal


def password_principal(user: User) -> Principal:
    """The caller a password sign-in stands for: the user's own standing, admin at most (acting on behalf of
    others stays with super-admin tokens, which only the operator's CLI makes)."""
    if user.disabled:
        raise Unauthenticated(f"User '{user.username}' is disabled")
    kind = "admin" if user.is_admin or user.is_super_admin else "user"
    return Principal.from_standing(user.id, user.username, kind, user.is_admin, user.is_super_admin)
