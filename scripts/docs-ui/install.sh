#!/usr/bin/env bash
# Install the /docs page's Swagger UI (services/gateway/rest/docs_ui.py) into <directory>/node_modules/swagger-ui-dist,
# exactly as package-lock.json beside this script pins it (versions and integrity hashes: `npm ci` refuses anything
# else). The one way it is installed: `make docs-ui` (into build/docs-ui) and the image's docs-ui stage (Dockerfile)
# both run this script, so the image serves the same files as a checkout. Network at build time only; the gateway
# serves the installed files offline.
#
# Usage: bash scripts/docs-ui/install.sh <directory>
# To move to another Swagger UI: change the version in package.json, then
#   (cd scripts/docs-ui && npm install --package-lock-only --ignore-scripts) and commit both files.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:?usage: bash scripts/docs-ui/install.sh <directory>}
command -v npm >/dev/null || { echo "npm is needed to install Swagger UI (the /docs page): apt-get install npm" >&2; exit 1; }

mkdir -p "$prefix"
cp "$here/package.json" "$here/package-lock.json" "$prefix/"
# --ignore-scripts: no package's install script runs (swagger-ui-dist's dependency @scarf/scarf has one that
# reports the install to its vendor); the page needs only the package's files.
npm ci --prefix "$prefix" --ignore-scripts --no-audit --no-fund --silent
# What the gateway serves must be there (docs_ui.py's _BUNDLE_FILES and the version it reads; without them /docs
# answers 503): fail the build, not the page.
for file in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png favicon-16x16.png package.json; do
  test -s "$prefix/node_modules/swagger-ui-dist/$file" || { echo "swagger-ui-dist is missing $file" >&2; exit 1; }
done
