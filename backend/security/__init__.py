"""API keys, roles and scopes; the principal of the current call."""

from backend.security.keys import ApiKeys, CreatedKey, generate_key, hash_key
from backend.security.principal import (
    UNRESTRICTED,
    Principal,
    Role,
    acting_as,
    current,
    reset_current,
    set_current,
)

__all__ = [
    "UNRESTRICTED",
    "ApiKeys",
    "CreatedKey",
    "Principal",
    "Role",
    "acting_as",
    "current",
    "generate_key",
    "hash_key",
    "reset_current",
    "set_current",
]
