#!/usr/bin/env bash
# Install orgcast under PREFIX, as the container image does (deploy/Dockerfile) and as a plain
# host install would:
#   PREFIX/app    the application tree: src/, migrations/, config/, tenants/
#   PREFIX/venv   a virtualenv with orgcast (from PREFIX/app) and its dependencies
#   PREFIX/bin/orgcast-start   deploy/start.sh, which runs a node from this install
# Dependencies are pinned by requirements.lock (see the README's "Dependencies and the lock file").
# Usage: deploy/install.sh PREFIX      (PYTHON=python3.12 chooses the interpreter)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${1:?usage: deploy/install.sh PREFIX}"
python="${PYTHON:-python3}"

mkdir -p "$prefix/app" "$prefix/bin"
prefix="$(cd "$prefix" && pwd)"
# The tree, without caches, virtualenvs or local data.
tar -C "$repo" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
  -cf - pyproject.toml README.md src migrations config tenants | tar -C "$prefix/app" -xf -
install -m 0755 "$repo/deploy/start.sh" "$prefix/bin/orgcast-start"

"$python" -m venv "$prefix/venv"
pip=("$prefix/venv/bin/python" -m pip --disable-pip-version-check)
# Editable from PREFIX/app: the package finds its migrations/ and config/ beside src/.
"${pip[@]}" install --quiet -c "$repo/requirements.lock" -e "$prefix/app"
"$prefix/venv/bin/orgcast" --help >/dev/null
echo "orgcast installed in $prefix (start: $prefix/bin/orgcast-start)"
