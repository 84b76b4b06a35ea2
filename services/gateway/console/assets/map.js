// The fleet map: the shipped US outlines (or HAULMESH_CONSOLE_TILE_URL's tiles), every mission's planned route and
// stop geofences, each truck's last fix, moved as its frames arrive (Server-Sent Events), and each lane's
// connectivity as the share of its trucks heard from in the last minute. MapLibre draws layers, not DOM markers, so
// thousands of trucks stay cheap; every fact is repeated in the table under the map (a canvas is invisible to a
// screen reader), and state is a label as well as a colour.

import * as maplibregl from "/console/vendor/maplibre-gl.mjs";
import { api, announce, el, idOf, missions } from "/console/assets/console.js";

const ACTIVE = new Set(["STATE_DISPATCHED", "STATE_PRE_TRIP", "STATE_ENROUTE", "STATE_EXCEPTION", "STATE_ARRIVED"]);
// At most this many live streams per page (the gateway allows 16 per carrier, other pages need some).
const MAX_STREAMS = 8;
const STALE_MS = 60_000;
const UPDATE_MS = 500;

const trucks = new Map(); // vehicle id → { lon, lat, state, mission, at, speed }
const streams = new Map(); // mission id → EventSource
let map;
let dirty = false;

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

function positionOf(frame) {
  const f = frame?.telemetryFrame || frame;
  const p = f?.payload?.position;
  if (!p || (p.lat === 0 && p.lon === 0)) return null;
  return { lat: p.lat, lon: p.lon, speed: p.speedKph || 0, at: f.payload.deviceTime, vehicle: f.payload.vehicleId,
    state: f.payload.vehicleState || "" };
}

function place(missionId, vehicle, fix, missionState) {
  if (!fix) return;
  trucks.set(vehicle, { ...fix, mission: missionId, missionState, heard: Date.now() });
  dirty = true;
}

function follow(mission) {
  const id = idOf(mission.name);
  if (streams.has(id) || streams.size >= MAX_STREAMS) return;
  const source = new EventSource(`/api/v1/missions/${id}:watchTelemetry`);
  source.addEventListener("telemetryFrame", (event) => {
    place(id, idOf(mission.vehicle), positionOf(JSON.parse(event.data)), mission.state);
  });
  source.addEventListener("error", () => {
    // The browser reconnects by itself (with Last-Event-ID); a finished mission's stream is closed for good.
    if (source.readyState === EventSource.CLOSED) streams.delete(id);
  });
  streams.set(id, source);
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

function laneCoverage(list) {
  // A lane's connectivity: of its active missions' trucks, the share heard from within STALE_MS.
  const lanes = new Map();
  for (const m of list.filter((x) => ACTIVE.has(x.state))) {
    const key = `${m.lane?.originRegion} → ${m.lane?.destinationRegion}`;
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
  window.fleetMapTrucks = features.length;
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
  section.querySelector(".map-facts").replaceChildren(trucksTable, lanesTable);
}

export async function fleetMap(section) {
  const target = section.querySelector(".region-body");
  target.replaceChildren(el("div", { class: "map", id: "fleet-map-canvas" }), el("div", { class: "map-facts" }));
  map = new maplibregl.Map({ container: "fleet-map-canvas", style: style(document.body.dataset.tileUrl),
    center: [-91, 32], zoom: 4, attributionControl: false });
  window.map = map;
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  await new Promise((resolve) => map.on("load", resolve));
  for (const id of ["trucks", "routes", "stops", "coverage"]) map.addSource(id, { type: "geojson", data: emptyCollection() });
  map.addLayer({ id: "coverage", type: "line", source: "coverage", paint: { "line-width": 10, "line-opacity": 0.35,
    "line-color": ["interpolate", ["linear"], ["get", "coverage"], 0, "#c0392b", 0.5, "#f39c12", 1, "#27ae60"] } });
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
      const active = new Set(list.filter((x) => ACTIVE.has(x.state)).map((x) => idOf(x.name)));
      for (const [id, source] of streams) { // a finished mission's slot goes to the next one
        if (!active.has(id)) {
          source.close();
          streams.delete(id);
        }
      }
      for (const m of list.filter((x) => ACTIVE.has(x.state))) {
        if (!trucks.has(idOf(m.vehicle))) {
          const since = new Date(Date.now() - 10 * 60e3).toISOString();
          const { telemetryFrames: frames = [] } = await api(`missions/${idOf(m.name)}/telemetryFrames?pageSize=200&kinds=KIND_POSITION&startTime=${encodeURIComponent(since)}`);
          for (const frame of frames) place(idOf(m.name), idOf(m.vehicle), positionOf(frame), m.state);
        } else {
          trucks.get(idOf(m.vehicle)).missionState = m.state;
        }
        follow(m);
      }
      dirty = true;
    } catch (error) {
      announce(`Fleet map: ${error.message}`);
    }
  }
  await poll();
  setInterval(poll, 3000);
  setInterval(() => {
    if (!dirty) return;
    dirty = false;
    draw(list);
    tableOf(section, list);
  }, UPDATE_MS);
}
