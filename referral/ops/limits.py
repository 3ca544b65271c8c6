"""Rate limits (Flask-Limiter), all decided here:

- RATELIMIT_PUBLIC: per client IP, shared by every public directory GET (clinics,
  locations, specialties, concerns, exports) made without a usable API key;
- RATELIMIT_KEYED: per API key, the same GETs made with a usable key (an editor reading a
  clinic before a PATCH does not depend on what anonymous callers at its address spent);
- RATELIMIT_GEOCODE: per client IP (per key with a usable key), nearest searches by
  ``address`` (those may call a network geocoder), on top of the limits above;
- RATELIMIT_KEY_REFUSALS: per client IP, requests refused 401 (no usable key) by the routes
  that need a key. Only refusals count; past the limit such requests get 429 before the key
  is even looked up, so no one without a key can flood the audit trail or the key table.
  Requests with a usable key are never held by it.
- RATELIMIT_REFERRALS: per API key, POST /v1/referrals. Checked inside the view, after the
  key is authenticated, and keyed by the key's row id: a caller cannot spend someone else's
  allowance by sending their key id with a wrong secret, and no key or token ever reaches
  the limit store.

A refusal is 429 problem+json with Retry-After (and X-RateLimit-* headers). Other answers
carry the X-RateLimit-* headers (the window's end in X-RateLimit-Reset) but no Retry-After
unless the view gave one itself (a 409 or 503 saying when to retry). Limits are read
from app.config at each request, so they can be changed in tests without a new app. The
client IP is the peer address, or the one TRUSTED_PROXIES proxies vouch for (ProxyFix, set
up in referral.ops). Counters live in RATELIMIT_STORAGE_URI: ``memory://`` counts per
process, so with several workers or machines every process allows the full rate; use Redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_limiter import Limiter, RouteLimit
from flask_limiter.constants import ConfigVars
from flask_smorest import abort
from flask_smorest.spec.plugins import FlaskPlugin
from limits import parse
from limits.storage import RedisStorage

from referral.auth.keys import request_key

# Blueprints whose GETs are the public directory (names as registered by referral.web).
PUBLIC_BLUEPRINTS = ("clinics", "locations", "specialties", "concerns", "exports")
GEOCODE_BLUEPRINT = "locations"
INTAKE_ENDPOINT = "referrals.Referrals"
# Blueprints whose every request needs an API key, and methods needing one on the public ones.
KEYED_BLUEPRINTS = (INTAKE_ENDPOINT.partition(".")[0], "admin", "imports")
EDITABLE_BLUEPRINTS = ("clinics", "locations")
EDIT_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Every blueprint with a limit.
LIMITED_BLUEPRINTS = (*PUBLIC_BLUEPRINTS, *KEYED_BLUEPRINTS)
# Flask-Limiter's settings for limits on every request (this module sets none of them).
APP_WIDE_LIMITS = (ConfigVars.DEFAULT_LIMITS, ConfigVars.APPLICATION_LIMITS, ConfigVars.META_LIMITS)
RATE_LIMITED_RESPONSE = "RATE_LIMITED"

log = logging.getLogger(__name__)


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _api_key_id() -> str:
    # g.api_key is set by authenticate(); its row id, never the key or its public key id.
    return f"key:{g.api_key.id}"


def _usable_key_id() -> str:
    # The row id of the request's usable key (never the key or its public key id).
    key = request_key()
    return f"key:{key.id}" if key is not None else client_ip()


def _carries_usable_key() -> bool:
    return request_key() is not None


def _carries_no_usable_key() -> bool:
    return request_key() is None


def _setting(name: str) -> Any:
    return current_app.config[name]


def get_limiter(app: Flask | None = None) -> Limiter:
    limiter: Limiter = (app or current_app).extensions["referral_limiter"]
    return limiter


def limit_referral_intake() -> None:
    """Count this POST against its API key's allowance; raise 429 past RATELIMIT_REFERRALS.

    Call after authenticate(): the key must be known.
    """
    intake: RouteLimit = current_app.extensions["referral_intake_limit"]
    with intake:
        pass


_ANSWER_RETRY_AFTER = "referral.answer_retry_after"


def _note_answer_retry_after(response: Response) -> Response:
    # Runs before the limiter's hook, which writes its window into Retry-After on every answer
    # (or raises the view's own value to it): keep what the view said, for the hook below.
    request.environ[_ANSWER_RETRY_AFTER] = response.headers.get("Retry-After")
    return response


def _retry_after_at_least_one_second(response: Response) -> Response:
    """Retry-After only where it means something: the view's own (a 409 or 503 saying when to
    retry), or the limiter's on its 429, at least a second; never the window on a 200."""
    answer = request.environ.pop(_ANSWER_RETRY_AFTER, None)
    if answer is not None:
        response.headers["Retry-After"] = answer
        return response
    if response.status_code != 429:
        response.headers.pop("Retry-After", None)
        return response
    # Flask-Limiter rounds down, so a window ending within the second says "Retry-After: 0"
    # (and says nothing when its headers are off): a client must wait at least a second.
    value = response.headers.get("Retry-After", "")
    if value.isdigit() and int(value) >= 1:
        return response
    seconds = 1
    limit = get_limiter().current_limit
    if limit is not None:
        try:
            seconds = max(1, math.ceil(limit.reset_at - time.time()))
        except Exception:  # the limit store went away meanwhile: one second it is
            seconds = 1
    response.headers["Retry-After"] = str(seconds)
    return response


class OneTripRedisStorage(RedisStorage):
    """limits' Redis storage, but a hit costs one round trip instead of three.

    Flask-Limiter counts a request (``incr``) and then, for the X-RateLimit-* and
    Retry-After headers, reads the same counter back (``get``) and its time to live
    (``get_expiry``): three round trips for every public request. Here the increment's
    script also returns the time to live, and the two reads that follow it in the same
    thread are answered from that (each once), so they cost nothing; any other read goes
    to Redis as before. Used for every ``redis://`` and ``rediss://`` RATELIMIT_STORAGE_URI.
    """

    STORAGE_SCHEME = ["referral+redis", "referral+rediss"]
    SCRIPT_INCR_EXPIRE_TTL = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix("referral+"), **options)
        self._last_hit = threading.local()

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_incr_expire_ttl = self.get_connection().register_script(
            self.SCRIPT_INCR_EXPIRE_TTL
        )

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        current, ttl = self.lua_incr_expire_ttl([self.prefixed_key(key)], [expiry, amount])
        # (key, count, expiry time, which of the two reads are still unanswered)
        self._last_hit.value = [key, int(current), max(int(ttl), 0) + time.time(), 2]
        return int(current)

    def _answer(self, key: str, index: int) -> Any:
        last = getattr(self._last_hit, "value", None)
        if last is None or last[0] != key:
            return None
        last[3] -= 1
        if last[3] <= 0:
            self._last_hit.value = None
        return last[index]

    def get(self, key: str) -> int:
        count = self._answer(key, 1)
        return int(super().get(key)) if count is None else int(count)

    def get_expiry(self, key: str) -> float:
        expiry = self._answer(key, 2)
        return float(super().get_expiry(key)) if expiry is None else float(expiry)


def _limiter_hook(func: Any, limiter: Limiter) -> bool:
    # Its hooks are bound methods (``limiter._check_request_limit``) or partials of its class's
    # functions with the instance first (``partial(Limiter.__inject_headers, limiter)``).
    if getattr(func, "__self__", None) is limiter:
        return True
    args: tuple[Any, ...] = getattr(func, "args", None) or ()
    return bool(args) and args[0] is limiter


def _hooks_only_where_limits_are(app: Flask, limiter: Limiter) -> None:
    """Move Flask-Limiter's request hooks (and ours) from the app to the limited blueprints.

    Flask-Limiter hooks every request of the app: before it, it works out which limits apply
    to the endpoint (none, for anything outside the limited blueprints, but it takes as long
    as a probe's whole answer to find that out); after it, it looks for headers to add. Here
    no limit applies to the whole app (no RATELIMIT_DEFAULT, _APPLICATION or _META: this
    module sets none), so the same hooks are given to the limited blueprints instead and
    every other request (probes, docs, widget, admin, 404s) skips them. Each keeps its place:
    after the app's own before-request hooks and before the blueprint's (which, for
    referrals, enter the intake limit), after the blueprint's after-request hooks.
    """
    app_after = app.after_request_funcs.setdefault(None, [])
    if not limiter.enabled:  # RATELIMIT_ENABLED=false: no limits, no hooks, no 429 to fix
        app_after.remove(_retry_after_at_least_one_second)
        app_after.remove(_note_answer_retry_after)
        app.extensions["referral_limiter_hooks"] = "none"
        return
    app.extensions["referral_limiter_hooks"] = "app"
    if any(app.config.get(name) for name in APP_WIDE_LIMITS):
        return  # some limit applies everywhere: the hooks stay on every request
    hooks: dict[str, list[Any]] = {
        "before": app.before_request_funcs.setdefault(None, []),
        "after": app_after,
        "teardown": app.teardown_request_funcs.setdefault(None, []),
    }
    found = {
        where: [f for f in funcs if _limiter_hook(f, limiter)] for where, funcs in hooks.items()
    }
    if any(len(funcs) != 1 for funcs in found.values()):
        return  # not the hooks this version of Flask-Limiter was known to add: leave them
    for where, funcs in hooks.items():
        funcs.remove(found[where][0])
    app_after.remove(_retry_after_at_least_one_second)
    app_after.remove(_note_answer_retry_after)
    # Flask runs after-request hooks in reverse: the note before the limiter's, the fix after.
    after = [_retry_after_at_least_one_second, found["after"][0], _note_answer_retry_after]
    for name in LIMITED_BLUEPRINTS:
        if name not in app.blueprints:
            continue
        app.before_request_funcs.setdefault(name, []).insert(0, found["before"][0])
        app.after_request_funcs.setdefault(name, [])[:0] = after
        app.teardown_request_funcs.setdefault(name, []).insert(0, found["teardown"][0])
    app.extensions["referral_limiter_hooks"] = "blueprints"


def init_app(app: Flask) -> None:
    # Registered before the limiter's own hook, so it runs after it (Flask runs after-request
    # hooks in reverse) and sees the headers the limiter wrote.
    app.after_request(_retry_after_at_least_one_second)
    storage_uri = str(app.config.get("RATELIMIT_STORAGE_URI") or "memory://")
    options = dict(app.config.get("RATELIMIT_STORAGE_OPTIONS") or {})
    if storage_uri.startswith(("redis://", "rediss://", "redis+")):
        # A slow Redis must not hold requests: give up quickly and fall back to memory.
        options.setdefault("socket_connect_timeout", 1)
        options.setdefault("socket_timeout", 1)
    app.config["RATELIMIT_STORAGE_OPTIONS"] = options
    configured = app.config.get("RATELIMIT_STORAGE_URI")
    if storage_uri.startswith(("redis://", "rediss://")):
        # Flask-Limiter picks the storage by the URI's scheme when it reads the config: ours
        # (OneTripRedisStorage), while it reads; the setting itself stays as given.
        app.config["RATELIMIT_STORAGE_URI"] = f"referral+{storage_uri}"
    try:
        limiter = Limiter(key_func=client_ip, app=app)
    finally:
        app.config["RATELIMIT_STORAGE_URI"] = configured
    app.after_request(_note_answer_retry_after)  # after the limiter's: runs before it
    app.extensions["referral_limiter"] = limiter
    _hooks_only_where_limits_are(app, limiter)

    public = limiter.shared_limit(
        lambda: str(_setting("RATELIMIT_PUBLIC")),
        scope="public",
        methods=["GET", "HEAD"],
        exempt_when=_carries_usable_key,
        error_message=lambda: (
            f"too many requests from this address: the public directory "
            f"allows {_setting('RATELIMIT_PUBLIC')}; retry after Retry-After seconds"
        ),
    )
    keyed = limiter.shared_limit(
        lambda: str(_setting("RATELIMIT_KEYED")),
        scope="keyed",
        key_func=_usable_key_id,
        methods=["GET", "HEAD"],
        exempt_when=_carries_no_usable_key,
        error_message=lambda: (
            f"too many directory reads with this API key: at most "
            f"{_setting('RATELIMIT_KEYED')}; retry after Retry-After seconds"
        ),
    )
    geocode = limiter.limit(
        lambda: str(_setting("RATELIMIT_GEOCODE")),
        scope="geocode",
        key_func=_usable_key_id,
        methods=["GET", "HEAD"],
        exempt_when=lambda: "address" not in request.args,
        error_message=lambda: (
            f"too many address searches from this address: at most "
            f"{_setting('RATELIMIT_GEOCODE')}; search by zip or lat/lon, or retry after "
            "Retry-After seconds"
        ),
    )
    for name in PUBLIC_BLUEPRINTS:
        blueprint = app.blueprints.get(name)
        if isinstance(blueprint, Blueprint):
            public(blueprint)
            keyed(blueprint)
            if name == GEOCODE_BLUEPRINT:
                geocode(blueprint)
    _limit_key_refusals(app, limiter)
    # One limit object, entered by limit_referral_intake() once the key is known; its key comes
    # from the request, so concurrent requests sharing it cannot mix keys up.
    app.extensions["referral_intake_limit"] = limiter.limit(
        lambda: str(_setting("RATELIMIT_REFERRALS")),
        key_func=_api_key_id,
        scope="referrals",
        error_message=lambda: (
            f"too many referrals from this API key: at most "
            f"{_setting('RATELIMIT_REFERRALS')}; retry after Retry-After seconds"
        ),
    )
    document_limits(app)


# --- refusals of requests without a usable key --------------------------------------------
# Counted here rather than by a Flask-Limiter decorator: once referral intake has entered its
# limit inside the view, Flask-Limiter stops applying blueprint limits to that endpoint.

_COUNT_REFUSAL = "referral.count_key_refusal"


def _refusal_window() -> tuple[Any, list[str]]:
    item = parse(str(_setting("RATELIMIT_KEY_REFUSALS")))
    return item, [str(_setting("RATELIMIT_KEY_PREFIX")), "key-refusals", client_ip()]


def _refusal_headers(item: Any, reset_at: float, remaining: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(max(remaining, 0)),
        "X-RateLimit-Reset": str(int(reset_at)),
    }


def _hold_key_refusals() -> None:
    """Before the key is looked up: 429 once this address has had RATELIMIT_KEY_REFUSALS
    refusals (401) in the window; a request with a usable key is never held."""
    if request.method == "OPTIONS" or request_key() is not None:
        return
    if request.blueprint in EDITABLE_BLUEPRINTS and request.method not in EDIT_METHODS:
        return  # public reads: the public per-IP limit holds them
    item, identifiers = _refusal_window()
    strategy = get_limiter().limiter
    try:
        allowed = strategy.test(item, *identifiers)
        reset_at, _ = strategy.get_window_stats(item, *identifiers) if not allowed else (0, 0)
    except Exception as exc:  # the store went away: refuse nothing for it (logged)
        log.warning("could not check key refusals: %s", type(exc).__name__)
        return
    if not allowed:
        seconds = max(1, math.ceil(reset_at - time.time()))
        abort(
            429,
            message=f"too many requests without a usable API key from this address: at most "
            f"{_setting('RATELIMIT_KEY_REFUSALS')} are answered; check the key, and retry "
            "after Retry-After seconds",
            headers={"Retry-After": str(seconds), **_refusal_headers(item, reset_at, 0)},
        )
    request.environ[_COUNT_REFUSAL] = True


def _count_key_refusals(response: Response) -> Response:
    if response.status_code != 401 or not request.environ.pop(_COUNT_REFUSAL, False):
        return response
    item, identifiers = _refusal_window()
    strategy = get_limiter().limiter
    try:
        strategy.hit(item, *identifiers)
        reset_at, remaining = strategy.get_window_stats(item, *identifiers)
    except Exception as exc:
        log.warning("could not count a key refusal: %s", type(exc).__name__)
        return response
    for name, value in _refusal_headers(item, reset_at, remaining).items():
        response.headers.setdefault(name, value)
    return response


def _limit_key_refusals(app: Flask, limiter: Limiter) -> None:
    """RATELIMIT_KEY_REFUSALS on every route that needs a key: first before the blueprint's
    own hooks (which authenticate), counted after a 401."""
    if not limiter.enabled:
        return
    for name in (*KEYED_BLUEPRINTS, *EDITABLE_BLUEPRINTS):
        if name in app.blueprints:
            app.before_request_funcs.setdefault(name, []).insert(0, _hold_key_refusals)
            app.after_request_funcs.setdefault(name, []).append(_count_key_refusals)


# --- the OpenAPI spec ------------------------------------------------------------------------


def _integer_header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer"}}


RATE_LIMITED_DOC: dict[str, Any] = {
    "description": "Too Many Requests: a rate limit was reached (see Retry-After)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    "headers": {
        "Retry-After": _integer_header("Seconds to wait before trying again"),
        "X-RateLimit-Limit": _integer_header("Requests allowed in the window"),
        "X-RateLimit-Remaining": _integer_header("Requests left in the window"),
        "X-RateLimit-Reset": _integer_header("When the window ends (Unix time)"),
    },
}


def limited_operations(app: Flask) -> list[tuple[str, str]]:
    """(OpenAPI path, method) of every rate-limited operation."""
    found: list[tuple[str, str]] = []
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        methods = rule.methods or set()
        path = FlaskPlugin.flaskpath2openapi(rule.rule)
        limited: set[str] = set()
        if blueprint in PUBLIC_BLUEPRINTS:
            limited |= methods & {"GET"}
        if blueprint in EDITABLE_BLUEPRINTS:
            limited |= methods & set(EDIT_METHODS)  # refused keys (RATELIMIT_KEY_REFUSALS)
        if blueprint in KEYED_BLUEPRINTS:
            limited |= methods - {"HEAD", "OPTIONS"}
        found.extend((path, method.lower()) for method in sorted(limited))
    return found


def document_limits(app: Flask) -> None:
    """Add the 429 answer to every limited operation in the spec (decided here, with the
    limits, rather than on each view)."""
    api = app.extensions.get("referral_api")
    if api is None:
        return
    spec = api.spec
    if RATE_LIMITED_RESPONSE not in spec.components.responses:
        spec.components.response(RATE_LIMITED_RESPONSE, RATE_LIMITED_DOC)
    # apispec keeps registered paths here; operations are plain dicts, complete by now.
    paths: dict[str, dict[str, Any]] = spec._paths
    ref = {"$ref": f"#/components/responses/{RATE_LIMITED_RESPONSE}"}
    for path, method in limited_operations(app):
        operation = paths.get(path, {}).get(method)
        if operation is not None:
            operation.setdefault("responses", {})["429"] = dict(ref)
