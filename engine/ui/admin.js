// The admin console: live actor tree, provider health with fault-injection drills, SLO
// status, and (when the engine has them) tenant spend against budget and anomalies.
//
// Everything is read from the public admin API with the signed-in user's token; the server
// decides what the user may see (`admin:actors` is a platform permission, superadmin only).
// Panels poll while the page is visible and can be paused (auto-updating content must be
// pausable for people who need it still). Rows are keyed by actor id and updated in place,
// so keyboard focus on a button survives each refresh.

import { api, ApiError } from './api.js';
import { $, h, svg, announce, formatMicros, replaceChildren } from './dom.js';

const ACTORS_EVERY_MS = 1000;
const SLO_EVERY_MS = 5000;
const SPEND_EVERY_MS = 15000;

/** Spend against budget and anomalies (docs/costs.md). */
export const SPEND_ENDPOINT = '/api/v1/costs/spend';
export const ANOMALIES_ENDPOINT = '/admin/anomalies';

let active = false;
let paused = false;
let timers = [];
const providerRows = new Map();

export function initAdmin() {
  $('#admin-pause').addEventListener('click', () => {
    paused = !paused;
    $('#admin-pause').textContent = paused ? 'Resume live updates' : 'Pause live updates';
    $('#admin-pause').setAttribute('aria-pressed', String(paused));
  });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && active) refreshAll(); });
}

export function showAdmin() {
  if (active) return;
  active = true;
  refreshAll();
  timers = [
    setInterval(() => live(refreshActors), ACTORS_EVERY_MS),
    setInterval(() => live(refreshSlo), SLO_EVERY_MS),
    setInterval(() => live(refreshSpend), SPEND_EVERY_MS),
    setInterval(() => live(refreshAnomalies), SPEND_EVERY_MS),
  ];
}

export function hideAdmin() {
  active = false;
  timers.forEach(clearInterval);
  timers = [];
}

/** Forgets everything shown (on sign-out, or when the server refuses the caller). */
export function resetAdmin() {
  for (const row of providerRows.values()) row.tr.remove();
  providerRows.clear();
  replaceChildren($('#actor-tree'));
  $('#actors-summary').textContent = '';
  $('#drill-status').textContent = '';
}

function live(fn) {
  if (active && !paused && !document.hidden) fn();
}

function refreshAll() {
  refreshActors();
  refreshSlo();
  refreshSpend();
  refreshAnomalies();
}

// ---- actors and providers -------------------------------------------------------------

let actorsInFlight = false;

async function refreshActors() {
  if (actorsInFlight) return;
  actorsInFlight = true;
  try {
    const data = await api('GET', '/admin/actors');
    $('#actors-error').textContent = '';
    renderProviders(data.actors.filter((a) => a.kind === 'provider'));
    renderTree(data.actors);
    const sessions = data.websocket_sessions === 1 ? '1 WebSocket session' : `${data.websocket_sessions} WebSocket sessions`;
    $('#actors-summary').textContent = `${data.count} actors · ${sessions} · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) resetAdmin();
    $('#actors-error').textContent = e instanceof ApiError && e.status === 403
      ? 'The actor tree needs platform admin rights (admin:actors).'
      : `Could not load the actor tree: ${e.message}`;
  } finally {
    actorsInFlight = false;
  }
}

function modelOf(actor) {
  return actor.id.startsWith('provider:') ? actor.id.slice('provider:'.length) : actor.id;
}

function renderProviders(providers) {
  const body = $('#providers-body');
  const seen = new Set();
  providers.sort((a, b) => a.id.localeCompare(b.id));
  for (const p of providers) {
    seen.add(p.id);
    let row = providerRows.get(p.id);
    if (!row) {
      row = providerRow(modelOf(p));
      providerRows.set(p.id, row);
    }
    const c = row.cells;
    row.tr.dataset.state = p.state;
    row.tr.dataset.circuit = p.circuit ?? 'none';
    setText(c.state, p.state);
    c.state.className = `pill state-${p.state}`;
    setText(c.circuit, p.circuit ?? '—');
    c.circuit.className = `pill circuit-${p.circuit ?? 'none'}`;
    setText(c.inFlight, p.in_flight);
    setText(c.mailbox, p.mailbox_depth);
    setText(c.restarts, p.restarts);
    setText(c.error, p.last_error ?? '—');
    // Only move a row that is out of place: moving a node takes the keyboard focus off it.
    const index = seen.size - 1;
    if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] ?? null);
  }
  for (const [id, row] of providerRows) {
    if (!seen.has(id)) { row.tr.remove(); providerRows.delete(id); }
  }
  $('#providers-empty').hidden = providers.length > 0;
}

function setText(node, value) {
  const text = String(value);
  if (node.textContent !== text) node.textContent = text;
}

function providerRow(model) {
  // data-label names each cell where the phone layout shows rows as cards (no header row).
  const cells = {
    state: h('span'), circuit: h('span'),
    inFlight: h('td', { class: 'num', 'data-label': 'In flight' }),
    mailbox: h('td', { class: 'num', 'data-label': 'Mailbox' }),
    restarts: h('td', { class: 'num restarts', 'data-label': 'Restarts' }),
    error: h('td', { class: 'last-error', 'data-label': 'Last error' }),
  };
  const fail = h('button', { type: 'button', class: 'danger', 'aria-label': `Inject a failure into provider ${model}` }, 'Fail');
  const restart = h('button', { type: 'button', 'aria-label': `Restart provider ${model}` }, 'Restart');
  fail.addEventListener('click', () => drill(model, 'fail', fail));
  restart.addEventListener('click', () => drill(model, 'restart', restart));
  const tr = h('tr', { dataset: { model } },
    h('th', { scope: 'row' }, model),
    h('td', { 'data-label': 'State' }, cells.state), h('td', { 'data-label': 'Circuit' }, cells.circuit),
    cells.inFlight, cells.mailbox, cells.restarts, cells.error,
    h('td', { class: 'actions' }, fail, restart));
  return { tr, cells };
}

async function drill(model, action, button) {
  button.disabled = true;
  const status = $('#drill-status');
  try {
    await api('POST', `/admin/providers/${encodeURIComponent(model)}/${action}`);
    status.textContent = action === 'fail'
      ? `Injected a failure into ${model}; its supervisor restarts it.`
      : `Asked ${model} to restart.`;
    announce(status.textContent);
    await refreshActors();
  } catch (e) {
    status.textContent = `Could not ${action} ${model}: ${e.message}`;
  } finally {
    button.disabled = false;
  }
}

function renderTree(actors) {
  const byParent = new Map();
  const ids = new Set(actors.map((a) => a.id));
  for (const a of actors) {
    const parent = a.parent && ids.has(a.parent) ? a.parent : null;
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(a);
  }
  for (const list of byParent.values()) list.sort((a, b) => a.kind.localeCompare(b.kind) || a.id.localeCompare(b.id));
  // Thousands of conversations would make the page unusable; show the first ones per parent.
  const LIMIT = 200;
  const build = (parent, depth) => {
    const children = byParent.get(parent) ?? [];
    if (children.length === 0) return null;
    const ul = h('ul', depth === 0 ? { class: 'tree' } : {});
    for (const a of children.slice(0, LIMIT)) {
      const facts = [`mailbox ${a.mailbox_depth}`, `in flight ${a.in_flight}`, `restarts ${a.restarts}`];
      if (a.circuit) facts.push(`circuit ${a.circuit}`);
      const li = h('li', { dataset: { id: a.id, kind: a.kind, state: a.state } },
        h('div', { class: 'node' },
          h('span', { class: 'kind' }, a.kind),
          h('span', { class: 'node-id' }, a.id),
          h('span', { class: `pill state-${a.state}` }, a.state),
          h('span', { class: 'facts' }, facts.join(' · ')),
          a.last_error ? h('span', { class: 'node-error' }, `last error: ${a.last_error}`) : null),
        build(a.id, depth + 1));
      ul.append(li);
    }
    if (children.length > LIMIT) ul.append(h('li', { class: 'muted' }, `… and ${children.length - LIMIT} more`));
    return ul;
  };
  replaceChildren($('#actor-tree'), build(null, 0));
}

// ---- SLO ------------------------------------------------------------------------------

async function refreshSlo() {
  const box = $('#slo-body');
  let report;
  try {
    report = await api('GET', '/admin/slo');
  } catch (e) {
    replaceChildren(box, h('p', { class: e.status === 404 ? 'muted' : 'error' },
      e.status === 404 ? 'This engine has no SLO report (/admin/slo).' : `Could not load the SLO report: ${e.message}`));
    return;
  }
  const pct = (ratio) => (ratio === null || ratio === undefined ? '—' : `${(ratio * 100).toFixed(3)} %`);
  const burn = (b) => (b === null || b === undefined ? '' : ` (burn ${Number(b).toFixed(2)})`);
  const objectives = report.objectives ?? {};
  const rows = (report.windows ?? []).map((w) => h('tr', {},
    h('th', { scope: 'row' }, w.window.replace('_', ' ')),
    h('td', {}, pct(w.availability?.ratio) + burn(w.availability?.burn_rate)),
    h('td', {}, pct(w.latency?.ratio) + burn(w.latency?.burn_rate)),
    h('td', {}, pct(w.http?.ratio)),
    h('td', { class: 'num' }, w.availability?.total ?? 0)));
  const firing = (report.alerts ?? []).filter((a) => a.firing);
  replaceChildren(box,
    h('p', {},
      h('span', { class: `pill slo-${report.status}` }, `Status: ${report.status}`), ' ',
      `objectives: availability ${pct(objectives.availability)}, latency ${pct(objectives.latency)} of first tokens under ${objectives.ttft_threshold_seconds ?? '?'} s`),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('caption', { class: 'visually-hidden' }, 'Service level indicators per window'),
      h('thead', {}, h('tr', {}, ['Window', 'Availability', 'First-token latency', 'HTTP', 'Turns'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))),
    h('p', {}, firing.length === 0 ? 'No burn-rate alert is firing.' : `Firing: ${firing.map((a) => `${a.name} (${a.severity})`).join(', ')}`));
}

// ---- spend and anomalies (issue 9) ----------------------------------------------------

async function refreshSpend() {
  const box = $('#spend-body');
  let data;
  try {
    data = await api('GET', SPEND_ENDPOINT);
  } catch (e) {
    replaceChildren(box, h('p', { class: 'muted' }, e.status === 404
      ? `Spend reporting is not available on this engine yet (pending: ${SPEND_ENDPOINT}). Per-message cost is shown in the chat.`
      : `Could not load spend: ${e.message}`));
    return;
  }
  const tenants = data.tenants ?? [];
  if (tenants.length === 0) {
    replaceChildren(box, h('p', { class: 'muted' }, 'No spend recorded yet.'));
    return;
  }
  replaceChildren(box, spendChart(tenants), spendTable(tenants));
}

/** Horizontal bars: spend against budget per tenant; the budget is the full track. */
function spendChart(tenants) {
  const rowHeight = 28;
  const width = 600;
  const labelWidth = 160;
  const height = tenants.length * rowHeight + 8;
  const max = Math.max(1, ...tenants.map((t) => Math.max(t.spend_micros ?? 0, t.budget_micros ?? 0)));
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'chart', 'aria-labelledby': 'spend-chart-title' },
    svg('title', { id: 'spend-chart-title' }, 'Spend against budget per tenant'));
  tenants.forEach((t, i) => {
    const y = 4 + i * rowHeight;
    const scale = (v) => ((width - labelWidth - 8) * v) / max;
    const over = t.budget_micros && t.spend_micros > t.budget_micros;
    chart.append(svg('text', { x: 0, y: y + 17, class: 'chart-label' }, t.name ?? t.tenant_id));
    if (t.budget_micros) chart.append(svg('rect', { x: labelWidth, y: y + 4, width: scale(t.budget_micros), height: 18, class: 'bar-budget' }));
    chart.append(svg('rect', { x: labelWidth, y: y + 7, width: Math.max(1, scale(t.spend_micros ?? 0)), height: 12, class: over ? 'bar-spend over' : 'bar-spend' }));
  });
  return chart;
}

function spendTable(tenants) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'visually-hidden' }, 'Spend per tenant'),
    h('thead', {}, h('tr', {}, ['Tenant', 'Spend', 'Budget', 'Used'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, tenants.map((t) => h('tr', {},
      h('th', { scope: 'row' }, t.name ?? t.tenant_id),
      h('td', { class: 'num' }, formatMicros(t.spend_micros ?? 0)),
      h('td', { class: 'num' }, t.budget_micros ? formatMicros(t.budget_micros) : 'none'),
      h('td', { class: 'num' }, t.budget_micros ? `${Math.round((100 * (t.spend_micros ?? 0)) / t.budget_micros)} %` : '—'))))));
}

async function refreshAnomalies() {
  const box = $('#anomalies-body');
  let data;
  try {
    data = await api('GET', ANOMALIES_ENDPOINT);
  } catch (e) {
    replaceChildren(box, h('p', { class: 'muted' }, e.status === 404
      ? `Anomaly detection is not available on this engine yet (pending: ${ANOMALIES_ENDPOINT}).`
      : `Could not load anomalies: ${e.message}`));
    return;
  }
  const list = data.anomalies ?? [];
  replaceChildren(box, list.length === 0
    ? h('p', { class: 'muted' }, 'No anomalies.')
    : h('ul', {}, list.map((a) => h('li', {}, `${a.at_ms ? new Date(a.at_ms).toLocaleString() + ' — ' : ''}${a.tenant_id ?? ''} ${a.kind ?? ''}: ${a.message ?? ''}`))));
}
