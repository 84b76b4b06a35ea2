#!/usr/bin/env bash
# Install the tests' OpenID Connect provider (npm's oidc-provider, panva/node-oidc-provider) into
# <directory>/node_modules, exactly as package-lock.json beside this script pins it (versions and integrity hashes:
# `npm ci` refuses anything else). server.mjs beside this script runs it (node scripts/oidc-provider/server.mjs
# <config.json>, with NODE_PATH=<directory>/node_modules); tests/support/oidc starts it for the console's sign-in
# tests, and runs this script itself (into build/oidc-provider, under a lock) when it is not installed yet.
# Network at install time only; the tests start the provider offline.
#
# Usage: bash scripts/oidc-provider/install.sh <directory>
# To move to another oidc-provider: change the version in package.json (9.x needs Node.js 22: 9.0.0 dropped 20),
# then (cd scripts/oidc-provider && npm install --package-lock-only --ignore-scripts) and commit both files.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:?usage: bash scripts/oidc-provider/install.sh <directory>}
command -v npm >/dev/null || { echo "npm is needed to install the tests' OpenID provider: apt-get install npm" >&2; exit 1; }

mkdir -p "$prefix"
cp "$here/package.json" "$here/package-lock.json" "$prefix/"
# --ignore-scripts: no package's install script runs; the provider is plain JavaScript and needs none.
npm ci --prefix "$prefix" --ignore-scripts --no-audit --no-fund --silent
# What server.mjs imports must be there, at the pinned version: fail the install, not the first test.
want=$(node -p 'require(process.argv[1]).dependencies["oidc-provider"]' "$here/package.json")
manifest="$prefix/node_modules/oidc-provider/package.json"
test -s "$manifest" || { echo "oidc-provider is missing from $prefix/node_modules" >&2; exit 1; }
got=$(node -p 'require(process.argv[1]).version' "$(cd "$(dirname "$manifest")" && pwd)/package.json")
test "$got" = "$want" || { echo "oidc-provider $got installed, package.json pins $want" >&2; exit 1; }
