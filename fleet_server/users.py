"""People and API tokens in the registry database (tables ``users`` and ``api_tokens``).

Passwords are kept as Argon2id hashes (argon2-cffi's defaults: RFC 9106 low-memory profile);
API tokens are 32 random bytes shown once and kept as their SHA-256 (a hash of a high-entropy
secret needs no slow hash). Shares the server's ``Database`` like ``RolloutStore``; every
write is one short transaction under a lock.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fleet_server.db import Database, open_database
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.roles import Role, parse_role

Row = dict[str, Any]

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
API_TOKEN_PREFIX = "eft"  # noqa: S105 - the public prefix of API tokens
MAX_TOKEN_TTL_S = 366 * 24 * 3600

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""Verified against when the user is unknown, so both answers take as long."""


@dataclass(frozen=True)
class Principal:
    """Who is acting: ``name`` goes into the audit log, ``role`` decides what is allowed."""

    name: str
    role: Role
    kind: str  # "bootstrap", "user" or "token"


BOOTSTRAP = Principal(name="bootstrap-admin", role=Role.ADMIN, kind="bootstrap")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInputError(
            f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")


def check_username(username: str) -> None:
    if not re.match(USERNAME_PATTERN, username):
        raise InvalidInputError(
            f"bad username {username!r}: lower-case letters, digits, '.', '_' or '-', "
            "at most 64, starting with a letter or digit")


def _role(value: str) -> Role:
    try:
        return parse_role(value)
    except ValueError as e:
        raise InvalidInputError(str(e)) from e


def _user_view(row: Row) -> Row:
    return {"username": row["username"], "role": row["role"], "disabled": bool(row["disabled"]),
            "created_at": row["created_at"], "created_by": row["created_by"],
            "updated_at": row["updated_at"], "last_login_at": row["last_login_at"]}


def _token_view(row: Row) -> Row:
    return {"id": row["id"], "name": row["name"], "role": row["role"],
            "created_at": row["created_at"], "created_by": row["created_by"],
            "expires_at": row["expires_at"], "revoked_at": row["revoked_at"],
            "last_used_at": row["last_used_at"]}


class IdentityStore:
    def __init__(self, target: Database | Path | str) -> None:
        self._owned = not isinstance(target, Database)
        self._db = open_database(target)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._db.close()

    # -- users ---------------------------------------------------------------------------
    def add_user(self, *, username: str, password: str, role: str, created_by: str) -> Row:
        check_username(username)
        check_password(password)
        role_ = _role(role)
        now = time.time()
        with self._lock:
            if self._db.count("users", "username = ?", [username]):
                raise ConflictError(f"user {username} already exists")
            self._db.insert("users", {
                "username": username, "password_hash": _hasher.hash(password),
                "role": role_.value, "disabled": 0, "created_at": now,
                "created_by": created_by, "updated_at": now, "last_login_at": None})
        return self.get_user(username=username)

    def _row(self, username: str) -> Row:
        row = self._db.get("users", {"username": username})
        if row is None:
            raise NotFoundError(f"no user {username}")
        return row

    def get_user(self, *, username: str) -> Row:
        with self._lock:
            return _user_view(self._row(username))

    def list_users(self) -> list[Row]:
        with self._lock:
            return [_user_view(r) for r in self._db.select("users", order_by="username")]

    def update_user(self, *, username: str, role: str | None = None,
                    disabled: bool | None = None, password: str | None = None) -> Row:
        changes: Row = {}
        if role is not None:
            changes["role"] = _role(role).value
        if disabled is not None:
            changes["disabled"] = int(disabled)
        if password is not None:
            check_password(password)
            changes["password_hash"] = _hasher.hash(password)
        with self._lock:
            self._row(username)
            if changes:
                self._db.update("users", {"username": username},
                                {**changes, "updated_at": time.time()})
        return self.get_user(username=username)

    def authenticate(self, *, username: str, password: str) -> Principal | None:
        """The user's principal if the password is right and the user is enabled."""
        with self._lock:
            rows = self._db.select("users", "username = ?", [username])
        stored = rows[0]["password_hash"] if rows else _DUMMY_HASH
        try:
            ok: bool = _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or not rows or rows[0]["disabled"]:
            return None
        with self._lock:
            self._db.update("users", {"username": username}, {"last_login_at": time.time()})
        return Principal(name=username, role=Role(rows[0]["role"]), kind="user")

    def user_principal(self, username: str) -> Principal | None:
        """The user's current principal (role changes apply at once), None if disabled/gone."""
        with self._lock:
            rows = self._db.select("users", "username = ?", [username])
        if not rows or rows[0]["disabled"]:
            return None
        return Principal(name=username, role=Role(rows[0]["role"]), kind="user")

    # -- API tokens ----------------------------------------------------------------------
    def create_token(self, *, name: str, role: str, ttl_s: float,
                     created_by: str) -> tuple[str, Row]:
        """Mint a token; returns (the secret, shown only now; its stored view)."""
        name = name.strip()
        if not 1 <= len(name) <= 128:
            raise InvalidInputError("token name must be 1 to 128 characters")
        if not 60 <= ttl_s <= MAX_TOKEN_TTL_S:
            raise InvalidInputError(
                f"token lifetime must be 60 to {MAX_TOKEN_TTL_S} seconds, got {ttl_s}")
        role_ = _role(role)
        secret = f"{API_TOKEN_PREFIX}_{secrets.token_urlsafe(32)}"
        token_id = f"tok_{secrets.token_hex(6)}"
        now = time.time()
        with self._lock:
            self._db.insert("api_tokens", {
                "id": token_id, "name": name, "role": role_.value,
                "token_hash": token_hash(secret), "created_at": now, "created_by": created_by,
                "expires_at": now + ttl_s, "revoked_at": None, "last_used_at": None})
        return secret, self.get_token(token_id=token_id)

    def get_token(self, *, token_id: str) -> Row:
        with self._lock:
            row = self._db.get("api_tokens", {"id": token_id})
        if row is None:
            raise NotFoundError(f"no API token {token_id}")
        return _token_view(row)

    def list_tokens(self) -> list[Row]:
        with self._lock:
            return [_token_view(r) for r in
                    self._db.select("api_tokens", order_by="created_at")]

    def revoke_token(self, *, token_id: str) -> Row:
        with self._lock:
            row = self.get_token(token_id=token_id)
            if row["revoked_at"] is None:
                self._db.update("api_tokens", {"id": token_id}, {"revoked_at": time.time()})
        return self.get_token(token_id=token_id)

    def token_principal(self, token: str, *, now: float | None = None) -> Principal | None:
        """The principal of a live (known, unrevoked, unexpired) API token, else None."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.select("api_tokens", "token_hash = ?", [token_hash(token)])
            if not rows or rows[0]["revoked_at"] is not None or rows[0]["expires_at"] <= now:
                return None
            self._db.update("api_tokens", {"id": rows[0]["id"]}, {"last_used_at": now})
        return Principal(name=f"token:{rows[0]['name']}", role=Role(rows[0]["role"]),
                         kind="token")
