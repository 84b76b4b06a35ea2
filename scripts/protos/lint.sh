#!/usr/bin/env bash
# Lints the Haulmesh contracts with buf, fully offline: STANDARD + COMMENTS rules (protos/buf.yaml, where
# the few AIP-motivated exceptions are listed with their reasons), and canonical `buf format`.
#
# Usage (from the repository root): scripts/protos/lint.sh
# Variables: PYTHON (default .venv/bin/python) to locate the googleapis-common-protos wheel;
#            BUF (default .tools/node_modules/.bin/buf, installed by `make tools`).
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
BUF=${BUF:-.tools/node_modules/.bin/buf}

if [[ ! -f protos/buf.yaml ]]; then
  echo "lint.sh: run from the repository root (no protos/buf.yaml here)" >&2
  exit 2
fi
if ! command -v "$BUF" >/dev/null 2>&1; then
  echo "lint.sh: buf not found at BUF=$BUF (run \`make tools\`, or set BUF)" >&2
  exit 1
fi

# google/api and google/rpc imports, as the local module protos/.deps.
PYTHON=$PYTHON bash scripts/protos/deps.sh >/dev/null

"$BUF" lint protos
# Formatting of our files only (the vendored google protos are not ours to format).
"$BUF" format protos --path protos/haulmesh --diff --exit-code
echo "buf lint: OK ($(find protos/haulmesh -name '*.proto' | wc -l) files)"
