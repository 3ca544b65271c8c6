"""API keys: who may call the non-public API, and with which scopes.

Views call ``authenticate()`` (a 401 problem unless the request carries a usable
``Authorization: Bearer <key>``) and ``require_scope(key, ...)`` (a 403 unless the key has one
of the scopes), and document it with ``@blp.doc(security=BEARER_SECURITY)``.
"""

from referral.auth.keys import (
    BEARER_SECURITY,
    authenticate,
    create_key,
    find_key,
    list_keys,
    register_security_scheme,
    require_scope,
    revoke_key,
)
from referral.auth.models import (
    SCOPE_ADMIN,
    SCOPE_REFERRALS_READ,
    SCOPE_REFERRALS_STATUS,
    SCOPE_REFERRALS_WRITE,
    SCOPES,
    ApiKey,
)

__all__ = [
    "BEARER_SECURITY",
    "SCOPES",
    "SCOPE_ADMIN",
    "SCOPE_REFERRALS_READ",
    "SCOPE_REFERRALS_STATUS",
    "SCOPE_REFERRALS_WRITE",
    "ApiKey",
    "authenticate",
    "create_key",
    "find_key",
    "list_keys",
    "register_security_scheme",
    "require_scope",
    "revoke_key",
]
