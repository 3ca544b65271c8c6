"""The app's JSON provider: orjson for what is sent (compiled, a few times faster than the
standard library's encoder on every answer), the standard library for what is read (its
error messages and its treatment of odd escapes are what the API's 4xx answers are built on).

The bytes differ from the standard library's only in form (UTF-8 rather than \\u escapes):
the same JSON. Anything orjson refuses (a lone surrogate quoted back in a problem, a type it
does not know and Flask's provider does) goes through Flask's provider as before.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self.dump_bytes(obj, **kwargs).decode()

    def dump_bytes(self, obj: Any, **kwargs: Any) -> bytes:
        if not kwargs:
            try:
                return orjson.dumps(obj, default=self.default, option=_OPTIONS)
            except (TypeError, orjson.JSONEncodeError):
                pass
        return super().dumps(obj, **kwargs).encode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        # The app's response_class is Flask's Response (typed as a class of werkzeug's).
        make: Any = self._app.response_class
        response: Response = make(self.dump_bytes(obj), mimetype=self.mimetype)
        return response
