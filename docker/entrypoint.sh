#!/bin/sh
# The container's start: migrate, seed if asked, then serve (gunicorn replaces this shell, so
# it gets the signals). Any other command runs instead, e.g. `referral keys create ...`.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

referral db upgrade
case "${REFERRAL_SEED_ON_START:-false}" in
    true | 1) referral seed ;;
esac
exec referral serve "$@"
