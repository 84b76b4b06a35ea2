// The fleet map: the shipped US outlines (or HAULMESH_CONSOLE_TILE_URL's tiles), every mission's planned route and
// stop geofences, each truck's last fix, moved as its frames arrive (one Server-Sent Events stream for the whole
// fleet: GET /api/v1/vehicles:watchTelemetry), each lane's connectivity as the share of its trucks heard from in the
// last minute, and a heat layer of dead zones: where fixes were taken out of coverage (received over 30 s after they
// were taken: replayed from the truck's spool) and where a truck's fixes stop for over 30 s (a silent stretch).
// MapLibre draws layers, not DOM markers, so thousands of trucks stay cheap; every fact is repeated in the table
// under the map (a canvas is invisible to a screen reader), and state is a label as well as a colour.

import * as maplibregl from "/console/vendor/maplibre-gl.mjs";
import { ACTIVE_STATES as ACTIVE, api, announce, el, idOf, missions } from "/console/assets/console.js";

const STALE_MS = 60_000;
const UPDATE_MS = 500;
// The fleet stream: every truck on the carrier's missions, positions only (one of the carrier's 16 streams).
const FLEET_STREAM = "/api/v1/vehicles:watchTelemetry?kinds=KIND_POSITION";
const REOPEN_MS = 5_000;
// Recent fixes of a mission first seen on this page (its trail before the stream), a few missions at a time.
const BACKFILL_MINUTES = 10;
const BACKFILL_CONCURRENCY = 4;
// Dead zones: a fix received this much after it was taken was replayed from the spool; fixes this far apart in
// device time bracket a silent stretch. The newest MAX_DEAD_ZONES places are kept; a place weighs its delay or
// gap, full weight at DEAD_ZONE_FULL_S.
const LATE_MS = 30_000;
const GAP_MS = 30_000;
const MAX_DEAD_ZONES = 2_000;
const DEAD_ZONE_FULL_S = 300;

const trucks = new Map(); // vehicle id → { lon, lat, state, mission, missionState, at, atMs, speed, heard }
const byMission = new Map(); // mission id → the mission (from the missions list)
const backfilled = new Set(); // mission ids whose recent frames were asked for
const deadZones = []; // { lon, lat, kind: "replayed" | "silent", seconds, mission, vehicle, key }, oldest first
const deadKeys = new Set();
let map;
let dirty = false;
let fleetSource = null;

function emptyCollection() {
  return { type: "FeatureCollection", features: [] };
}

function style(tileUrl) {
  const sources = { states: { type: "geojson", data: "/console/vendor/us-states.geojson" } };
  const layers = [{ id: "background", type: "background", paint: { "background-color": "#dfe9f3" } }];
  if (tileUrl) {
    sources.tiles = { type: "raster", tiles: [tileUrl], tileSize: 256 };
    layers.push({ id: "tiles", type: "raster", source: "tiles" });
  }
  layers.push(
    { id: "states-fill", type: "fill", source: "states", paint: { "fill-color": "#f7f7f2", "fill-opacity": tileUrl ? 0 : 1 } },
    { id: "states-line", type: "line", source: "states", paint: { "line-color": "#8a8f98", "line-width": 0.8 } });
  return { version: 8, sources, layers };
}

export function positionOf(frame) {
  const f = frame?.telemetryFrame || frame;
  const p = f?.payload?.position;
  if (!p || (p.lat === 0 && p.lon === 0)) return null;
  const atMs = Date.parse(f.payload.deviceTime);
  const receivedMs = Date.parse(f.receiveTime);
  return { lat: p.lat, lon: p.lon, speed: p.speedKph || 0, at: f.payload.deviceTime, atMs,
    lateMs: Number.isFinite(receivedMs) && Number.isFinite(atMs) ? receivedMs - atMs : 0,
    vehicle: f.payload.vehicleId, sequence: f.signedFrame?.sequence || f.payload.sequence || "",
    // A frame of a mission read is named missions/{mission}/telemetryFrames/{sequence}.
    mission: f.payload.missionId || ((f.name || "").startsWith("missions/") ? f.name.split("/")[1] : ""),
    state: f.payload.vehicleState || "" };
}

function deadZone(entry) {
  if (deadKeys.has(entry.key)) return;
  deadKeys.add(entry.key);
  deadZones.push(entry);
  while (deadZones.length > MAX_DEAD_ZONES) deadKeys.delete(deadZones.shift().key);
}

export function place(missionId, vehicle, fix) {
  if (!fix || !vehicle) return;
  const previous = trucks.get(vehicle);
  if (fix.lateMs > LATE_MS) {
    deadZone({ lon: fix.lon, lat: fix.lat, kind: "replayed", seconds: fix.lateMs / 1000, mission: missionId, vehicle,
      key: `${vehicle}:${fix.sequence}:replayed` });
  }
  if (previous && Number.isFinite(previous.atMs) && fix.atMs < previous.atMs) return; // older than what is shown
  if (previous && fix.atMs - previous.atMs > GAP_MS && previous.mission === missionId) {
    // Nothing was taken between the two fixes: the truck was silent somewhere between them.
    deadZone({ lon: (previous.lon + fix.lon) / 2, lat: (previous.lat + fix.lat) / 2, kind: "silent",
      seconds: (fix.atMs - previous.atMs) / 1000, mission: missionId, vehicle, key: `${vehicle}:${fix.sequence}:silent` });
  }
  trucks.set(vehicle, { ...fix, mission: missionId, missionState: byMission.get(missionId)?.state || previous?.missionState,
    heard: Date.now() });
  dirty = true;
}

function openFleetStream() {
  // One stream for the whole fleet, whatever its size (the service follows the carrier's missions as they start
  // and end). The browser reconnects by itself after a network error; a refusal (429, 401) closes the source for
  // good, so it is opened again a little later.
  const source = new EventSource(FLEET_STREAM);
  source.addEventListener("telemetryFrame", (event) => {
    const fix = positionOf(JSON.parse(event.data));
    if (fix) place(fix.mission, fix.vehicle, fix);
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED || fleetSource !== source) return;
    fleetSource = null;
    setTimeout(() => { if (!fleetSource) fleetSource = openFleetStream(); }, REOPEN_MS);
  });
  return source;
}

async function backfill(list) {
  // A mission first seen on this page: its recent fixes (where its truck is, and the dead zones it met lately).
  const due = list.filter((m) => ACTIVE.has(m.state) && m.vehicle && !backfilled.has(idOf(m.name)));
  for (const m of due) backfilled.add(idOf(m.name));
  const since = new Date(Date.now() - BACKFILL_MINUTES * 60e3).toISOString();
  async function one(m) {
    const id = idOf(m.name);
    const { telemetryFrames: frames = [] } = await api(`missions/${id}/telemetryFrames?pageSize=200&kinds=KIND_POSITION&startTime=${encodeURIComponent(since)}`);
    for (const frame of frames) place(id, idOf(m.vehicle), positionOf(frame));
  }
  const queue = [...due];
  await Promise.all(Array.from({ length: Math.min(BACKFILL_CONCURRENCY, queue.length) }, async () => {
    while (queue.length) {
      const m = queue.shift();
      try {
        await one(m);
      } catch (error) {
        backfilled.delete(idOf(m.name)); // asked again at the next poll
        announce(`Fleet map: ${error.message}`);
      }
    }
  }));
}

function routeFeatures(list) {
  const routes = [];
  const stops = [];
  for (const m of list) {
    const line = (m.plannedRoute || []).map((p) => [p.lon, p.lat]);
    if (line.length > 1) routes.push({ type: "Feature", properties: { mission: idOf(m.name), state: m.state }, geometry: { type: "LineString", coordinates: line } });
    for (const s of m.stops || []) {
      const c = s.geofence?.circle?.center || s.location;
      if (c) stops.push({ type: "Feature", properties: { mission: idOf(m.name), type: s.type, radius: s.geofence?.circle?.radiusMeters || 500 },
        geometry: { type: "Point", coordinates: [c.lon, c.lat] } });
      const vertices = s.geofence?.polygon?.vertices;
      if (vertices?.length > 2) {
        stops.push({ type: "Feature", properties: { mission: idOf(m.name), type: s.type },
          geometry: { type: "Polygon", coordinates: [[...vertices, vertices[0]].map((v) => [v.lon, v.lat])] } });
      }
    }
  }
  return { routes: { type: "FeatureCollection", features: routes }, stops: { type: "FeatureCollection", features: stops } };
}

function laneOf(m) {
  return m ? `${m.lane?.originRegion} → ${m.lane?.destinationRegion}` : "lane unknown";
}

function laneCoverage(list) {
  // A lane's connectivity: of its active missions' trucks, the share heard from within STALE_MS.
  const lanes = new Map();
  for (const m of list.filter((x) => ACTIVE.has(x.state))) {
    const key = laneOf(m);
    const truck = trucks.get(idOf(m.vehicle));
    const entry = lanes.get(key) || { total: 0, heard: 0, line: (m.plannedRoute || []).map((p) => [p.lon, p.lat]) };
    entry.total += 1;
    if (truck && Date.now() - truck.heard < STALE_MS) entry.heard += 1;
    lanes.set(key, entry);
  }
  return lanes;
}

function draw(list) {
  const features = [...trucks.entries()].map(([vehicle, t]) => ({
    type: "Feature", properties: { vehicle, mission: t.mission, state: t.missionState, stale: Date.now() - t.heard > STALE_MS },
    geometry: { type: "Point", coordinates: [t.lon, t.lat] } }));
  map.getSource("trucks")?.setData({ type: "FeatureCollection", features });
  const { routes, stops } = routeFeatures(list);
  map.getSource("routes")?.setData(routes);
  map.getSource("stops")?.setData(stops);
  const coverage = laneCoverage(list);
  map.getSource("coverage")?.setData({ type: "FeatureCollection", features: [...coverage.entries()]
    .filter(([, c]) => c.line.length > 1)
    .map(([lane, c]) => ({ type: "Feature", properties: { lane, coverage: c.total ? c.heard / c.total : 0 },
      geometry: { type: "LineString", coordinates: c.line } })) });
  map.getSource("deadzones")?.setData({ type: "FeatureCollection", features: deadZones.map((d) => ({
    type: "Feature", properties: { kind: d.kind, weight: Math.min(1, d.seconds / DEAD_ZONE_FULL_S) },
    geometry: { type: "Point", coordinates: [d.lon, d.lat] } })) });
  window.fleetMapTrucks = features.length;
  window.fleetMapDeadZones = deadZones.length;
}

function deadZonesPerLane() {
  // The heat layer's facts in words: per lane, fixes replayed from the spool and silent stretches.
  const lanes = new Map();
  for (const d of deadZones) {
    const lane = laneOf(byMission.get(d.mission));
    const entry = lanes.get(lane) || { replayed: 0, latest: 0, silent: 0, longest: 0, trucks: new Set() };
    if (d.kind === "replayed") {
      entry.replayed += 1;
      entry.latest = Math.max(entry.latest, d.seconds);
    } else {
      entry.silent += 1;
      entry.longest = Math.max(entry.longest, d.seconds);
    }
    entry.trucks.add(d.vehicle);
    lanes.set(lane, entry);
  }
  return lanes;
}

function duration(seconds) {
  return seconds >= 90 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
}

function tableOf(section, list) {
  const rows = [...trucks.entries()].map(([vehicle, t]) => el("tr", { "data-vehicle": vehicle },
    el("td", {}, vehicle), el("td", {}, t.mission), el("td", {}, (t.missionState || "").replace("STATE_", "").toLowerCase()),
    el("td", { "data-field": "truck-state" }, (t.state || "").replaceAll("_", " ")),
    el("td", {}, `${t.lat.toFixed(4)}, ${t.lon.toFixed(4)}`), el("td", {}, `${Math.round(t.speed)} km/h`),
    el("td", {}, Date.now() - t.heard > STALE_MS ? "not heard for a minute" : "live")));
  const lanes = [...laneCoverage(list).entries()].map(([lane, c]) => el("tr", { "data-lane": lane },
    el("td", {}, lane), el("td", {}, `${c.heard} of ${c.total} trucks heard in the last minute`)));
  const trucksTable = rows.length ? el("table", { class: "trucks" }, el("caption", {}, "Trucks on the map"),
    el("thead", {}, el("tr", {}, ["Truck", "Mission", "Mission state", "Truck state", "Position", "Speed", "Link"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows)) : el("p", { class: "empty" }, "No truck has reported a position yet.");
  const lanesTable = lanes.length ? el("table", { class: "lanes" }, el("caption", {}, "Connectivity per lane"),
    el("thead", {}, el("tr", {}, [el("th", { scope: "col" }, "Lane"), el("th", { scope: "col" }, "Coverage")])),
    el("tbody", {}, lanes)) : "";
  const dead = [...deadZonesPerLane().entries()].map(([lane, d]) => el("tr", { "data-dead-zone-lane": lane },
    el("td", {}, lane),
    el("td", {}, d.replayed ? `${d.replayed} fixes replayed from spool (up to ${duration(d.latest)} late)` : "none"),
    el("td", {}, d.silent ? `${d.silent} silent stretches (longest ${duration(d.longest)})` : "none"),
    el("td", {}, String(d.trucks.size))));
  const deadTable = dead.length ? el("table", { class: "dead-zones" },
    el("caption", {}, `Dead zones (heat layer): the last ${deadZones.length} places out of coverage`),
    el("thead", {}, el("tr", {}, ["Lane", "Fixes taken out of coverage", "Fixes missing", "Trucks"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, dead)) : el("p", { class: "empty dead-zones" }, "Dead zones: none seen (no fix replayed from a spool, no silent stretch).");
  section.querySelector(".map-facts").replaceChildren(trucksTable, lanesTable, deadTable);
}

export async function fleetMap(section) {
  const target = section.querySelector(".region-body");
  target.replaceChildren(el("div", { class: "map", id: "fleet-map-canvas" }), el("div", { class: "map-facts" }));
  map = new maplibregl.Map({ container: "fleet-map-canvas", style: style(document.body.dataset.tileUrl),
    center: [-91, 32], zoom: 4, attributionControl: false });
  window.map = map;
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  await new Promise((resolve) => map.on("load", resolve));
  for (const id of ["trucks", "routes", "stops", "coverage", "deadzones"]) map.addSource(id, { type: "geojson", data: emptyCollection() });
  map.addLayer({ id: "coverage", type: "line", source: "coverage", paint: { "line-width": 10, "line-opacity": 0.35,
    "line-color": ["interpolate", ["linear"], ["get", "coverage"], 0, "#c0392b", 0.5, "#f39c12", 1, "#27ae60"] } });
  map.addLayer({ id: "deadzones", type: "heatmap", source: "deadzones", maxzoom: 12, paint: {
    // One place must show (weight at least 0.5); many, or long delays and gaps, go from purple to red.
    "heatmap-weight": ["interpolate", ["linear"], ["get", "weight"], 0, 0.5, 1, 1],
    "heatmap-intensity": ["interpolate", ["linear"], ["zoom"], 3, 1, 10, 3],
    "heatmap-radius": ["interpolate", ["linear"], ["zoom"], 3, 16, 10, 40],
    "heatmap-opacity": 0.75,
    "heatmap-color": ["interpolate", ["linear"], ["heatmap-density"], 0, "rgba(142,68,173,0)", 0.1, "rgba(142,68,173,0.6)",
      0.4, "#9b59b6", 0.7, "#e67e22", 1, "#c0392b"] } });
  map.addLayer({ id: "routes", type: "line", source: "routes", paint: { "line-color": "#2c3e50", "line-width": 2, "line-dasharray": [2, 1] } });
  map.addLayer({ id: "stops", type: "circle", source: "stops", filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-radius": 6, "circle-color": "rgba(41,128,185,0.25)", "circle-stroke-color": "#2980b9", "circle-stroke-width": 1 } });
  map.addLayer({ id: "stop-areas", type: "fill", source: "stops", filter: ["==", ["geometry-type"], "Polygon"],
    paint: { "fill-color": "rgba(41,128,185,0.25)", "fill-outline-color": "#2980b9" } });
  map.addLayer({ id: "trucks", type: "circle", source: "trucks", paint: { "circle-radius": 7, "circle-stroke-width": 2,
    "circle-stroke-color": "#ffffff", "circle-color": ["case", ["get", "stale"], "#7f8c8d", ["==", ["get", "state"], "STATE_EXCEPTION"], "#c0392b", "#1e6fd9"] } });
  map.on("click", "trucks", (event) => {
    const f = event.features?.[0];
    if (f) window.location.assign(`/console/missions/${f.properties.mission}`);
  });
  section.dataset.loaded = "true";

  let list = [];
  async function poll() {
    try {
      list = await missions();
      byMission.clear();
      for (const m of list) byMission.set(idOf(m.name), m);
      for (const t of trucks.values()) t.missionState = byMission.get(t.mission)?.state || t.missionState;
      backfill(list).then(() => { dirty = true; });
      dirty = true;
    } catch (error) {
      announce(`Fleet map: ${error.message}`);
    }
  }
  if (!fleetSource) fleetSource = openFleetStream();
  await poll();
  setInterval(poll, 3000);
  setInterval(() => {
    if (!dirty) return;
    dirty = false;
    draw(list);
    tableOf(section, list);
  }, UPDATE_MS);
}
