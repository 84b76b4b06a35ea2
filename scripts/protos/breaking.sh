#!/usr/bin/env bash
# Fails if a contract change breaks wire or proto-JSON compatibility (buf WIRE_JSON rules, protos/buf.yaml).
#
# What it compares: every contract that main has held since the baseline commit named in
# protos/BREAKING_BASELINE, each against the one before it, and the working tree against the last committed
# one. So the contract as it was at the previous landing on main is always among those compared, wherever in
# history that landing was, and a break made in one commit and built on in the next is still caught. A clean
# clone has the history this needs (a shallow one does not: the script says so).
#
# Usage (from the repository root): scripts/protos/breaking.sh
# Variables: BREAKING_AGAINST_REF: compare the working tree against this one revision only (e.g. a release
#            tag) instead of the chain; PYTHON (default .venv/bin/python); BUF (default
#            .tools/node_modules/.bin/buf).
# Each revision's protos/ is extracted with `git archive` and given the same local google/api and google/rpc
# module as the working tree, so the check runs offline. The working tree's buf.yaml (its rules and module
# layout) applies to both sides of every comparison.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
BUF=${BUF:-.tools/node_modules/.bin/buf}
BASELINE_FILE=protos/BREAKING_BASELINE

if [[ ! -f protos/buf.yaml ]]; then
  echo "breaking.sh: run from the repository root (no protos/buf.yaml here)" >&2
  exit 2
fi
if ! command -v "$BUF" >/dev/null 2>&1; then
  echo "breaking.sh: buf not found at BUF=$BUF (run \`make tools\`, or set BUF)" >&2
  exit 1
fi
if [[ $BUF == */* ]]; then
  BUF=$(cd "$(dirname "$BUF")" && pwd)/$(basename "$BUF")
fi
root=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/haulmesh-breaking.XXXXXX")
trap 'rm -rf "$work"' EXIT
PYTHON=$PYTHON bash scripts/protos/deps.sh >/dev/null

# The protos/ of a revision, extracted once, with the vendored google protos beside it.
tree_of() {
  local rev=$1 dir="$work/$1"
  if [[ ! -d $dir ]]; then
    mkdir -p "$dir"
    git archive "$rev" protos | tar -x -C "$dir"
    PYTHON=$PYTHON bash scripts/protos/deps.sh --into "$dir/protos/.deps" >/dev/null
  fi
  echo "$dir/protos"
}

# buf breaking: the input tree ($1, a protos/ directory) against the older one ($2); $3 names the step.
compare() {
  local input=$1 against=$2 label=$3
  # Inside the input tree: --config module paths are relative to the working directory.
  if ! (cd "$input" && "$BUF" breaking . --config "$root/protos/buf.yaml" \
          --against "$against" --against-config "$root/protos/buf.yaml"); then
    echo "buf breaking: FAILED: $label" >&2
    echo "  A landed contract is what clients are built against: add (new fields, new numbers, new RPCs)," >&2
    echo "  deprecate instead of removing, or cut a new version (haulmesh.<area>.v2). See docs/decisions.md." >&2
    exit 1
  fi
}

if ! git rev-parse --verify --quiet HEAD >/dev/null; then
  echo "buf breaking: nothing to compare against (no commit yet); skipped"
  exit 0
fi

if [[ -n ${BREAKING_AGAINST_REF:-} ]]; then
  commit=$(git rev-parse --verify --quiet "$BREAKING_AGAINST_REF^{commit}") || {
    echo "breaking.sh: BREAKING_AGAINST_REF=$BREAKING_AGAINST_REF is not a commit" >&2; exit 2; }
  compare "$root/protos" "$(tree_of "$commit")" "the working tree against $BREAKING_AGAINST_REF"
  echo "buf breaking: OK against $BREAKING_AGAINST_REF ($(git rev-parse --short "$commit"))"
  exit 0
fi

baseline=$(grep -Ev '^\s*(#|$)' "$BASELINE_FILE" | head -1 | tr -d '[:space:]')
if ! git cat-file -e "$baseline^{commit}" 2>/dev/null && [[ $(git rev-parse --is-shallow-repository) == true ]]; then
  git fetch --quiet --unshallow 2>/dev/null || true
  if ! git cat-file -e "$baseline^{commit}" 2>/dev/null; then
    # A shallow clone that cannot be deepened: check what history there is, and say so.
    baseline=$(git rev-list --max-parents=0 HEAD | tail -1)
    echo "breaking.sh: WARNING: the baseline of $BASELINE_FILE is beyond this shallow clone's history;" \
         "checking from its oldest commit ($(git rev-parse --short "$baseline")) instead" >&2
  fi
fi
if ! git cat-file -e "$baseline^{commit}" 2>/dev/null; then
  echo "breaking.sh: $BASELINE_FILE names $baseline, which is not a commit of this repository" >&2
  exit 2
fi
if ! git merge-base --is-ancestor "$baseline" HEAD; then
  echo "breaking.sh: the baseline $baseline ($BASELINE_FILE) is not an ancestor of HEAD" >&2
  exit 2
fi

# Every committed contract since the baseline, oldest first; a commit that leaves protos/ as the one before
# (a revert, a buf.yaml-free merge) is no new contract.
previous=$baseline
previous_tree=$(git rev-parse "$baseline:protos")
checked=0
while read -r commit; do
  [[ -z $commit ]] && continue
  tree=$(git rev-parse "$commit:protos" 2>/dev/null || echo none)
  [[ $tree == "$previous_tree" ]] && continue
  compare "$(tree_of "$commit")" "$(tree_of "$previous")" \
    "$(git log -1 --format='%h %s' "$commit" | cut -c1-80) against $(git rev-parse --short "$previous")"
  previous=$commit previous_tree=$tree checked=$((checked + 1))
done < <(git rev-list --first-parent --reverse "$baseline..HEAD" -- protos)

# The working tree (committed or not) against the last committed contract.
if [[ -n $(git status --porcelain --untracked-files=all -- protos ':!protos/.deps') ]]; then
  compare "$root/protos" "$(tree_of "$previous")" "the working tree against $(git rev-parse --short "$previous")"
  checked=$((checked + 1))
fi
echo "buf breaking: OK: $checked contract change(s) since the baseline $(git rev-parse --short "$baseline")," \
     "each against the contract before it (the last committed: $(git rev-parse --short "$previous"))"
