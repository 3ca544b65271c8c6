"""Benchmarks of the referral service (not part of the test suite): see bench/README.md."""
