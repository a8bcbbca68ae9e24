#!/usr/bin/env bash
# Run orgcast from an install made by deploy/install.sh (the container's entry point).
#   orgcast-start                    serve (host 0.0.0.0, port server.port / ORGCAST_SERVER__PORT)
#   orgcast-start db upgrade         any other orgcast command, e.g. migrate before the nodes start
# ORGCAST_PREFIX: the install (default: the directory above this script). Settings come from
# PREFIX/app/config/*.toml and ORGCAST_* environment variables (ORGCAST_DATABASE__URL, ...).
set -euo pipefail
prefix="${ORGCAST_PREFIX:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$prefix/app"
export ORGCAST_CONFIG_DIR="${ORGCAST_CONFIG_DIR:-$prefix/app/config}"
export ORGCAST_SERVER__HOST="${ORGCAST_SERVER__HOST:-0.0.0.0}"
if [ "$#" -eq 0 ]; then
  set -- serve
fi
exec "$prefix/venv/bin/orgcast" "$@"
