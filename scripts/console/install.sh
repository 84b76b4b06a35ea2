#!/usr/bin/env bash
# Install the /console page's front-end assets into <directory>: MapLibre GL JS (the map: its ES module, its worker
# module and its stylesheet), Chart.js (the charts, its UMD build), axe-core (the page's accessibility checks), and
# <directory>/basemap/us-states.geojson, the US states as a GeoJSON FeatureCollection (each feature's `name`) built
# here from us-atlas' unprojected lon/lat TopoJSON (states-10m.json) with topojson-client. Exactly as
# package-lock.json beside this script pins them (versions and integrity hashes: `npm ci` refuses anything else).
# The one way they are installed: `make console-assets` (into build/console) and the image's console-assets stage
# (Dockerfile) both run this script, so the image serves the same files as a checkout. No CDN, no tile server: the
# network is needed at build time only, the gateway serves the installed files offline.
#
# Usage: bash scripts/console/install.sh <directory>
# To move to another version: change it in package.json, then
#   (cd scripts/console && npm install --package-lock-only --ignore-scripts) and commit both files; if a package
#   renames a served file, change the list at the end of this script and the gateway's alike.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=${1:?usage: bash scripts/console/install.sh <directory>}
command -v npm >/dev/null || { echo "npm is needed to install the console's assets (the /console page): apt-get install npm" >&2; exit 1; }

mkdir -p "$prefix"
cp "$here/package.json" "$here/package-lock.json" "$prefix/"
# --ignore-scripts: no package's install script runs; the page needs only the packages' files.
npm ci --prefix "$prefix" --ignore-scripts --no-audit --no-fund --silent
# The base map: us-atlas' `states` object (not `nation`; not the albers files, which are projected to screen
# coordinates) as GeoJSON in lon/lat, each feature with its FIPS id and its `name` property only.
mkdir -p "$prefix/basemap"
node -e '
const [modules, out] = process.argv.slice(1);
const {feature} = require(`${modules}/topojson-client`);
const topology = require(`${modules}/us-atlas/states-10m.json`);
const states = feature(topology, topology.objects.states);
if (states.type !== "FeatureCollection" || !states.features.length) throw new Error("us-atlas has no states");
states.features = states.features.map(({type, id, properties, geometry}) => {
  if (!properties || !properties.name) throw new Error(`us-atlas state ${id} has no name`);
  return {type, id, properties: {name: properties.name}, geometry};
});
require("fs").writeFileSync(out, JSON.stringify(states));
' "$(cd "$prefix/node_modules" && pwd)" "$prefix/basemap/us-states.geojson"
# What the gateway serves must be there (maplibre-gl.mjs loads its worker from maplibre-gl-worker.mjs beside it):
# fail the build, not the page.
for file in node_modules/maplibre-gl/dist/maplibre-gl.mjs node_modules/maplibre-gl/dist/maplibre-gl-worker.mjs \
    node_modules/maplibre-gl/dist/maplibre-gl.css node_modules/chart.js/dist/chart.umd.min.js \
    node_modules/axe-core/axe.min.js basemap/us-states.geojson; do
  test -s "$prefix/$file" || { echo "the console's assets are missing $file" >&2; exit 1; }
done
