# The referral service: gunicorn on 0.0.0.0:8000, configured by REFERRAL_* variables
# (docs/operations.md). With PostgreSQL and Redis: `docker compose up --build`.

# The base image: another registry or a local stand-in with --build-arg PYTHON_IMAGE=...
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels for the app and every dependency -----------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY referral ./referral
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed, no build tools, not root ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REFERRAL_BIND=0.0.0.0:8000 \
    REFERRAL_INSTANCE_PATH=/var/lib/referral \
    REFERRAL_DATABASE_URL=sqlite:////var/lib/referral/referral.db \
    REFERRAL_SEED_DATA_DIR=/app/seed_data
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/referral \
        --shell /usr/sbin/nologin referral \
    && mkdir -p /var/lib/referral \
    && chown referral:referral /var/lib/referral
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels referral && rm -rf /wheels
WORKDIR /app
# The seed files are read from here, not from the installed package.
COPY seed_data ./seed_data
COPY docker/entrypoint.sh /usr/local/bin/referral-entrypoint
USER referral
EXPOSE 8000
# No curl in the slim image: Python asks /healthz (alive; the database is /readyz's business).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('REFERRAL_BIND', ':8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["referral-entrypoint"]
