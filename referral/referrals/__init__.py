"""Referrals from assessment apps: intake, matching, idempotency, lifecycle, log and audit."""
