"""Browser sign-in: an API token, entered once, becomes an HttpOnly cookie.

The cookie is random and stored only hashed; it is tied to the token that signed in, so
revoking the token (or disabling the user) ends the browser's access at once.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from openworkbench.auth.permissions import Principal
from openworkbench.auth.tokens import hash_token, new_token, parse_authorization
from openworkbench.errors import Unauthenticated
from openworkbench.proxy import SIGN_IN_COOKIE
from openworkbench.services.accounts import Accounts, principal_of
from openworkbench.store.schema import ApiToken, BrowserSession, User, utcnow

COOKIE_NAME = SIGN_IN_COOKIE  # the proxy strips it, so an IDE never sees it
LIFETIME = timedelta(days=7)


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

    def sign_out(self, cookie: str) -> None:
        with self.store.session() as db:
            db.execute(delete(BrowserSession).where(BrowserSession.cookie_hash == hash_token(cookie)))

    def cached(self, authorization: str | None, cookie: str | None) -> Principal | None:
        """The caller if the answer is known without the store (safe on the event loop); None: ask
        ``authenticate``. Raises Unauthenticated only for what needs no store (no credentials)."""
        return None

    def authenticate(self, authorization: str | None, cookie: str | None) -> Principal:
        """The caller of a browser or API request: the Authorization header first, then the cookie."""
        if parse_authorization(authorization) is not None or not cookie:
            return self.accounts.authenticate(authorization)
        query = (
            select(ApiToken, User)
            .join(User, ApiToken.user_id == User.id)
            .join(BrowserSession, BrowserSession.token_id == ApiToken.id)
            .where(BrowserSession.cookie_hash == hash_token(cookie), BrowserSession.expires > utcnow())
        )
        with self.store.session() as db:
            row = db.execute(query).first()
        if row is None:
            raise Unauthenticated("Not signed in, or the sign-in has expired")
        return principal_of(*row)
