# Serves the seeded directory: docker build -t referral . && docker run -p 8000:8000 referral
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    REFERRAL_DATABASE_URL=sqlite:////data/referral.db \
    REFERRAL_INSTANCE_PATH=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY referral ./referral
COPY seed_data ./seed_data
RUN pip install . && useradd --create-home --uid 10001 referral \
    && mkdir -p /data && chown referral /data
# The seed data is read from the source tree, not the installed package.
ENV REFERRAL_SEED_DATA_DIR=/app/seed_data
USER referral
EXPOSE 8000
CMD ["sh", "-c", "referral seed && referral serve --bind 0.0.0.0:8000 --workers 2"]
