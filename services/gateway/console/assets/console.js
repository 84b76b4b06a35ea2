// The console's one script: each <section data-region> of the page is drawn from the REST API (with the session
// cookie; changes carry X-Haulmesh-Console: 1) and kept fresh, live frames by Server-Sent Events, the rest by
// polling every few seconds. Every fact shown on the map is also in a table; state is never shown by colour alone.

const body = document.body;
const scopes = new Set((body.dataset.scopes || "").split(" ").filter(Boolean));
const REFRESH_MS = 3000;

export async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
  if (init.method && init.method !== "GET") {
    init.headers = { ...init.headers, "Content-Type": "application/json", "X-Haulmesh-Console": "1" };
  }
  const answer = await fetch(`/api/v1/${path}`, init);
  if (answer.status === 401) {
    window.location.assign(`/console/login?return_to=${encodeURIComponent(window.location.pathname)}`);
    throw new Error("signed out");
  }
  const data = answer.headers.get("content-type")?.includes("json") ? await answer.json() : {};
  if (!answer.ok) {
    throw new Error(data?.error?.message || data?.message || `HTTP ${answer.status}`);
  }
  return data;
}

export function announce(text) {
  const live = document.getElementById("announcer");
  if (live) live.textContent = text;
}

// A fact that needs someone now (a new exception, an overdue check-in): shown at the top of every page until
// dismissed, the newest five kept.
const MAX_ALERTS = 5;
export function raiseAlert(text) {
  const list = document.getElementById("alerts");
  if (!list) return;
  const item = el("li", { "data-alert": "" }, el("span", {}, `${new Date().toLocaleTimeString()} · ${text}`),
    el("button", { type: "button", onclick: () => item.remove() }, "Dismiss"));
  list.prepend(item);
  while (list.children.length > MAX_ALERTS) list.lastElementChild.remove();
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

export const idOf = (name) => (name || "").split("/").pop();
const label = (value) => (value || "").replace(/^(STATE|KIND|SEVERITY|CONTINGENCY|FACTOR|POINT|OUTCOME|TYPE)_/, "").replaceAll("_", " ").toLowerCase();
const when = (ts) => (ts ? new Date(ts).toLocaleString() : "");
const money = (m) => (m ? `${m.currencyCode} ${(Number(m.amountMinor || 0) / 100).toLocaleString(undefined, { minimumFractionDigits: 2 })}` : "");

function table(caption, headings, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el("table", {},
    el("caption", { class: "visually-hidden" }, caption),
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function fill(section, ...content) {
  const target = section.querySelector(".region-body");
  target.replaceChildren(...content);
  section.dataset.loaded = "true";
}

function failed(section, error) {
  fill(section, el("p", { class: "problem", role: "alert" }, `Could not load: ${error.message}`));
}

const full = (section) => !section.closest(".overview");

// --- tender board -------------------------------------------------------------------------------------------

async function tenderBoard(section) {
  const { tenders = [] } = await api(`tenders?pageSize=${full(section) ? 100 : 20}`);
  const rows = tenders.map((t) => {
    const id = idOf(t.name);
    const risk = (t.offer?.riskReasons || []).map((r) => `${label(r.factor)} (+${r.contribution})`).join(", ");
    const actions = el("td", {});
    if (t.state === "STATE_OFFERED" && scopes.has("tender:respond")) {
      for (const [verb, text] of [["accept", "Accept"], ["decline", "Decline"]]) {
        actions.append(el("button", {
          type: "button", "data-action": verb, "data-tender": id,
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              const body = verb === "accept" ? { etag: t.etag } : { etag: t.etag, reason: "REASON_OTHER", comment: "declined in the console" };
              const answer = await api(`tenders/${id}:${verb}`, { method: "POST", body: JSON.stringify(body) });
              announce(`Tender ${t.tmsLoadId || id} ${label(answer.state)}`);
            } catch (error) {
              announce(`Tender ${t.tmsLoadId || id}: ${error.message}`);
              event.target.disabled = false;
            }
            refresh(section);
          },
        }, text));
      }
    }
    return el("tr", { "data-tender": id, "data-state": t.state },
      el("td", {}, t.tmsLoadId || id),
      el("td", {}, el("span", { class: `state ${label(t.state).replaceAll(" ", "-")}` }, label(t.state))),
      el("td", {}, `${t.lane?.originRegion || ""} → ${t.lane?.destinationRegion || ""}`),
      el("td", {}, money(t.offer?.price)),
      el("td", {}, t.offer ? `${t.offer.riskScore}${risk ? `: ${risk}` : ""}` : (t.stateReason || "")),
      actions);
  });
  const headings = ["Load", "State", "Lane", "Price", "Risk", ""];
  if (!full(section)) {
    fill(section, table("Tenders", headings, rows, "No tenders yet."));
    return;
  }
  // The board: one column of work per state, those waiting for an answer first.
  const groups = TENDER_STATES.map((state) => [state, rows.filter((r) => r.dataset.state === state)]).filter(([, r]) => r.length);
  fill(section, ...(groups.length ? groups.flatMap(([state, r]) => [
    el("h3", { "data-group": state }, `${label(state)} (${r.length})`), table(`Tenders ${label(state)}`, headings, r, "")])
    : [el("p", { class: "empty" }, "No tenders yet.")]));
}
const TENDER_STATES = ["STATE_OFFERED", "STATE_PENDING", "STATE_ACCEPTED", "STATE_DISPATCH_FAILED", "STATE_DECLINED",
  "STATE_REJECTED", "STATE_LAPSED", "STATE_CANCELLED", "STATE_UNSPECIFIED"];

// --- missions and exceptions --------------------------------------------------------------------------------

let missionsCache = { at: 0, missions: [] };
export async function missions() {
  if (Date.now() - missionsCache.at > 1000) {
    const { missions: list = [] } = await api("missions?pageSize=100");
    missionsCache = { at: Date.now(), missions: list };
  }
  return missionsCache.missions;
}

async function missionList(section) {
  const list = await missions();
  const rows = list.slice(0, full(section) ? 100 : 10).map((m) => el("tr", { "data-mission": idOf(m.name), "data-state": m.state },
    el("td", {}, el("a", { href: `/console/missions/${idOf(m.name)}` }, m.load?.tmsLoadId || idOf(m.name))),
    el("td", {}, label(m.state)),
    el("td", {}, idOf(m.vehicle)),
    el("td", {}, `${m.lane?.originRegion || ""} → ${m.lane?.destinationRegion || ""}`),
    el("td", {}, when(m.estimatedArriveTime)),
    el("td", {}, String((m.exceptions || []).filter((e) => !e.resolveTime).length))));
  fill(section, table("Missions", ["Load", "State", "Truck", "Lane", "ETA", "Open exceptions"], rows, "No missions yet."));
}

// --- rescue actions: each confirmed in a second step, followed until the truck answers -------------------------
// The queue is redrawn every few seconds: what a person has begun (an armed button, a form and its text) lives in
// these maps, not in the DOM, so a redraw never drops it.

const commands = new Map(); // "<vehicle>/<action>" → the VehicleCommand as last read
const armed = new Map(); // button key → when its confirmation lapses (ms)
const drafts = new Map(); // form field key → the text typed so far; present while the form is open
const ARMED_MS = 10_000;
const FINAL = new Set(["STATE_COMPLETED", "STATE_REJECTED", "STATE_FAILED", "STATE_EXPIRED"]);
const COMMANDS = {
  stop: { text: "Minimal-risk stop", body: () => ({ stop: { mode: "MODE_MINIMAL_RISK_STOP" } }) },
  resume: { text: "Resume", body: () => ({ resume: {} }) },
};

async function follow(key, name) {
  for (let i = 0; i < 120; i += 1) {
    const command = await api(name.replace(/^\//, ""));
    commands.set(key, command);
    if (FINAL.has(command.state)) {
      announce(`${label(key.split("/")[1])} ${label(command.state)} by ${key.split("/")[0]}`);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// A button that acts only on its second click within ARMED_MS (nothing is sent on one click).
function confirmed(key, text, attributes, act) {
  const isArmed = (armed.get(key) || 0) > Date.now();
  const button = el("button", { type: "button", ...attributes, "data-confirm": isArmed ? "yes" : "no" },
    isArmed ? `Confirm: ${text.toLowerCase()}` : text);
  button.addEventListener("click", async () => {
    if ((armed.get(key) || 0) <= Date.now()) {
      armed.set(key, Date.now() + ARMED_MS);
      button.dataset.confirm = "yes";
      button.textContent = `Confirm: ${text.toLowerCase()}`;
      return;
    }
    armed.delete(key);
    button.disabled = true;
    try {
      await act();
    } catch (error) {
      announce(`${text} failed: ${error.message}`);
      button.disabled = false;
    }
  });
  return button;
}

async function sendCommand(vehicle, action, payload, reason) {
  const key = `${vehicle}/${action}`;
  const command = await api(`vehicles/${vehicle}/commands`, { method: "POST",
    body: JSON.stringify({ ...payload, reason: `${reason} (console)`.slice(0, 500) }),
    headers: { "Idempotency-Key": crypto.randomUUID() } });
  commands.set(key, command);
  announce(`${label(action)} sent to ${vehicle}: ${label(command.state)}`);
  follow(key, command.name);
}

// "lat, lon" per line (or separated by ";") → Locations; an Error naming the first line that is not one.
export function parseWaypoints(text) {
  const points = text.split(/[\n;]+/).map((line) => line.trim()).filter(Boolean).map((line, i) => {
    const match = line.match(/^(-?\d+(?:\.\d+)?)\s*[, ]\s*(-?\d+(?:\.\d+)?)$/);
    const [lat, lon] = match ? [Number(match[1]), Number(match[2])] : [NaN, NaN];
    if (!(Math.abs(lat) <= 90 && Math.abs(lon) <= 180) || (lat === 0 && lon === 0)) {
      throw new Error(`waypoint ${i + 1} ("${line}") is not "latitude, longitude"`);
    }
    return { lat, lon };
  });
  if (!points.length || points.length > 100) throw new Error("give 1 to 100 waypoints, one \"latitude, longitude\" a line");
  return points;
}

// A small form (one text field and a send button) whose text survives redraws.
function draftForm(key, labelText, multiline, placeholder, send) {
  const field = el(multiline ? "textarea" : "input", { id: key, name: key, placeholder, rows: multiline ? 3 : undefined,
    "data-field": key.split("/").pop() });
  field.value = drafts.get(key) || "";
  field.addEventListener("input", () => drafts.set(key, field.value));
  const problem = el("span", { class: "problem", role: "status" });
  const form = el("form", { class: "rescue-form", "data-form": key.split("/").pop() },
    el("label", { for: key }, labelText), field,
    el("button", { type: "submit" }, "Send"),
    el("button", { type: "button", onclick: () => { drafts.delete(key); refreshRegion("exception-queue"); } }, "Cancel"),
    problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await send(field.value);
      drafts.delete(key);
      refreshRegion("exception-queue");
    } catch (error) {
      problem.textContent = error.message;
    }
  });
  return form;
}

function opener(key, text, attributes) {
  return el("button", { type: "button", ...attributes, onclick: async () => {
    drafts.set(key, drafts.get(key) || "");
    await refreshRegion("exception-queue");
    document.getElementById(key)?.focus();
  } }, text);
}

function takeoverState(e) {
  const t = e.takeover || {};
  if (t.handBackTime) return `handed back ${when(t.handBackTime)}`;
  if (t.handBackRequestTime && t.handBackRefusal) {
    return `the truck refused the hand-back ${when(t.handBackRefusal.time)} (${t.handBackRefusal.detail}): check the truck`;
  }
  if (t.handBackRequestTime) return "hand-back asked, waiting for the truck";
  if (t.controlTime) return `remote operator in control since ${when(t.controlTime)}`;
  if (t.handOverRefusal) return `the truck refused the hand-over ${when(t.handOverRefusal.time)} (${t.handOverRefusal.detail})`;
  return "hand-over asked, waiting for the truck";
}

function rescueCell(m, e) {
  const cell = el("td", { class: "actions" });
  const vehicle = idOf(m.vehicle);
  const mission = idOf(m.name);
  const reason = `${label(e.kind)} on ${mission}`;
  const takeover = e.contingency === "CONTINGENCY_HUMAN_TAKEOVER";
  if (scopes.has("vehicle:command") && vehicle) {
    for (const [action, { text, body: payload }] of Object.entries(COMMANDS)) {
      cell.append(confirmed(`${vehicle}/${action}`, text, { "data-action": action, "data-vehicle": vehicle },
        () => sendCommand(vehicle, action, payload(), reason)));
    }
    const key = `${mission}/${e.exceptionId}/waypoints`;
    if (drafts.has(key)) {
      cell.append(draftForm(key, `Reroute ${vehicle} through (latitude, longitude per line, ending at the next stop)`, true,
        "33.52, -86.80", (text) => sendCommand(vehicle, "reroute",
          { reroute: { waypoints: parseWaypoints(text), exceptionId: e.exceptionId } }, reason)));
    } else {
      cell.append(opener(key, "Reroute…", { "data-action": "reroute", "data-vehicle": vehicle }));
    }
  }
  if (scopes.has("mission:exception")) {
    if (takeover) {
      cell.append(el("span", { class: "takeover-state", "data-takeover": e.exceptionId }, takeoverState(e)));
      if (!e.resolveTime) cell.append(confirmed(`${mission}/${e.exceptionId}/hand-back`, "Hand back", { "data-action": "hand-back", "data-mission": mission },
        async () => {
          await api(`missions/${mission}:resolveException`, { method: "POST",
            body: JSON.stringify({ exceptionId: e.exceptionId, resolution: "handed back to the autonomy stack (console)" }) });
          announce(`Hand-back asked of ${vehicle}`);
          refreshRegion("exception-queue");
        }));
    } else {
      cell.append(confirmed(`${mission}/${e.exceptionId}/take-over`, "Take over", { "data-action": "take-over", "data-mission": mission },
        async () => {
          const raised = await api(`missions/${mission}:raiseException`, { method: "POST",
            headers: { "Idempotency-Key": crypto.randomUUID() },
            body: JSON.stringify({ exception: { kind: e.kind, severity: "SEVERITY_CRITICAL", contingency: "CONTINGENCY_HUMAN_TAKEOVER",
              description: `remote operator takes over (${label(e.kind)}, ${e.exceptionId})` } }) });
          announce(`Takeover of ${vehicle} asked (${raised.exception?.exceptionId})`);
          refreshRegion("exception-queue");
        }));
      const key = `${mission}/${e.exceptionId}/resolution`;
      if (drafts.has(key)) {
        cell.append(draftForm(key, `How was ${label(e.kind)} on ${vehicle} resolved?`, false, "cleared by the command centre",
          async (text) => {
            if (!text.trim()) throw new Error("say how it was resolved");
            await api(`missions/${mission}:resolveException`, { method: "POST",
              body: JSON.stringify({ exceptionId: e.exceptionId, resolution: `${text.trim()} (console)`.slice(0, 1000) }) });
            announce(`${label(e.kind)} on ${vehicle} resolved`);
          }));
      } else {
        cell.append(opener(key, "Resolve…", { "data-action": "resolve", "data-mission": mission }));
      }
    }
  }
  for (const action of [...Object.keys(COMMANDS), "reroute"]) {
    const sent = commands.get(`${vehicle}/${action}`);
    if (sent) cell.append(el("span", { class: "command-state", "data-command-state": sent.state, "data-command": action }, ` ${action}: ${label(sent.state)}`));
  }
  return cell;
}

const seenExceptions = new Set();
const seenEscalations = new Set();
const seenRefusals = new Set();
let primed = false; // the exceptions open when the page loaded are shown, not alerted

// The open exceptions (a takeover stays until the truck confirms the hand-back) and the check-ins due; alerts for
// what is new since the last look. Every page runs it (start), so an alert reaches whoever has the console open.
function triage(list) {
  const open = [];
  const due = [];
  for (const m of list) {
    for (const e of m.exceptions || []) if (!e.resolveTime || (e.takeover && !e.takeover.handBackTime)) open.push([m, e]);
    const requirement = m.checkInRequirement;
    if (requirement?.required && requirement.nextDueTime) due.push([m, requirement]);
  }
  const fresh = open.filter(([m, e]) => !seenExceptions.has(`${m.name}/${e.exceptionId}`));
  if (primed && fresh.length) {
    raiseAlert(`New exception: ${fresh.map(([m, e]) => `${label(e.kind)} on ${idOf(m.vehicle)}`).join("; ")}`);
  }
  for (const [m, e] of open) seenExceptions.add(`${m.name}/${e.exceptionId}`);
  // A truck that refused a hand-over or hand-back is in a state nobody confirmed: someone must look now.
  for (const [m, e] of open) {
    for (const [step, refusal] of [["hand-over", e.takeover?.handOverRefusal], ["hand-back", e.takeover?.handBackRefusal]]) {
      const key = `${m.name}/${e.exceptionId}/${step}/${refusal?.time}`;
      if (!refusal || seenRefusals.has(key)) continue;
      if (primed) raiseAlert(`${idOf(m.vehicle)} refused the ${step} (${idOf(m.name)}): ${refusal.detail}`);
      seenRefusals.add(key);
    }
  }
  primed = true;
  const overdue = due.filter(([m, r]) => r.escalateTime && !seenEscalations.has(`${m.name}/${r.escalateTime}`));
  if (overdue.length) {
    raiseAlert(`Check-in overdue: ${overdue.map(([m]) => `${idOf(m.vehicle)} (${idOf(m.name)})`).join("; ")}`);
    for (const [m, r] of overdue) seenEscalations.add(`${m.name}/${r.escalateTime}`);
  }
  return { open, due };
}

async function exceptionQueue(section) {
  if (section.contains(document.activeElement) && document.activeElement.matches("input, textarea")) return; // typing
  const { open, due } = triage(await missions());
  const rows = open.map(([m, e]) => el("tr", { "data-exception": e.exceptionId, "data-kind": e.kind, "data-mission": idOf(m.name),
    "data-contingency": e.contingency },
    el("td", {}, when(e.raiseTime)),
    el("td", {}, el("a", { href: `/console/missions/${idOf(m.name)}` }, idOf(m.name))),
    el("td", {}, idOf(m.vehicle)),
    el("td", {}, label(e.kind)),
    el("td", {}, label(e.severity)),
    el("td", {}, label(e.contingency)),
    el("td", {}, e.description || ""),
    rescueCell(m, e)));
  const dueRows = due.map(([m, r]) => el("tr", { "data-check-in-due": idOf(m.name), class: r.escalateTime ? "overdue" : "" },
    el("td", {}, el("a", { href: `/console/missions/${idOf(m.name)}` }, idOf(m.name))),
    el("td", {}, when(r.nextDueTime)),
    el("td", {}, r.escalateTime ? `overdue: escalated ${when(r.escalateTime)}` : "due")));
  fill(section,
    table("Open exceptions", ["Raised", "Mission", "Truck", "Kind", "Severity", "Contingency", "Description", "Rescue"], rows,
      "No open exceptions."),
    el("h3", {}, "Check-ins due"),
    table("Check-ins due", ["Mission", "Due", "Status"], dueRows, "No check-ins due."));
}

// Live frames of the mission shown: the last minute's, then each as it is stored (one SSE stream a page).
const LIVE_FRAMES = 20;
const liveFrames = [];
let framesBox;
let framesStream;
// A mission whose truck is on it (its frames still come).
export const ACTIVE_STATES = new Set(["STATE_DISPATCHED", "STATE_PRE_TRIP", "STATE_ENROUTE", "STATE_EXCEPTION", "STATE_ARRIVED"]);

function frameRow(frame) {
  const f = frame.telemetryFrame || frame;
  const p = f.payload || {};
  const where = p.position ? `${p.position.lat.toFixed(4)}, ${p.position.lon.toFixed(4)} at ${Math.round(p.position.speedKph || 0)} km/h` : "";
  const detail = p.event ? `${p.event.code} ${p.event.detail || ""}` : p.alarm ? `${p.alarm.code || ""} ${p.alarm.description || ""}` : p.vehicleState || "";
  const late = f.receiveTime && p.deviceTime ? (new Date(f.receiveTime) - new Date(p.deviceTime)) / 1000 : 0;
  return el("tr", { "data-sequence": p.sequence },
    el("td", {}, when(p.deviceTime)), el("td", {}, String(p.sequence || "")), el("td", {}, label(p.kind)),
    el("td", {}, where), el("td", {}, detail.trim()),
    el("td", {}, late > 30 ? `${Math.round(late)} s late (replayed from the truck's spool)` : "live"));
}

function drawFrames() {
  framesBox.replaceChildren(table("Live frames", ["Taken", "Sequence", "Kind", "Position", "Detail", "Received"],
    liveFrames.slice().reverse().map(frameRow), "No frames in the last minute; waiting for the next one."));
  framesBox.dataset.frames = String(liveFrames.length);
}

function keep(frame) {
  const f = frame.telemetryFrame || frame;
  const sequence = Number(f.payload?.sequence || 0);
  if (liveFrames.some((x) => Number(x.payload?.sequence) === sequence)) return;
  liveFrames.push(f);
  liveFrames.sort((a, b) => Number(a.payload?.sequence) - Number(b.payload?.sequence));
  liveFrames.splice(0, Math.max(0, liveFrames.length - LIVE_FRAMES));
}

async function followFrames(id) {
  framesBox = el("div", { class: "live-frames", "data-frames": "0" });
  const since = new Date(Date.now() - 60e3).toISOString();
  const { telemetryFrames: recent = [] } = await api(`missions/${id}/telemetryFrames?pageSize=200&startTime=${encodeURIComponent(since)}`);
  recent.forEach(keep);
  drawFrames();
  const after = liveFrames.length ? liveFrames[liveFrames.length - 1].payload.sequence : 0;
  framesStream = new EventSource(`/api/v1/missions/${id}:watchTelemetry${after ? `?afterSequence=${after}` : ""}`);
  framesStream.addEventListener("telemetryFrame", (event) => {
    keep(JSON.parse(event.data));
    drawFrames();
  });
}

async function missionTimeline(section) {
  const id = body.dataset.mission;
  const m = await api(`missions/${id}`);
  const entries = [];
  const add = (time, what, detail = "") => time && entries.push([time, what, detail]);
  add(m.createTime, "created", `${m.lane?.originRegion || ""} → ${m.lane?.destinationRegion || ""}`);
  add(m.dispatchTime, "dispatched", idOf(m.vehicle));
  add(m.dispatchAckTime, "dispatch acknowledged by the truck");
  add(m.startTime, "started");
  for (const s of m.stops || []) {
    add(s.geofenceEnterTime, `entered ${label(s.type)} geofence`);
    add(s.arriveTime, `arrived at ${label(s.type)}`);
    add(s.departTime, `departed ${label(s.type)}`);
  }
  for (const e of m.exceptions || []) {
    add(e.raiseTime, `exception: ${label(e.kind)}`, `${label(e.contingency)} ${e.description || ""} (${e.raisedBy || ""})`);
    add(e.takeover?.controlTime, "remote operator in control", `the truck confirmed the hand-over (${e.exceptionId})`);
    add(e.takeover?.handOverRefusal?.time, "the truck refused the hand-over", `${e.takeover?.handOverRefusal?.detail} (${e.exceptionId})`);
    add(e.takeover?.handBackRequestTime, "hand-back asked", e.exceptionId);
    add(e.takeover?.handBackRefusal?.time, "the truck refused the hand-back", `${e.takeover?.handBackRefusal?.detail} (${e.exceptionId})`);
    add(e.takeover?.handBackTime, "autonomy stack in control again", `the truck confirmed the hand-back (${e.exceptionId})`);
    add(e.resolveTime, `exception resolved: ${label(e.kind)}`, `${e.resolution || ""} (${e.resolvedBy || ""})`);
  }
  for (const c of m.checkIns || []) add(c.recordTime, `check-in: ${label(c.point)}`, `${label(c.outcome)} ${c.notes || ""}`);
  add(m.endTime, label(m.state), m.stateReason || "");
  entries.sort((a, b) => new Date(a[0]) - new Date(b[0]));
  const rows = entries.map(([t, what, detail]) => el("tr", {}, el("td", {}, when(t)), el("td", {}, what), el("td", {}, detail)));
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "State"), el("dd", { "data-field": "state" }, label(m.state)),
    el("dt", {}, "Truck"), el("dd", {}, idOf(m.vehicle)),
    el("dt", {}, "ETA"), el("dd", {}, when(m.estimatedArriveTime) || "—"),
    el("dt", {}, "Proof of delivery"), el("dd", {}, m.proofOfDelivery?.keyId ? "signed manifest received" : "—"));
  const links = [];
  if (scopes.has("billing:read")) {
    links.push(el("p", {}, el("a", { href: `/api/v1/missions/${id}:exportEvidencePack` }, "Download the evidence pack")));
  }
  const live = [];
  if (scopes.has("telemetry:read") && m.vehicle) {
    if (!framesBox) await followFrames(id);
    if (!ACTIVE_STATES.has(m.state)) framesStream?.close(); // a finished mission's stream ends; its frames stay
    live.push(el("h3", {}, "Live frames"), framesBox);
  }
  fill(section, facts, ...links, table("Timeline", ["When", "What", "Detail"], rows, "Nothing yet."), ...live);
}

// --- webhooks -----------------------------------------------------------------------------------------------

async function webhookLog(section) {
  if (!scopes.has("webhook:read")) {
    fill(section, el("p", { class: "empty" }, "Your roles do not include webhooks."));
    return;
  }
  const { webhookSubscriptions: subs = [] } = await api("webhookSubscriptions?pageSize=20");
  const rows = [];
  for (const sub of subs) {
    const { deliveries = [] } = await api(`${sub.name.replace(/^carriers\/[^/]+\//, "")}/deliveries?pageSize=${full(section) ? 50 : 10}`);
    for (const d of deliveries) {
      const actions = el("td", {});
      if (d.state === "STATE_FAILED" && scopes.has("webhook:write")) {
        actions.append(el("button", {
          type: "button", "data-action": "replay", "data-delivery": idOf(d.name),
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              const path = d.name.replace(/^carriers\/[^/]+\//, "");
              const replay = await api(`${path}:replay`, { method: "POST", body: "{}" });
              announce(`Delivery replayed as ${idOf(replay.name)}`);
            } catch (error) {
              announce(`Replay failed: ${error.message}`);
              event.target.disabled = false;
            }
            refresh(section);
          },
        }, "Replay"));
      }
      rows.push(el("tr", { "data-delivery": idOf(d.name), "data-state": d.state },
        el("td", {}, when(d.createTime)), el("td", {}, sub.displayName || sub.url || idOf(sub.name)),
        el("td", {}, d.event?.type || ""), el("td", {}, label(d.state)),
        el("td", {}, `${d.attemptCount} (${d.lastStatusCode || d.lastError || "—"})`),
        el("td", {}, d.replayOf ? `replay of ${idOf(d.replayOf)}` : ""), actions));
    }
  }
  const deliveries = table("Webhook deliveries", ["Created", "Subscription", "Event", "State", "Attempts", "", ""], rows,
    subs.length ? "No deliveries yet." : "No webhook subscriptions.");
  if (!full(section)) {
    fill(section, deliveries);
    return;
  }
  const subscriptions = table("Webhook subscriptions", ["Subscription", "URL", "Events", "State", "Created"],
    subs.map((sub) => el("tr", { "data-subscription": idOf(sub.name), "data-state": sub.state },
      el("td", {}, sub.displayName || idOf(sub.name)), el("td", {}, sub.url || ""), el("td", {}, (sub.eventTypes || []).join(", ")),
      el("td", {}, label(sub.state)), el("td", {}, when(sub.createTime)))), "No webhook subscriptions.");
  fill(section, el("h3", {}, "Subscriptions"), subscriptions, el("h3", {}, "Deliveries"), deliveries);
}

// --- KPIs ---------------------------------------------------------------------------------------------------

let chartLoaded;
function loadChart() {
  chartLoaded ??= new Promise((resolve, reject) => {
    const script = el("script", { src: "/console/vendor/chart.umd.min.js" });
    script.onload = () => resolve(window.Chart);
    script.onerror = reject;
    document.head.append(script);
  });
  return chartLoaded;
}

async function kpiReport(section) {
  if (!scopes.has("report:read")) {
    fill(section, el("p", { class: "empty" }, "Your roles do not include the KPI report."));
    return;
  }
  const since = new Date(Date.now() - 30 * 86400e3).toISOString();
  const report = await api(`kpiReport?startTime=${encodeURIComponent(since)}`);
  const rows = report.rows || [];
  const lanes = rows.map((r) => `${r.lane?.originRegion || "?"} → ${r.lane?.destinationRegion || "?"}`);
  const series = [["Completed", "missionsCompleted"], ["In progress", "missionsInProgress"], ["Aborted", "missionsAborted"],
    ["Minimal-risk stops", "minimalRiskStops"], ["Takeovers", "takeovers"]];
  // Rates in percent; a rate the report could not compute (no arrivals yet, no frames) stays a gap, not a zero.
  const rates = [["Success", "successRate"], ["On-time arrival", "onTimeArrivalRate"], ["Packet loss", "packetLossRatio"]];
  const percent = (value) => (value === undefined || value === null ? null : Math.round(value * 1000) / 10);
  const counts = el("canvas", { role: "img", "aria-label": "Missions per lane, by outcome (the table below has the figures)" });
  const ratios = el("canvas", { role: "img", "aria-label": "Success, on-time arrival and packet loss per lane, in percent (the table below has the figures)" });
  const figures = table("KPIs per lane", ["Lane", ...series.map((x) => x[0]), ...rates.map((x) => `${x[0]} %`), "Freshness p95",
    "Cost per mile"], rows.map((r, i) =>
    el("tr", {}, el("td", {}, lanes[i]), series.map(([, key]) => el("td", {}, String(r[key] || 0))),
      rates.map(([, key]) => el("td", {}, percent(r[key]) === null ? "—" : `${percent(r[key])} %`)),
      el("td", {}, r.telemetryFreshnessP95 || "—"), el("td", {}, money(r.measuredCostPerMile) || "—"))),
  "No missions in the last 30 days.");
  fill(section, el("div", { class: "charts" }, el("div", { class: "chart" }, counts), el("div", { class: "chart" }, ratios)), figures);
  const Chart = await loadChart();
  for (const chart of section.charts || []) chart.destroy();
  const options = { animation: false, responsive: true, maintainAspectRatio: false };
  section.charts = [
    new Chart(counts, { type: "bar", options, data: { labels: lanes,
      datasets: series.map(([name, key]) => ({ label: name, data: rows.map((r) => r[key] || 0) })) } }),
    new Chart(ratios, { type: "bar", options: { ...options, scales: { y: { min: 0, max: 100, title: { display: true, text: "%" } } } },
      data: { labels: lanes, datasets: rates.map(([name, key]) => ({ label: name, data: rows.map((r) => percent(r[key])) })) } }),
  ];
  section.dataset.chart = "drawn";
}

// --- the loop -----------------------------------------------------------------------------------------------

const REGIONS = {
  "tender-board": tenderBoard,
  "mission-list": missionList,
  "exception-queue": exceptionQueue,
  "webhook-log": webhookLog,
  "kpi-report": kpiReport,
  "mission-timeline": missionTimeline,
  "fleet-map": async (section) => (await import("/console/assets/map.js")).fleetMap(section),
};

// Redraw a region now, from fresh data (after a change the person made).
function refreshRegion(region) {
  missionsCache = { at: 0, missions: [] };
  return Promise.all([...document.querySelectorAll(`section[data-region="${region}"]`)].map(refresh));
}

async function refresh(section) {
  try {
    await REGIONS[section.dataset.region](section);
  } catch (error) {
    if (error.message !== "signed out") failed(section, error);
  }
}

async function start() {
  const sections = [...document.querySelectorAll("section[data-region]")];
  await Promise.all(sections.map(refresh));
  const polled = sections.filter((s) => !["fleet-map", "kpi-report"].includes(s.dataset.region));
  setInterval(() => polled.forEach(refresh), REFRESH_MS);
  if (!sections.some((s) => s.dataset.region === "exception-queue") && scopes.has("mission:read")) {
    const look = () => missions().then(triage).catch(() => {}); // alerts only; the page's own regions report errors
    look();
    setInterval(look, REFRESH_MS);
  }
}

if (body.dataset.page !== "sign-in" && body.dataset.page !== "problem") start();
