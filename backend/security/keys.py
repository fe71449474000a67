"""API keys: generation, hashing, storage (through the catalog repository) and verification.

A key is `psk_` + 43 url-safe characters from `secrets` (256 random bits). Only its SHA-256
digest is stored. A slow password hash (bcrypt, argon2) exists to make guessing low-entropy
passwords expensive; a 256-bit random key cannot be guessed at any speed, so a fast digest is
as safe here and keeps verification cheap on every request. The digest is also what makes a
leaked database useless for calling the API: the key itself is printed once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from backend.domain.tenants import fold_name, tenant_name
from backend.errors import InvalidInput, Unauthenticated
from backend.security.principal import Principal, Role

KEY_PREFIX = "psk_"
_HASH_PREFIX = "sha256:"
_MAX_KEY_CHARS = 200


class ApiKeyRowLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def key_hash(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def merchant(self) -> str | None: ...
    @property
    def warehouse(self) -> str | None: ...


class KeyStore(Protocol):
    """What this module needs from the catalog repository."""

    def create_api_key(self, key_hash: str, role: str, merchant: str | None = None,
                       warehouse: str | None = None) -> int: ...

    def find_api_key(self, key_hash: str) -> ApiKeyRowLike | None: ...

    def revoke_api_key(self, key_id: int) -> bool: ...


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return _HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split(values: str | None) -> tuple[str, ...]:
    # Canonical again on the way out: a row written before names were canonical still
    # scopes to the tenant SQL and the vector payload know.
    return tuple(dict.fromkeys(fold_name(v) for v in (values or "").split(",") if v.strip()))


def _join(values: list[str] | tuple[str, ...], what: str) -> str | None:
    """Scope names in canonical form (see backend.domain.tenants), comma-joined."""
    cleaned = [tenant_name(v, what) for v in values if v.strip()]
    return ",".join(dict.fromkeys(cleaned)) or None


def principal_of(row: ApiKeyRowLike) -> Principal:
    try:
        role = Role(row.role)
    except ValueError as exc:  # a row written by something else; never grant by accident
        raise Unauthenticated("API key is not valid") from exc
    return Principal(role=role, merchants=_split(row.merchant),
                     warehouses=_split(row.warehouse), key_id=row.id)


@dataclass(frozen=True)
class CreatedKey:
    key_id: int
    key: str  # shown once; never stored
    principal: Principal


class ApiKeys:
    """Create, revoke and verify keys. Verified keys are cached for `cache_ttl_s` seconds
    (by digest), so a busy server does not query SQL on every call."""

    def __init__(self, store: KeyStore, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def create(self, role: str, merchants: list[str] | tuple[str, ...] = (),
               warehouses: list[str] | tuple[str, ...] = ()) -> CreatedKey:
        try:
            parsed = Role(role.strip().lower())
        except ValueError as exc:
            known = ", ".join(r.value for r in Role)
            raise InvalidInput(f"unknown role {role!r}; roles: {known}") from exc
        merchant = _join(list(merchants), "merchant")
        warehouse = _join(list(warehouses), "warehouse")
        if parsed is Role.WAREHOUSE and not warehouse:
            raise InvalidInput("a warehouse key needs --warehouse")
        if parsed is Role.STOREFRONT and warehouse:
            raise InvalidInput("a storefront key has no warehouse scope")
        key = generate_key()
        key_id = self._store.create_api_key(hash_key(key), parsed.value, merchant, warehouse)
        principal = Principal(role=parsed, merchants=_split(merchant),
                              warehouses=_split(warehouse), key_id=key_id)
        return CreatedKey(key_id=key_id, key=key, principal=principal)

    def revoke(self, key_id: int) -> bool:
        revoked = self._store.revoke_api_key(key_id)
        with self._lock:
            self._cache = {h: e for h, e in self._cache.items() if e[1].key_id != key_id}
        return revoked

    def authenticate(self, key: str) -> Principal:
        """The principal of a presented key; Unauthenticated if it is missing, malformed,
        unknown or revoked. The message never repeats the key."""
        key = key.strip()
        if not key:
            raise Unauthenticated("missing API key: send it in the x-api-key metadata")
        if (not key.startswith(KEY_PREFIX) or len(key) > _MAX_KEY_CHARS
                or not key.isascii()):
            raise Unauthenticated("API key is not valid")
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = self._store.find_api_key(digest)
        # Compare in constant time anyway (the lookup was by digest, not by the key itself).
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise Unauthenticated("API key is not valid")
        principal = principal_of(row)
        if self._ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now + self._ttl, principal)
        return principal
