#!/bin/sh
# Entry point of the Switchyard image.
#
# tini (PID 1) starts this script and forwards every signal it receives to
# it; `exec` replaces the shell with the gateway, so SIGTERM (graceful
# shutdown) and SIGHUP (configuration reload) reach `switchyard` itself.
# The arguments are the image's CMD, or the ones given to `docker run`.
set -eu

exec /usr/local/bin/switchyard "$@"
