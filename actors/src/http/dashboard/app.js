// myco dashboard: one file, no framework, no build step, nothing loaded from elsewhere.
// Pages are hash routes (#/swarm, #/queue, #/job/ID, #/collections, #/chat, #/plan). Live
// data comes from the node's event streams: /api/events (the swarm and the queue's numbers,
// every second) and /api/jobs/ID/stream (one job's progress). Actions go through the API:
// cancel, retry, resubmit. A 401 sends the browser to /login.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));
const COLORS = ['#1f6f5c', '#d98e04', '#1565c0', '#8e24aa', '#c62828', '#00838f', '#6d4c41', '#558b2f'];

function bytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${u[i]}`;
}
function duration(s) {
  if (s == null) return '–';
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function age(ms) { return ms < 1000 ? `${ms} ms` : duration(ms / 1000); }
function time(ms) { return ms ? new Date(ms).toLocaleString() : '–'; }
function clock(ms) { return ms ? new Date(ms).toLocaleTimeString() : '–'; }
function badge(s) { return `<span class="badge ${esc(s)}">${esc(s)}</span>`; }
function nodeName(holder) { return String(holder || '').split('#')[0]; }

const state = { snap: null, listeners: [], cleanup: [], events: null };
const main = () => $('#main');

// ---------------------------------------------------------------- API

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (opts.body) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { credentials: 'same-origin', ...opts, headers });
  if (r.status === 401) {
    location.href = '/login';
    throw new Error('this node needs its API token: log in');
  }
  const text = await r.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch (_) { body = { raw: text }; }
  if (!r.ok) {
    const e = body.error || {};
    throw new Error(`${e.message || r.statusText}${e.hint ? ` (${e.hint})` : ''}`);
  }
  return body;
}

function toast(text, bad) {
  const t = document.createElement('div');
  t.className = 'toast';
  t.id = 'toast';
  if (bad) t.style.background = '#b3261e';
  t.textContent = text;
  $$('.toast').forEach((o) => o.remove());
  document.body.appendChild(t);
  setTimeout(() => t.remove(), 6000);
}

async function act(id, what) {
  try {
    const r = await api(`/api/jobs/${id}/${what}`, { method: 'POST', body: '{}' });
    if (what === 'retry') toast(`job ${id}: ${r.requeued} job(s) queued again with fresh attempts`);
    else if (what === 'resubmit') { toast(`resubmitted as job ${r.job.id}`); location.hash = `#/job/${r.job.id}`; return; }
    else toast(`job ${id}: ${JSON.stringify(r.outcome)}`);
    route();
  } catch (e) { toast(e.message, true); }
}

// ---------------------------------------------------------------- the live feed

function connect() {
  const es = new EventSource('/api/events');
  state.events = es;
  es.addEventListener('snapshot', (ev) => {
    state.snap = JSON.parse(ev.data);
    $('#live').className = 'dot on';
    const up = state.snap.swarm.filter((m) => m.status !== 'down').length;
    $('#who').textContent = `node ${state.snap.node} · ${up} of ${state.snap.swarm.length} up`;
    for (const f of state.listeners) f(state.snap);
  });
  es.onerror = () => {
    $('#live').className = 'dot off';
    if (es.readyState === EventSource.CLOSED) {
      // Closed for good (a 401, or the node went away): find out which, then try again.
      api('/health').catch(() => {});
      setTimeout(connect, 2000);
    }
  };
}

function onSnap(f) {
  state.listeners.push(f);
  if (state.snap) f(state.snap);
}

// ---------------------------------------------------------------- swarm

function swarmPage() {
  main().innerHTML = `
    <h1>Swarm</h1>
    <div id="nodes" class="grid"></div>
    <h2>Jobs done per node per minute</h2>
    <p class="muted">Leaf jobs of this node's queue by the node that ran them: another node's share is work it stole.</p>
    <div id="steal"></div>`;
  onSnap((s) => {
    $('#nodes').innerHTML = s.swarm.map(nodeCard).join('');
    $('#steal').innerHTML = stealView(s.stats ? s.stats.minutes : [], s.swarm.map((m) => m.name));
  });
}

function nodeCard(m) {
  const i = m.info;
  const status = badge(m.status);
  if (!i) {
    return `<div class="card node" data-node="${esc(m.name)}"><h3>${esc(m.name)} ${status}</h3>
      <p class="muted">No heartbeat yet.</p></div>`;
  }
  const gpus = i.caps.gpus.length
    ? i.caps.gpus.map((g) => `${esc(g.name)} (${bytes(g.vram_bytes)})`).join(', ') : 'none';
  const devices = (i.caps.devices || []).map((d) => esc(d.name)).join(', ');
  const models = i.models.length
    ? i.models.map((f) => `${esc(f.name)} <span class="muted">${bytes(f.size_bytes ?? f.bytes)}</span>`).join('<br>')
    : '<span class="muted">none</span>';
  const stages = (i.stages || []).length
    ? i.stages.map((st) => `${esc(st.model)} layers ${st.first}–${st.end - 1} <span class="muted">(${st.runs} runs)</span>`).join('<br>')
    : '<span class="muted">none</span>';
  // Slices of models it does not hold, kept to run their stages; and what it fetches now.
  const modelName = (sha) => {
    for (const f of i.models) if (f.sha256 === sha) return f.name;
    return sha.slice(0, 12);
  };
  const cached = (i.cached || []).length
    ? i.cached.map((c) => `${esc(modelName(c.source))} layers ${c.first}–${c.end - 1} <span class="muted">${bytes(c.bytes)}</span>`).join('<br>')
    : '';
  const transfers = (i.transfers || []).map((t) => {
    const pct = t.size ? Math.floor((100 * t.done) / t.size) : 0;
    return `<div class="transfer" data-done="${t.done}" data-size="${t.size}">${esc(t.what)} from ${esc(t.from)}
      <span class="bar"><span style="width:${pct}%"></span></span>
      <span class="muted">${bytes(t.done)} of ${bytes(t.size)} (${pct} %)</span></div>`;
  }).join('');
  const l = i.load;
  return `<div class="card node" data-node="${esc(m.name)}">
    <h3>${esc(m.name)} ${status}</h3>
    <dl class="kv">
      <dt>roles</dt><dd>${i.roles.map(esc).join(', ').toLowerCase()}</dd>
      <dt>CPU</dt><dd>${i.caps.cores} cores · ${esc(i.caps.cpu_brand)}</dd>
      <dt>RAM</dt><dd>${bytes(i.caps.ram_total_bytes)} (${bytes(i.caps.ram_free_bytes)} free)</dd>
      <dt>GPUs</dt><dd>${gpus}</dd>
      ${devices ? `<dt>computes on</dt><dd>${devices}</dd>` : ''}
      <dt>load</dt><dd class="load">${l.running} of ${l.slots} slots running · ${l.queued} queued</dd>
      <dt>stage memory</dt><dd>${bytes(i.stage_memory)} (${bytes(i.stage_gpu_memory)} on GPU)</dd>
      <dt>stages</dt><dd>${stages}</dd>
      <dt>models</dt><dd>${models}</dd>
      ${cached ? `<dt>cached slices</dt><dd class="cached">${cached}</dd>` : ''}
      ${transfers ? `<dt>transfers</dt><dd class="transfers">${transfers}</dd>` : ''}
      <dt>heartbeat</dt><dd>${m.status === 'self' ? 'this node' : `${age(m.heartbeat_age_ms)} ago`}</dd>
      <dt>addresses</dt><dd>cluster ${esc(i.cluster_addr)}${i.api_addr ? ` · API ${esc(i.api_addr)}` : ''}</dd>
      <dt>version</dt><dd>${esc(i.version)} (protocol ${i.protocol})</dd>
    </dl></div>`;
}

/// Stacked bars of the last 15 minutes, one colour per node, and a table of rates.
function stealView(minutes, members) {
  const now = Math.floor(Date.now() / 60000);
  const span = 15;
  const names = new Set(members);
  for (const m of minutes) for (const n of Object.keys(m.by_node)) names.add(n);
  const nodes = Array.from(names);
  const byMinute = new Map(minutes.map((m) => [m.minute, m]));
  const cols = [];
  for (let k = now - span + 1; k <= now; k += 1) cols.push(byMinute.get(k) || { minute: k, by_node: {} });
  const max = Math.max(1, ...cols.map((c) => Object.values(c.by_node).reduce((a, b) => a + b, 0)));
  const W = 1000; const H = 170; const pad = 30; const bw = (W - pad) / span;
  let bars = '';
  cols.forEach((c, x) => {
    let y = H - 16;
    nodes.forEach((n, ni) => {
      const v = c.by_node[n] || 0;
      if (!v) return;
      const h = (v / max) * (H - 30);
      y -= h;
      bars += `<rect x="${pad + x * bw + 2}" y="${y}" width="${bw - 4}" height="${h}" fill="${COLORS[ni % COLORS.length]}"><title>${esc(n)}: ${v} at ${clock(c.minute * 60000)}</title></rect>`;
    });
    if (x % 5 === 4 || x === span - 1) bars += `<text x="${pad + x * bw + bw / 2}" y="${H - 3}" text-anchor="middle">${x === span - 1 ? 'now' : `-${span - 1 - x} min`}</text>`;
  });
  bars += `<text x="2" y="12">${max}</text><text x="2" y="${H - 16}">0</text>`;
  const sum = (n, from) => cols.filter((c) => c.minute >= from).reduce((a, c) => a + (c.by_node[n] || 0), 0);
  const total = (n) => minutes.reduce((a, m) => a + (m.by_node[n] || 0), 0);
  const rows = nodes.map((n, ni) => `<tr data-node="${esc(n)}"><td><i style="background:${COLORS[ni % COLORS.length]}"></i> ${esc(n)}</td>
      <td class="this-minute">${sum(n, now)}</td><td>${(sum(n, now - 9) / 10).toFixed(1)}</td><td class="hour">${total(n)}</td></tr>`).join('');
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="jobs per node per minute">${bars}</svg>
    <div class="table legend-table"><table><thead><tr><th>node</th><th>this minute</th><th>per minute (last 10)</th><th>last hour</th></tr></thead>
    <tbody>${rows}</tbody></table></div>`;
}

// ---------------------------------------------------------------- queue

const STATES = ['queued', 'leased', 'done', 'failed', 'dead', 'cancelled'];
const KINDS = ['chunk', 'embed', 'archive', 'infer', 'pipeline', 'noop', 'batch'];

function queuePage(_, params) {
  const f = {
    state: params.get('state') || '', kind: params.get('kind') || '',
    parent: params.get('parent') || '', text: params.get('text') || '', all: params.get('all') === '1',
  };
  main().innerHTML = `
    <h1>Queue</h1>
    <div id="counts" class="counts"></div>
    <div id="kinds" class="muted"></div>
    <h2>The last hour</h2>
    <div id="hour"></div>
    <h2>Jobs</h2>
    <form id="filters" class="filters">
      <select name="state"><option value="">every state</option>${STATES.map((s) => `<option ${s === f.state ? 'selected' : ''}>${s}</option>`).join('')}</select>
      <select name="kind"><option value="">every kind</option>${KINDS.map((k) => `<option ${k === f.kind ? 'selected' : ''}>${k}</option>`).join('')}</select>
      <input name="parent" placeholder="parent job id" value="${esc(f.parent)}" size="28">
      <input name="text" placeholder="text in id or description" value="${esc(f.text)}">
      <label><input type="checkbox" name="all" ${f.all ? 'checked' : ''}> children too</label>
      <button type="submit">Filter</button>
    </form>
    <div class="table"><table id="jobs"><thead><tr><th>job</th><th>kind</th><th>state</th><th>progress</th>
      <th class="hide-narrow">description</th><th class="hide-narrow">created</th><th>attempts</th><th></th></tr></thead><tbody></tbody></table></div>`;
  $('#filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const d = new FormData(ev.target);
    const q = new URLSearchParams();
    for (const k of ['state', 'kind', 'parent', 'text']) if (d.get(k)) q.set(k, d.get(k).trim());
    if (d.get('all')) q.set('all', '1');
    location.hash = `#/queue?${q}`;
  });
  let lastList = 0;
  let loading = false;
  const load = async () => {
    if (loading) return;
    loading = true;
    lastList = Date.now();
    const q = new URLSearchParams({ limit: '50' });
    for (const k of ['state', 'kind', 'parent', 'text']) if (f[k]) q.set(k, f[k]);
    if (f.all) q.set('all', 'true');
    try {
      const r = await api(`/api/jobs?${q}`);
      const tb = $('#jobs tbody');
      if (!tb) return;
      tb.innerHTML = r.jobs.length ? r.jobs.map(jobRow).join('')
        : '<tr><td colspan="8" class="muted">No jobs match.</td></tr>';
    } catch (e) { toast(e.message, true); } finally { loading = false; }
  };
  $('#jobs').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (b) act(b.dataset.id, b.dataset.act);
  });
  let lastCounts = '';
  onSnap((s) => {
    if (!s.stats) return;
    const c = s.stats.counts;
    $('#counts').innerHTML = STATES.map((st) => `<a class="count ${st === f.state ? 'sel' : ''}" data-state="${st}" href="#/queue?state=${st}">${badge(st)}<b>${c[st]}</b></a>`).join('');
    const kinds = Object.entries(s.stats.queued_by_kind).map(([k, n]) => `${n} ${k}`).join(', ');
    const finished = s.stats.finished.map((f) => `${f.jobs} ${f.kind} ${f.state}`).join(', ');
    $('#kinds').textContent = `queued by kind: ${kinds || 'none'} · finished since the node started: ${finished || 'none'} · results waiting for their owners: ${s.stats.outbox}`;
    $('#hour').innerHTML = hourChart(s.stats.minutes);
    const key = JSON.stringify(c);
    if (key !== lastCounts || Date.now() - lastList > 3000) { lastCounts = key; load(); }
  });
  load();
}

function progressBar(p) {
  const total = Math.max(1, p.total);
  const done = (100 * p.done) / total;
  const bad = (100 * p.failed) / total;
  return `<div class="bar" title="${p.done} done, ${p.failed} failed of ${p.total}"><span style="width:${done}%"></span><span class="bad" style="width:${bad}%"></span></div>`;
}

function jobRow(j) {
  const live = !['done', 'dead', 'cancelled'].includes(j.state);
  const retry = j.state === 'dead' || j.state === 'cancelled' || (j.state === 'done' && j.progress.failed > 0);
  const btn = live ? `<button class="secondary" data-act="cancel" data-id="${j.id}">Cancel</button>`
    : retry ? `<button class="secondary" data-act="retry" data-id="${j.id}">Retry</button>` : '';
  const items = j.progress.items_total ? ` <span class="muted">${j.progress.items_done}/${j.progress.items_total}</span>` : '';
  return `<tr data-id="${j.id}" data-state="${j.state}"><td class="id"><a href="#/job/${j.id}">${j.id}</a></td><td>${esc(j.kind)}</td>
    <td class="state">${badge(j.state)}</td><td>${progressBar(j.progress)}${items}</td>
    <td class="hide-narrow">${esc(j.description).slice(0, 120)}</td><td class="hide-narrow">${clock(j.created_ms)}</td>
    <td>${j.attempts}/${j.max_attempts}</td><td>${btn}</td></tr>`;
}

/// Bars: jobs done per minute; line: their mean latency.
function hourChart(minutes) {
  const now = Math.floor(Date.now() / 60000);
  const W = 1000; const H = 160; const pad = 40; const bw = (W - 2 * pad) / 60;
  const byMinute = new Map(minutes.map((m) => [m.minute, m]));
  const cols = [];
  for (let k = now - 59; k <= now; k += 1) cols.push(byMinute.get(k) || { minute: k, done: 0, dead: 0, cancelled: 0, latency_ms_sum: 0 });
  const maxN = Math.max(1, ...cols.map((c) => c.done + c.dead));
  const lat = cols.map((c) => (c.done ? c.latency_ms_sum / c.done : null));
  const maxL = Math.max(1, ...lat.filter((v) => v != null));
  let g = '';
  let line = '';
  cols.forEach((c, x) => {
    const h = (c.done / maxN) * (H - 30);
    const hd = (c.dead / maxN) * (H - 30);
    const X = pad + x * bw;
    if (c.done) g += `<rect x="${X + 1}" y="${H - 16 - h}" width="${bw - 2}" height="${h}" fill="#1f6f5c"><title>${clock(c.minute * 60000)}: ${c.done} done, ${c.dead} dead</title></rect>`;
    if (c.dead) g += `<rect x="${X + 1}" y="${H - 16 - h - hd}" width="${bw - 2}" height="${hd}" fill="#b3261e"></rect>`;
    if (lat[x] != null) line += `${line ? 'L' : 'M'}${X + bw / 2},${H - 16 - (lat[x] / maxL) * (H - 30)}`;
  });
  if (line) g += `<path d="${line}" fill="none" stroke="#d98e04" stroke-width="2"></path>`;
  g += `<text x="2" y="12">${maxN}/min</text><text x="${W - 2}" y="12" text-anchor="end">${(maxL / 1000).toFixed(1)} s</text>`;
  g += `<text x="${pad}" y="${H - 3}">-60 min</text><text x="${W - pad}" y="${H - 3}" text-anchor="end">now</text>`;
  const done = cols.reduce((a, c) => a + c.done, 0);
  const sumL = cols.reduce((a, c) => a + c.latency_ms_sum, 0);
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="throughput and latency">${g}</svg>
    <div class="legend"><span><i style="background:#1f6f5c"></i>done per minute</span><span><i style="background:#b3261e"></i>dead</span>
    <span><i style="background:#d98e04"></i>mean submit-to-done latency</span>
    <span class="muted">${done} done in the hour${done ? `, mean latency ${(sumL / done / 1000).toFixed(2)} s` : ''}</span></div>`;
}

// ---------------------------------------------------------------- a job

function jobPage([id]) {
  main().innerHTML = `<h1>Job <span class="id">${esc(id)}</span> <span id="jstate"></span></h1>
    <div id="jbody"><p class="muted">Loading…</p></div>`;
  let task = null;
  let es = null;
  const render = (j) => {
    $('#jstate').innerHTML = badge(j.state);
    const p = j.progress;
    const live = !['done', 'dead', 'cancelled'].includes(j.state);
    const retry = j.state === 'dead' || j.state === 'cancelled' || (j.state === 'done' && p.failed > 0);
    const pct = p.items_total ? (100 * p.items_done) / p.items_total : (100 * (p.done + p.failed)) / Math.max(1, p.total);
    const history = j.history.map((h) => `<tr><td>${clock(h.at_ms)}</td><td>${badge(h.state)}</td><td>${esc(h.note || '')}</td></tr>`).join('');
    $('#jbody').innerHTML = `
      <div class="card progress-big">
        ${progressBar(p)}
        <p id="jprogress">${p.done} of ${p.total} done${p.failed ? `, ${p.failed} failed` : ''}
          ${p.items_total ? ` · ${p.items_done} of ${p.items_total} documents (${pct.toFixed(0)} %)` : ''}
          ${p.outputs ? ` · ${p.outputs} chunks` : ''}${p.outputs_per_s ? ` · ${p.outputs_per_s.toFixed(1)}/s` : ''}
          ${p.eta_s != null ? ` · <b>ETA ${duration(p.eta_s)}</b>` : ''}</p>
      </div>
      <div class="actions">
        <button id="cancel" class="danger" ${live ? '' : 'disabled'}>Cancel</button>
        <button id="retry" ${retry ? '' : 'disabled'}>Retry</button>
        <button id="resubmit" class="secondary" ${live ? 'disabled' : ''}>Resubmit</button>
        ${p.total > 1 ? `<a href="#/queue?parent=${esc(j.id)}&all=1">its ${p.total} children</a>` : ''}
      </div>
      ${j.error ? `<p class="error" id="jerror"><b>${esc(j.error.class || '')} error:</b> ${esc(j.error.message)}</p>` : ''}
      ${j.waiting ? `<p class="muted">${esc(j.waiting)}</p>` : ''}
      <div class="card"><dl class="kv">
        <dt>kind</dt><dd>${esc(j.kind)}</dd>
        <dt>description</dt><dd>${esc(j.description)}</dd>
        <dt>attempts</dt><dd id="jattempts">${j.attempts} of ${j.max_attempts}${j.lost ? ` · lost ${j.lost}` : ''}</dd>
        <dt>running on</dt><dd>${j.holder ? esc(nodeName(j.holder)) : '–'}</dd>
        <dt>priority</dt><dd>${j.priority}</dd>
        <dt>created</dt><dd>${time(j.created_ms)}</dd>
        <dt>finished</dt><dd>${time(j.finished_ms)}</dd>
        ${j.parent ? `<dt>parent</dt><dd><a href="#/job/${esc(j.parent)}">${esc(j.parent)}</a></dd>` : ''}
        ${j.idempotency_key ? `<dt>idempotency key</dt><dd>${esc(j.idempotency_key)}</dd>` : ''}
      </dl></div>
      <h2>History</h2>
      <div class="table"><table id="history"><thead><tr><th>at</th><th>state</th><th>note</th></tr></thead><tbody>${history}</tbody></table></div>
      <h2>Spec</h2><pre id="spec">${esc(JSON.stringify(task, null, 2))}</pre>
      <h2>Result</h2><pre id="result" class="muted">${j.state === 'done' ? 'Loading…' : 'No result yet.'}</pre>`;
    $('#cancel').onclick = () => act(j.id, 'cancel');
    $('#retry').onclick = () => act(j.id, 'retry');
    $('#resubmit').onclick = () => act(j.id, 'resubmit');
    if (j.state === 'done') preview(j.id);
  };
  const follow = () => {
    es = new EventSource(`/api/jobs/${encodeURIComponent(id)}/stream`);
    es.addEventListener('progress', (ev) => render(JSON.parse(ev.data)));
    es.addEventListener('end', (ev) => { render(JSON.parse(ev.data)); es.close(); });
  };
  state.cleanup.push(() => es && es.close());
  api(`/api/jobs/${encodeURIComponent(id)}`).then((j) => {
    task = j.task;
    render(j);
    follow();
  }).catch((e) => { $('#jbody').innerHTML = `<p class="error">${esc(e.message)}</p>`; });
}

/// The first few KiB of a result (JSON Lines), read and then let go.
async function preview(id) {
  try {
    const r = await fetch(`/api/jobs/${id}/result`, { credentials: 'same-origin' });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    while (text.length < 4096) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    reader.cancel().catch(() => {});
    const el = $('#result');
    if (el) {
      el.classList.remove('muted');
      el.textContent = text.length >= 4096 ? `${text.slice(0, 4096)}\n… (more)` : (text || '(empty)');
    }
  } catch (e) {
    const el = $('#result');
    if (el) el.textContent = `cannot read the result: ${e.message}`;
  }
}

// ---------------------------------------------------------------- collections

async function collectionsPage() {
  main().innerHTML = `<h1>Collections</h1><div id="colls" class="table"></div>
    <h2>Search</h2>
    <form id="search" class="filters">
      <select name="collection" id="qcoll"></select>
      <input name="text" id="qtext" placeholder="what are you looking for?" size="40" required>
      <select name="mode"><option>hybrid</option><option>vector</option><option>keyword</option></select>
      <input name="k" type="number" min="1" max="50" value="5" style="width:4.5rem">
      <button type="submit" id="qgo">Search</button>
    </form>
    <div id="hits"></div>`;
  try {
    const { collections } = await api('/api/collections');
    $('#colls').innerHTML = collections.length ? `<table><thead><tr><th>name</th><th>model</th><th>files</th><th>chunks</th><th>size</th><th>last run</th><th class="hide-narrow">archive</th></tr></thead><tbody>
      ${collections.map((c) => `<tr data-name="${esc(c.name)}"><td>${esc(c.name)}${c.error ? ` <span class="error">${esc(c.error)}</span>` : ''}</td><td>${esc(c.model)}</td><td>${c.files}</td><td>${c.chunks}</td>
      <td>${bytes(c.bytes)}</td><td>${time(c.updated_ms)}</td><td class="hide-narrow">${esc(c.input)}</td></tr>`).join('')}</tbody></table>`
      : '<p class="muted" style="padding:.6rem">No collections yet: an archive job makes one (<code>myco submit archive.toml</code>).</p>';
    $('#qcoll').innerHTML = collections.map((c) => `<option>${esc(c.name)}</option>`).join('');
  } catch (e) { $('#colls').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  $('#search').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const d = new FormData(ev.target);
    $('#hits').innerHTML = '<p class="muted">Searching…</p>';
    try {
      const r = await api('/api/query', {
        method: 'POST',
        body: JSON.stringify({ collection: d.get('collection'), text: d.get('text'), mode: d.get('mode'), k: Number(d.get('k')) }),
      });
      $('#hits').innerHTML = `<p class="muted">${r.hits.length} hits among ${r.searched} chunks (${esc(r.mode)}; embedding ${r.embed_ms.toFixed(0)} ms, search ${r.search_ms.toFixed(1)} ms)</p>`
        + r.hits.map((h) => `<div class="card hit"><div class="src"><b>#${h.rank}</b> · score ${h.score.toFixed(3)} · <span class="source">${esc(h.source)}</span>
          bytes ${h.start}–${h.end}${h.title ? ` · ${esc(h.title)}` : ''}${h.headings.length ? ` · ${h.headings.map(esc).join(' › ')}` : ''}</div>
          <div class="text">${esc(h.text.length > 700 ? `${h.text.slice(0, 700)}…` : h.text)}</div></div>`).join('');
    } catch (e) { $('#hits').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  });
}

// ---------------------------------------------------------------- chat

const chat = { messages: [] };

async function llmModels() {
  const { data } = await api('/v1/models');
  return data.filter((m) => m.kind === 'llm');
}

async function chatPage() {
  main().innerHTML = `<h1>Chat</h1>
    <div class="row"><label>model <select id="cmodel"></select></label>
      <label>max tokens <input id="cmax" type="number" min="1" max="4096" value="128" style="width:5rem"></label>
      <button class="secondary" id="cclear" type="button">New chat</button></div>
    <div id="chatlog" class="chatlog"></div>
    <form id="chatform"><textarea id="cprompt" placeholder="Ask the swarm…" required></textarea>
      <div class="row"><button id="csend" type="submit">Send</button><span id="cstatus" class="muted"></span></div></form>`;
  const draw = () => {
    $('#chatlog').innerHTML = chat.messages.map((m) => `<div class="msg ${m.role}">${esc(m.content)}${m.meta ? `<span class="meta">${esc(m.meta)}</span>` : ''}</div>`).join('');
  };
  draw();
  try {
    const models = await llmModels();
    $('#cmodel').innerHTML = models.length
      ? models.map((m) => `<option value="${esc(m.id)}">${esc(m.id)} · ${esc(m.architecture || '')} · on ${esc((m.nodes || []).join(', '))}</option>`).join('')
      : '<option value="">no model in the swarm</option>';
  } catch (e) { toast(e.message, true); }
  $('#cclear').onclick = () => { chat.messages = []; draw(); };
  $('#chatform').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const prompt = $('#cprompt').value.trim();
    const model = $('#cmodel').value;
    if (!prompt || !model) return;
    $('#cprompt').value = '';
    chat.messages.push({ role: 'user', content: prompt });
    const answer = { role: 'assistant', content: '', meta: 'waiting for the first token…' };
    chat.messages.push(answer);
    draw();
    $('#csend').disabled = true;
    try {
      await stream(model, answer, draw);
    } catch (e) {
      answer.meta = `failed: ${e.message}`;
      draw();
    } finally { $('#csend').disabled = false; }
  });
}

async function stream(model, answer, draw) {
  const messages = chat.messages.filter((m) => m !== answer).map(({ role, content }) => ({ role, content }));
  const started = performance.now();
  const r = await fetch('/v1/chat/completions', {
    method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages, stream: true, max_tokens: Number($('#cmax').value) || 128 }),
  });
  if (r.status === 401) { location.href = '/login'; return; }
  if (!r.ok) {
    const e = await r.json().catch(() => ({}));
    throw new Error((e.error && e.error.message) || r.statusText);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  let first = null;
  let pieces = 0;
  let usage = null;
  let job = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of frame.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') continue;
        const c = JSON.parse(data);
        if (c.error) throw new Error(c.error.message);
        job = job || String(c.id || '').replace(/^chatcmpl-/, '');
        const text = c.choices && c.choices[0] && c.choices[0].delta && c.choices[0].delta.content;
        if (text) {
          first = first || performance.now();
          pieces += 1;
          answer.content += text;
          const s = (performance.now() - first) / 1000;
          answer.meta = `streaming · ${pieces} pieces${s > 0.2 ? ` · ${(pieces / s).toFixed(1)} tokens/s` : ''}`;
          draw();
        }
        if (c.usage) usage = c.usage;
      }
    }
  }
  const end = performance.now();
  const tokens = usage ? usage.completion_tokens : pieces;
  const gen = first ? (end - first) / 1000 : 0;
  answer.meta = `${tokens} tokens · ${gen > 0 ? (tokens / gen).toFixed(1) : '–'} tokens/s · first token after ${first ? ((first - started) / 1000).toFixed(2) : '–'} s`;
  draw();
  if (job) {
    try {
      const j = await api(`/api/jobs/${job}`);
      const nodes = [...new Set(j.history.filter((h) => h.state === 'leased' && h.note).map((h) => nodeName(h.note)))];
      answer.meta += ` · served by ${nodes.join(', ') || 'this node'} (job ${job})`;
      const res = await fetch(`/api/jobs/${job}/result`, { credentials: 'same-origin' });
      if (res.ok) {
        const g = JSON.parse((await res.text()).split('\n')[0] || '{}');
        if (g.stages && g.stages.length) answer.meta += ` · stages ${g.stages.map((s) => `${s.node} ${s.first}–${s.end - 1}`).join(', ')}`;
      }
    } catch (_) { /* the answer stands without its provenance */ }
    draw();
  }
}

// ---------------------------------------------------------------- plan

async function planPage(_, params) {
  main().innerHTML = `<h1>Plan</h1>
    <p class="muted">How a pipeline job of a model would be placed now: each node a box sized by the memory it offers to stages, its layer range inside.</p>
    <form id="planform" class="filters"><select id="pmodel" name="model"></select>
      <label>context <input name="n_ctx" type="number" min="8" value="${esc(params.get('n_ctx') || '4096')}" style="width:6rem"></label>
      <button type="submit">Plan</button></form>
    <div id="plan"></div>`;
  try {
    const models = await llmModels();
    $('#pmodel').innerHTML = models.map((m) => `<option ${m.id === params.get('model') ? 'selected' : ''}>${esc(m.id)}</option>`).join('')
      || '<option value="">no model in the swarm</option>';
  } catch (e) { toast(e.message, true); }
  $('#planform').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const d = new FormData(ev.target);
    location.hash = `#/plan?${new URLSearchParams({ model: d.get('model'), n_ctx: d.get('n_ctx') })}`;
  });
  const model = params.get('model') || $('#pmodel').value;
  if (!model) return;
  try {
    const p = await api(`/api/plan?${new URLSearchParams({ model, n_ctx: params.get('n_ctx') || '4096' })}`);
    $('#plan').innerHTML = planPicture(p);
  } catch (e) { $('#plan').innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}

function planPicture(p) {
  const W = 900; const gap = 12;
  const free = p.nodes.reduce((a, n) => a + n.free_bytes, 0) || 1;
  const usable = W - gap * Math.max(0, p.nodes.length - 1);
  let x = 0;
  let g = '';
  p.nodes.forEach((n, i) => {
    const w = Math.max(120, (n.free_bytes / free) * usable);
    const color = COLORS[i % COLORS.length];
    g += `<g class="plan-node" data-node="${esc(n.name)}"><rect x="${x}" y="0" width="${w}" height="120" rx="8" fill="#fff" stroke="${color}" stroke-width="2"></rect>
      <text x="${x + 8}" y="18" style="font-size:13px;fill:#1d2421;font-weight:600">${esc(n.name)}</text>
      <text x="${x + 8}" y="34">${bytes(n.free_bytes)} free${n.gpu_bytes ? ` (${bytes(n.gpu_bytes)} GPU)` : ''}</text>`;
    let sx = x + 8;
    for (const s of p.stages.filter((st) => st.node === n.name)) {
      const sw = Math.max(110, (s.bytes / Math.max(1, n.free_bytes)) * (w - 16));
      g += `<rect x="${sx}" y="48" width="${Math.min(sw, x + w - 8 - sx)}" height="56" rx="5" fill="${color}" opacity=".85"></rect>
        <text x="${sx + 6}" y="70" style="fill:#fff;font-size:12px">layers ${s.first}–${s.end - 1}</text>
        <text x="${sx + 6}" y="88" style="fill:#fff">${bytes(s.bytes)}</text>`;
      sx += sw + 4;
    }
    g += '</g>';
    x += w + gap;
  });
  const total = p.nodes.length ? x - gap : W;
  const rows = p.stages.map((s, i) => `<tr><td>${i}</td><td>${esc(s.node)}</td><td>${s.first}–${s.end - 1}</td><td>${bytes(s.bytes)}</td></tr>`).join('');
  return `<p>${esc(p.model)} · ${esc(p.architecture)} · ${p.layers} layers · ${bytes(p.total_bytes)} with the KV cache at ${p.n_ctx} tokens (${bytes(p.kv_bytes_per_layer)} a layer)</p>
    ${p.error ? `<p class="error">No plan: ${esc(p.error)}</p>` : ''}
    <svg class="chart" viewBox="0 0 ${Math.max(total, 200)} 122" role="img" aria-label="the plan">${g}</svg>
    ${rows ? `<div class="table"><table><thead><tr><th>stage</th><th>node</th><th>layers</th><th>memory</th></tr></thead><tbody>${rows}</tbody></table></div>` : ''}`;
}

// ---------------------------------------------------------------- routing

const pages = { swarm: swarmPage, queue: queuePage, job: jobPage, collections: collectionsPage, chat: chatPage, plan: planPage };

function route() {
  for (const f of state.cleanup.splice(0)) f();
  state.listeners = [];
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const [name, ...rest] = path.split('/');
  const page = pages[name] ? name : 'swarm';
  $$('header nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === (page === 'job' ? 'queue' : page)));
  pages[page](rest, new URLSearchParams(query || ''));
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => { connect(); route(); });
