"""Accounts of the review application: users, roles, and the counters that throttle sign-in.

This module stores password hashes it is given and never sees a password: hashing (argon2) is the
web application's (web/auth.py). A failed sign-in is counted in one UPDATE, so that concurrent guesses
against one account, from several server processes, all count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from db.engine import Database
from db.queries import as_utc
from db.review_schema import ROLES, AccountError, User, utcnow

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None
    password_hash: str = field(repr=False, default="")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


def _account(row: User) -> Account:
    return Account(row.id, row.name, row.role, row.disabled, row.failed_logins,
                   None if row.locked_until is None else as_utc(row.locked_until), as_utc(row.created_at),
                   None if row.last_login_at is None else as_utc(row.last_login_at), row.password_hash)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise AccountError(f"{name!r} is not a user name: use 1 to 64 letters, digits and . _ @ - "
                           "(starting with a letter or digit)")
    return name


def create_user(db: Database, name: str, password_hash: str, role: str) -> Account:
    check_name(name)
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    try:
        with db.session() as s:
            row = User(name=name, password_hash=password_hash, role=role, disabled=False, failed_logins=0)
            s.add(row)
            s.flush()
            return _account(row)
    except IntegrityError:
        raise AccountError(f"there is already a user {name!r}: `xrq user list` lists them") from None


def accounts(db: Database) -> list[Account]:
    with db.session() as s:
        return [_account(u) for u in s.scalars(select(User).order_by(User.name))]


def by_name(db: Database, name: str) -> Account | None:
    with db.session() as s:
        row = s.scalars(select(User).where(User.name == name)).first()
        return None if row is None else _account(row)


def by_id(db: Database, user_id: int) -> Account | None:
    with db.session() as s:
        row = s.get(User, user_id)
        return None if row is None else _account(row)


def set_disabled(db: Database, name: str, disabled: bool) -> Account:
    """Disable an account (its sessions stop working at their next request), or enable it again; enabling
    also lifts a lock from failed sign-ins."""
    with db.session() as s:
        row = s.scalars(select(User).where(User.name == name)).first()
        if row is None:
            raise AccountError(f"no user {name!r}: `xrq user list` lists them")
        row.disabled = disabled
        if not disabled:
            row.failed_logins, row.locked_until = 0, None
        return _account(row)


def set_password_hash(db: Database, name: str, password_hash: str) -> None:
    with db.session() as s:
        row = s.scalars(select(User).where(User.name == name)).first()
        if row is None:
            raise AccountError(f"no user {name!r}: `xrq user list` lists them")
        row.password_hash = password_hash


def record_failure(db: Database, user_id: int, *, max_failures: int, lock_for: timedelta) -> Account:
    """Count a failed sign-in; the `max_failures`-th in a row locks the account for `lock_for`."""
    now = utcnow()
    with db.session() as s:
        s.execute(update(User).where(User.id == user_id).values(failed_logins=User.failed_logins + 1))
        row = s.get(User, user_id)
        assert row is not None
        s.refresh(row)
        if row.failed_logins >= max_failures:
            row.locked_until = now + lock_for
            row.failed_logins = 0  # after the lock, a fresh allowance
        return _account(row)


def record_success(db: Database, user_id: int) -> None:
    with db.session() as s:
        s.execute(update(User).where(User.id == user_id).values(failed_logins=0, locked_until=None,
                                                                last_login_at=utcnow()))
