"""Who is asking: passwords (argon2), sign-in with throttling and lock-out, sessions, CSRF tokens, roles.

One permission check, `require`, that every route calls first (Datasette's pattern): it finds the
session's user, refuses a disabled account or a session from before a password change, and checks the
role. Sessions live in a signed, HttpOnly, SameSite cookie (Starlette's SessionMiddleware, itsdangerous);
they hold a user id, a CSRF token and a fingerprint of the password hash, never a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import Request

from db import accounts
from db.accounts import Account
from db.engine import Database
from db.review_schema import AccountError
from db.schema import utcnow

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
_DUMMY = _hasher.hash("not a password of anyone")  # verified against for unknown names: same time taken
MIN_PASSWORD = 8


class LoginRequired(Exception):
    """No session (or one no longer valid): the login page answers."""


class Forbidden(Exception):
    """A session without the right (a role, a reader study), or a form without its CSRF token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add_user(db: Database, name: str, password: str, role: str) -> Account:
    accounts.check_name(name)
    return accounts.create_user(db, name, hash_password(password), role)


@dataclass(frozen=True)
class Throttle:
    """How sign-in slows and locks: each failure waits `delay` times the failures so far (at most
    `max_delay`), and the `max_failures`-th in a row locks the account for `lock_for`."""

    delay: float = 0.5
    max_delay: float = 4.0
    max_failures: int = 5
    lock_for: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class LoginResult:
    account: Account | None
    message: str = ""


def login(db: Database, name: str, password: str, throttle: Throttle) -> LoginResult:
    """Check a name and password. The message never says whether the name exists."""
    wrong = "Wrong user name or password."
    found = accounts.by_name(db, name) if accounts.NAME.match(name) else None
    if found is None:
        _verify(_DUMMY, password)
        time.sleep(throttle.delay)
        return LoginResult(None, wrong)
    if found.locked(utcnow()):
        return LoginResult(None, "Too many failed sign-ins: this account is locked for a while. "
                                 "Try again later, or ask an administrator to unlock it.")
    if found.disabled or not _verify(found.password_hash, password):
        after = accounts.record_failure(db, found.id, max_failures=throttle.max_failures, lock_for=throttle.lock_for)
        if after.locked(utcnow()):
            return LoginResult(None, "Too many failed sign-ins: this account is now locked for "
                                     f"{int(throttle.lock_for.total_seconds() // 60)} minutes.")
        time.sleep(min(throttle.delay * after.failed_logins, throttle.max_delay))
        return LoginResult(None, wrong)
    accounts.record_success(db, found.id)
    if _hasher.check_needs_rehash(found.password_hash):
        accounts.set_password_hash(db, found.name, _hasher.hash(password))
        found = accounts.by_name(db, found.name) or found
    return LoginResult(found)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _stamp(account: Account, secret: str) -> str:
    """Changes when the password does, so that a password change ends the account's other sessions."""
    return hmac.new(secret.encode(), account.password_hash.encode(), hashlib.sha256).hexdigest()[:24]


def start_session(request: Request, account: Account, secret: str) -> None:
    request.session.clear()  # nothing from before sign-in survives it (session fixation)
    request.session.update(uid=account.id, stamp=_stamp(account, secret), csrf=secrets.token_urlsafe(32))


def end_session(request: Request) -> None:
    request.session.clear()


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use (the login page's form has one too)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, form_token: object) -> None:
    token = request.session.get("csrf")
    if not (isinstance(token, str) and isinstance(form_token, str) and hmac.compare_digest(token, form_token)):
        raise Forbidden("This form did not come with a valid security token (it may be from an old page or "
                        "another site). Reload the page and try again.")


def require(request: Request, role: str | None = None) -> Account:
    """The signed-in user, or LoginRequired; Forbidden unless they have `role` (admins have every role)."""
    db: Database = request.app.state.db
    uid = request.session.get("uid")
    account = accounts.by_id(db, uid) if isinstance(uid, int) else None
    if account is None or account.disabled or not hmac.compare_digest(
            str(request.session.get("stamp", "")), _stamp(account, request.app.state.config.secret_key)):
        request.session.pop("uid", None)
        raise LoginRequired()
    if role is not None and role != account.role and not account.is_admin:
        raise Forbidden(f"This page is for the {role} role; you are signed in as a {account.role}.")
    return account
