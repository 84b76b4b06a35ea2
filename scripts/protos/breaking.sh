#!/usr/bin/env bash
# Fails if the working-tree contracts (protos/) break wire or proto-JSON compatibility (buf WIRE_JSON
# rules, configured in protos/buf.yaml) with the last committed contract.
#
# Usage (from the repository root): scripts/protos/breaking.sh
# Variables: BREAKING_AGAINST_REF (default HEAD): the git revision to compare against (e.g. origin/main
#            in CI); PYTHON (default .venv/bin/python); BUF (default .tools/node_modules/.bin/buf).
# The revision's protos/ is extracted with `git archive` into a temporary directory and given the same
# local google/api and google/rpc module as the working tree, so the check runs offline. If the
# revision has no protos/ yet (the first contract), there is nothing to compare against: exit 0.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
BUF=${BUF:-.tools/node_modules/.bin/buf}
REF=${BREAKING_AGAINST_REF:-HEAD}

if [[ ! -f protos/buf.yaml ]]; then
  echo "breaking.sh: run from the repository root (no protos/buf.yaml here)" >&2
  exit 2
fi
if ! command -v "$BUF" >/dev/null 2>&1; then
  echo "breaking.sh: buf not found at BUF=$BUF (run \`make tools\`, or set BUF)" >&2
  exit 1
fi

if ! commit=$(git rev-parse --verify --quiet "$REF^{commit}"); then
  if [[ $REF == HEAD ]]; then
    echo "buf breaking: nothing to compare against (no commit yet); skipped"
    exit 0
  fi
  echo "breaking.sh: BREAKING_AGAINST_REF=$REF is not a commit" >&2
  exit 2
fi
if [[ -z $(git ls-tree -r --name-only "$commit" -- protos/ | grep '\.proto$' || true) ]]; then
  echo "buf breaking: nothing to compare against ($REF has no protos/ yet); skipped"
  exit 0
fi

against=$(mktemp -d "${TMPDIR:-/tmp}/haulmesh-breaking.XXXXXX")
trap 'rm -rf "$against"' EXIT
git archive "$commit" protos | tar -x -C "$against"

# The same vendored google protos on both sides: the working tree's (build/proto-deps via protos/.deps)
# and a copy inside the extracted tree (module paths must lie inside the workspace directory).
PYTHON=$PYTHON bash scripts/protos/deps.sh >/dev/null
PYTHON=$PYTHON bash scripts/protos/deps.sh --into "$against/protos/.deps" >/dev/null

# Run inside protos/: `--config` module paths are relative to the working directory. --config: the
# working tree's buf.yaml (its WIRE_JSON rules and module layout) for the input; --against-config: the
# same layout for the extracted revision, so a revision whose buf.yaml predates a layout change still
# builds.
if [[ $BUF == */* ]]; then
  BUF=$(cd "$(dirname "$BUF")" && pwd)/$(basename "$BUF")
fi
(cd protos && "$BUF" breaking . --config buf.yaml --against "$against/protos" --against-config buf.yaml)
echo "buf breaking: OK against $REF ($(git rev-parse --short "$commit"))"
