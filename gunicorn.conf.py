"""gunicorn picks this file up when started from the repository (`gunicorn`, no arguments).

The settings live in the package, so an installed copy (the container image) has them too:
`referral serve` runs gunicorn with ``--config python:referral.ops.gunicorn_config``.
"""

from referral.ops.gunicorn_config import *  # noqa: F403
