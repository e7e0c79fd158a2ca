// The sdns dashboard: lists the registry, follows GET /v1/watch, and renders only the rows in
// view, so thousands of services scroll smoothly. No build step, no dependencies.
"use strict";

const ROW = 34;               // px, as --row in style.css
const CHANGED_MS = 1500;      // how long a changed row stays tinted
const STATUS_EVERY_MS = 5000; // how often the header asks /v1/status
const DETAIL_EVERY_MS = 3000; // how often an open service's endpoints and VIPs are read again

const state = {
  token: sessionStorage.getItem("sdns-token"),
  needsToken: document.querySelector('meta[name="sdns-auth"]').content === "token",
  status: {},
  services: new Map(),   // "ns/name" -> service
  endpoints: new Map(),  // "ns/name" -> Map(id -> endpoint)
  changed: new Map(),    // "ns/name" -> time it changed
  revision: 0,
  sort: { key: "namespace", desc: false },
  selected: null,
  detail: { endpoints: [], balancer: [] },
  shown: [],
};
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const reply = await fetch(path, { headers });
  if (reply.status === 401) throw new Unauthorized();
  if (!reply.ok) throw new Error(`${path}: ${reply.status}`);
  return reply.json();
}

function askToken(message) {
  $("login-error").textContent = message || "";
  return new Promise((resolve) => {
    const form = $("login-form");
    form.onsubmit = () => {
      state.token = $("token").value.trim();
      sessionStorage.setItem("sdns-token", state.token);
      resolve();
    };
    $("login").showModal();
  });
}

// Data: list, then follow the watch from the revision after it

async function relist() {
  const [listed, endpoints] = await Promise.all([api("/v1/services"), api("/v1/endpoints")]);
  state.services = new Map(listed.services.map((s) => [`${s.namespace}/${s.name}`, s]));
  state.endpoints = new Map();
  for (const e of endpoints.endpoints) endpointsOf(`${e.namespace}/${e.service}`).set(e.id, e);
  state.revision = listed.revision;
  render();
  return listed.revision + 1;
}

function endpointsOf(key) {
  let found = state.endpoints.get(key);
  if (!found) state.endpoints.set(key, (found = new Map()));
  return found;
}

function apply(event) {
  const key = `${event.namespace}/${event.service}`;
  if (event.kind === "service") {
    if (event.action === "put") state.services.set(key, event.object);
    else { state.services.delete(key); state.endpoints.delete(key); }
  } else if (event.action === "put") {
    endpointsOf(key).set(event.id, event.object);
  } else {
    endpointsOf(key).delete(event.id);
  }
  state.revision = event.revision;
  state.changed.set(key, Date.now());
  setTimeout(scheduleRender, CHANGED_MS + 50);
  if (key === state.selected) refreshDetail();
}

async function follow() {
  let since = null;
  for (;;) {
    try {
      if (since === null) since = await relist();
      const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
      const reply = await fetch(`/v1/watch?since=${since}`, { headers });
      if (reply.status === 410) { since = null; continue; }   // past the history: list again
      if (reply.status === 401) throw new Unauthorized();
      if (!reply.ok) throw new Error(`watch: ${reply.status}`);
      setLive(true);
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value;
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines) {
          if (!line.trim()) continue;
          const event = JSON.parse(line);
          apply(event);
          since = event.revision + 1;
        }
        scheduleRender();
      }
    } catch (error) {
      if (error instanceof Unauthorized) { await askToken("That token was not accepted."); since = null; continue; }
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function setLive(live) {
  const badge = $("live");
  badge.textContent = live ? "live" : "reconnecting…";
  badge.className = `badge ${live ? "ok" : "warn"}`;
}

async function pollStatus() {
  try {
    state.status = await api("/v1/status");
    const up = state.status.store === "up";
    $("store").textContent = up ? "store up" : "store outage: serving the last known data";
    $("store").className = `badge ${up ? "ok" : "bad"}`;
    $("backend").textContent = state.status.backend;
    const ready = await fetch("/readyz").then((r) => r.json());
    $("preservation").hidden = !ready.selfPreservation;
    $("preservation").textContent = `self-preservation: ${ready.preserved} expired endpoints kept`;
    const replicas = state.status.replicas;
    $("replicas").textContent = replicas ? replicas.length : "?";
    $("replicas").title = replicas ? replicas.join("\n") : "the store does not answer";
  } catch (error) {
    $("store").textContent = "sdns unreachable";
    $("store").className = "badge bad";
  }
}

// The services table, rendered a screenful at a time

const columns = {
  namespace: (s) => s.namespace,
  name: (s) => s.name,
  type: (s) => s.type,
  clusterIP: (s) => s.clusterIP || s.externalName || "",
  ports: (s) => portsText(s),
  endpoints: (s) => counts(s).total,
};

function portsText(service) {
  return service.ports.map((p) => `${p.name}:${p.port}/${p.protocol}`).join(", ");
}

// Served: ready, and passing its active check when it has one.
const serving = (e) => e.ready && (!e.health || e.health === "passing");

function counts(service) {
  const found = state.endpoints.get(`${service.namespace}/${service.name}`);
  let ready = 0, total = 0;
  if (found) for (const e of found.values()) { total += 1; if (serving(e)) ready += 1; }
  return { ready, total };
}

let renderPending = false;
function scheduleRender() {
  if (!renderPending) { renderPending = true; requestAnimationFrame(() => { renderPending = false; render(); }); }
}

function render() {
  const namespace = $("namespace").value;
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const keyOf = columns[state.sort.key];
  const shown = [...state.services.values()].filter((s) => {
    if (namespace && s.namespace !== namespace) return false;
    const text = `${s.namespace}/${s.name} ${s.type} ${s.clusterIP || ""} ${s.externalName || ""} ${portsText(s)}`.toLowerCase();
    return words.every((w) => text.includes(w));
  });
  shown.sort((a, b) => {
    const x = keyOf(a), y = keyOf(b);
    const order = x < y ? -1 : x > y ? 1 : `${a.namespace}/${a.name}` < `${b.namespace}/${b.name}` ? -1 : 1;
    return state.sort.desc ? -order : order;
  });
  state.shown = shown;
  renderRows();
  renderHeader();
  renderNamespaces();
  $("shown").textContent = `${shown.length} of ${state.services.size}`;
  for (const button of document.querySelectorAll(".row.head button")) {
    button.classList.toggle("sorted", button.dataset.sort === state.sort.key);
    button.classList.toggle("desc", button.dataset.sort === state.sort.key && state.sort.desc);
  }
}

function renderRows() {
  const viewport = $("viewport");
  $("spacer").style.height = `${state.shown.length * ROW}px`;
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - 5);
  const last = Math.min(state.shown.length, first + Math.ceil(viewport.clientHeight / ROW) + 10);
  const rows = $("rows");
  rows.style.transform = `translateY(${first * ROW}px)`;
  const now = Date.now();
  const fragment = document.createDocumentFragment();
  for (const service of state.shown.slice(first, last)) {
    const key = `${service.namespace}/${service.name}`;
    const row = document.createElement("div");
    row.className = "row";
    row.setAttribute("role", "row");
    row.dataset.key = key;
    if (key === state.selected) row.classList.add("selected");
    if (now - (state.changed.get(key) || 0) < CHANGED_MS) row.classList.add("changed");
    const { ready, total } = counts(service);
    const cells = [service.namespace, service.name, service.type,
                   service.clusterIP || service.externalName || "–", portsText(service) || "–",
                   `${ready}/${total}`];
    const kinds = ["", "name", "", "ip", "ports", "count"];
    cells.forEach((text, i) => {
      const cell = document.createElement("div");
      cell.className = `cell ${kinds[i]}`;
      cell.textContent = text;
      if (i === 5 && total > 0 && ready === 0) cell.classList.add("none");
      cell.title = text;
      row.append(cell);
    });
    fragment.append(row);
  }
  rows.replaceChildren(fragment);
}

function renderHeader() {
  let ready = 0, total = 0, critical = 0;
  for (const found of state.endpoints.values()) {
    for (const e of found.values()) {
      total += 1;
      if (serving(e)) ready += 1;
      if (e.health === "critical") critical += 1;
    }
  }
  $("revision").textContent = state.revision;
  $("count-services").textContent = state.services.size;
  $("count-ready").textContent = ready;
  $("count-not-ready").textContent = total - ready;
  $("count-critical").textContent = critical;
}

function renderNamespaces() {
  const picker = $("namespace");
  const names = [...new Set([...state.services.values()].map((s) => s.namespace))].sort();
  const have = [...picker.options].slice(1).map((o) => o.value);
  if (names.join() === have.join()) return;
  const chosen = picker.value;
  picker.replaceChildren(new Option("all namespaces", ""), ...names.map((n) => new Option(n, n)));
  picker.value = names.includes(chosen) ? chosen : "";
}

// A service's detail: endpoints with live deadlines, DNS names, the balancer's view

function select(key) {
  state.selected = key;
  $("detail").hidden = key === null;
  renderRows();
  if (key !== null) refreshDetail();
}

async function refreshDetail() {
  const key = state.selected;
  if (key === null) return;
  const [namespace, name] = key.split("/");
  try {
    const [endpoints, balancer] = await Promise.all([
      api(`/v1/services/${namespace}/${name}/endpoints`).catch(() => ({ endpoints: [] })),
      api("/v1/balancer").catch(() => ({ services: [] })),
    ]);
    if (state.selected !== key) return;
    state.detail = {
      endpoints: endpoints.endpoints,
      balancer: balancer.services.filter((b) => b.namespace === namespace && b.name === name),
    };
  } catch (error) {
    return;
  }
  renderDetail();
}

function renderDetail() {
  const key = state.selected;
  const service = state.services.get(key);
  if (!service) { $("detail-title").textContent = `${key} (deleted)`; return; }
  const zone = state.status.zone || "cluster.local";
  const [host, port] = splitAddress(state.status.dnsAddr || "127.0.0.1:53");
  $("detail-title").textContent = key;
  $("detail-summary").textContent = [service.type, (service.clusterIPs || []).join(", "),
                                     service.externalName, portsText(service)].filter(Boolean).join(" · ");
  const fqdn = `${service.name}.${service.namespace}.svc.${zone}`;
  const names = [[fqdn, service.clusterIPs && service.clusterIPs.some((ip) => ip.includes(":")) ? "AAAA" : "A"],
                 ...service.ports.map((p) => [`_${p.name}._${p.protocol.toLowerCase()}.${fqdn}`, "SRV"])];
  $("detail-names").replaceChildren(...names.map(([name, type]) => {
    const item = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = `dig @${host} -p ${port} ${type === "A" ? "" : type + " "}${name}`;
    const copy = document.createElement("button");
    copy.textContent = "copy";
    copy.onclick = () => navigator.clipboard.writeText(code.textContent).then(
      () => { copy.textContent = "copied"; setTimeout(() => (copy.textContent = "copy"), 1200); },
      () => { copy.textContent = "select it"; });
    item.append(code, copy);
    return item;
  }));
  renderEndpoints();
  const balancer = state.detail.balancer;
  $("detail-balancer").replaceChildren(...(balancer.length ? balancer.map((row) => {
    const line = document.createElement("div");
    line.className = "mono";
    const to = row.endpoints.map((e) => `${e.ip}:${e.port} (${e.state}, ${e.connections ?? 0} open)`).join(", ");
    line.textContent = `${row.vip}:${row.vipPort}/${row.protocol} → ${to || "no endpoints"}`;
    return line;
  }) : [document.createTextNode(state.status.balancer === "off" ? "the balancer is off" : "no VIP ports")]));
}

function renderEndpoints() {
  const endpoints = state.detail.endpoints;
  const holder = $("detail-endpoints");
  if (!endpoints.length) { holder.textContent = "none"; holder.className = "muted"; return; }
  holder.className = "";
  const table = document.createElement("table");
  table.className = "endpoints";
  const checked = endpoints.some((e) => e.health);
  table.innerHTML = "<thead><tr><th>id</th><th>hostname</th><th>IP</th><th>ports</th><th>ready</th>" +
    (checked ? "<th>health</th><th>last check</th>" : "") + "<th>lives by</th><th>expires in</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const e of endpoints) {
    const row = document.createElement("tr");
    row.dataset.id = e.id;
    const lives = (e.lease ? `lease ${e.lease}` : e.ttl ? `ttl ${e.ttl}s` : "registration") +
      (e.preserved ? " (expired, preserved)" : "");
    const cells = [e.id, e.hostname, e.ip,
                   Object.entries(e.ports).map(([n, p]) => `${n}:${p}`).join(", ") || "–",
                   e.ready ? "yes" : "no"];
    if (checked) cells.push(e.health || "–", e.lastCheck ? e.lastCheck.output : "–");
    cells.push(lives, "");
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 2 || i === 3) cell.className = "mono";
      if (checked && i === 5) cell.className = `health-${text}`;
      if (i === cells.length - 1) { cell.className = "countdown"; cell.dataset.expires = e.expiresAt || ""; }
      row.append(cell);
    });
    body.append(row);
  }
  table.append(body);
  holder.replaceChildren(table);
  tick();
}

function tick() {
  let due = false;
  for (const cell of document.querySelectorAll("td.countdown")) {
    if (!cell.dataset.expires) { cell.textContent = "never"; continue; }
    const left = Math.round((Date.parse(cell.dataset.expires) - Date.now()) / 1000);
    cell.textContent = left > 0 ? `${left}s` : "renewing or expiring…";
    if (left <= 0) due = true;
  }
  return due;
}

function splitAddress(address) {
  const at = address.lastIndexOf(":");
  return [address.slice(0, at).replace(/^\[|\]$/g, ""), address.slice(at + 1)];
}

// Wiring

function wire() {
  $("viewport").addEventListener("scroll", renderRows, { passive: true });
  window.addEventListener("resize", renderRows);
  $("filter").addEventListener("input", render);
  $("namespace").addEventListener("change", render);
  for (const button of document.querySelectorAll(".row.head button")) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      state.sort = { key, desc: state.sort.key === key ? !state.sort.desc : false };
      render();
    });
  }
  $("rows").addEventListener("click", (event) => {
    const row = event.target.closest(".row");
    if (row) select(row.dataset.key);
  });
  $("close").addEventListener("click", () => select(null));
  setInterval(() => { if (tick()) refreshDetail(); }, 1000);
  setInterval(refreshDetail, DETAIL_EVERY_MS);
  setInterval(pollStatus, STATUS_EVERY_MS);
}

async function start() {
  wire();
  if (state.needsToken && !state.token) await askToken();
  await pollStatus();
  follow();
}

start();
