// Drover dashboard: plain JavaScript, no build step, no dependencies.
// Live numbers come from /api/usage-stream (Server-Sent Events); the rest
// is polled from the routes Drover serves to every client.
//
// The page shows what its key may see. The key is kept for this tab only
// (sessionStorage), sent as the Authorization header, and put in a URL only
// for the EventSource of /api/usage-stream, which cannot send headers. A
// client key sees its own usage; admin-only panels say so.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
// who: the key the page acts as, learned from the answers (never asked of
// a route of its own): the live snapshot's scope and key id, the
// analytics' caller, and /health's detail, which only an admin key gets.
const state = { usage: null, health: null, tags: [], ps: [], range: '1h', rangeKeys: null, rangeAPIs: null,
  who: { keyID: '', admin: null } };

// ---------- formatting ----------
const nf = new Intl.NumberFormat();
function num(n) { return n == null ? '–' : nf.format(n); }
function compact(n) {
  if (n == null) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
  return nf.format(Math.round(n));
}
function bytes(n) {
  if (!n) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(n >= 10 || i === 0 ? 0 : 1) + ' ' + u[i];
}
function until(iso) {
  if (!iso) return '';
  const t = new Date(iso);
  if (isNaN(t) || t.getFullYear() < 2000) return '';
  const s = Math.round((t - Date.now()) / 1000);
  const hm = t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (s > 3e8) return 'forever';
  if (s <= 0) return 'expiring';
  if (s < 90) return `${hm} (in ${s}s)`;
  if (s < 5400) return `${hm} (in ${Math.round(s / 60)}m)`;
  return `${hm} (in ${Math.round(s / 3600)}h)`;
}
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'style') e.style.cssText = v; // CSSOM: allowed by the page's CSP, unlike a style attribute
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
function fill(tbody, rows, empty, cols) {
  tbody.replaceChildren(...(rows.length ? rows : [el('tr', { class: 'empty' }, el('td', { colspan: cols, text: empty }))]));
}
function toast(msg, bad) {
  const t = $('#toast');
  t.textContent = msg;
  t.className = bad ? 'bad' : '';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 4000);
}

// ---------- API access ----------
const KEY = 'drover.apiKey';
function apiKey() { return sessionStorage.getItem(KEY) || ''; }

// takeKeyFromURL reads a key handed over as /?api_key=... (a link from
// droverctl or a runbook), keeps it for this tab and takes it out of the
// address bar and history, so the URL left behind holds no secret. Keys
// kept by older versions of the page in localStorage are dropped.
function takeKeyFromURL() {
  localStorage.removeItem(KEY);
  const u = new URL(location.href);
  if (!u.searchParams.has('api_key')) return;
  const k = (u.searchParams.get('api_key') || '').trim();
  if (k) sessionStorage.setItem(KEY, k);
  u.searchParams.delete('api_key');
  history.replaceState(history.state, '', u.pathname + u.search + u.hash);
}
takeKeyFromURL();

class Unauthorized extends Error {}
// Dropped: an answer for a key the page no longer uses (signed out or
// replaced while it was on its way); it must not be shown.
class Dropped extends Error {}
function quiet(e) { return e instanceof Unauthorized || e instanceof Dropped; }

// session aborts every request made with the key in use when that key
// goes, so no answer for one key lands on the page of the next.
let session = new AbortController();

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const k = apiKey();
  if (k) headers.Authorization = 'Bearer ' + k;
  if (opts.body && !headers['Content-Type']) headers['Content-Type'] = 'application/json';
  const signal = session.signal;
  let res;
  try {
    res = await fetch(path, Object.assign({}, opts, { headers, signal }));
  } catch (e) {
    if (signal.aborted) throw new Dropped('key changed');
    throw e;
  }
  if (apiKey() !== k) throw new Dropped('key changed');
  if (res.status === 401) {
    // A refused key is of no further use: forget it and ask again.
    if (k) forget();
    askKey(k ? 'The key was refused.' : 'Drover asks for an API key.');
    throw new Unauthorized('unauthorized');
  }
  if (res.ok && path !== '/health') {
    state.keyOK = true; // a route that needs a key accepted it
    settleRole();
  }
  return res;
}
async function getJSON(path, opts) {
  const signal = session.signal;
  const res = await api(path, opts);
  const body = await res.json().catch(() => ({}));
  if (signal.aborted) throw new Dropped('key changed');
  if (!res.ok) {
    const e = new Error(body.error || `${res.status} ${res.statusText}`);
    e.status = res.status;
    e.body = body;
    throw e;
  }
  return body;
}

function askKey(reason) {
  const d = $('#key-dialog');
  if (d.open) return;
  $('#key-reason').textContent = (reason ? reason + ' ' : '') + 'It is kept for this tab only (sessionStorage) and sent as a header.';
  $('#key-input').value = '';
  d.showModal();
}

// forget clears everything the last key was shown.
function forget() {
  session.abort();
  session = new AbortController();
  sessionStorage.removeItem(KEY);
  state.usage = null; state.health = null; state.tags = []; state.ps = [];
  state.rangeKeys = null; state.rangeAPIs = null; chartData = null; state.limits = null; state.limitsError = '';
  state.who = { keyID: '', admin: null };
  state.keyOK = false;
  for (const tb of document.querySelectorAll('main tbody')) tb.replaceChildren();
  for (const v of document.querySelectorAll('.tile .value')) v.textContent = '–';
  for (const v of document.querySelectorAll('.tile .sub')) v.textContent = '';
  $('#chart').replaceChildren();
  $('#chart-legend').replaceChildren();
  $('#limits-note').textContent = '';
  renderWho();
}

function setupKeyDialog() {
  $('#key-button').addEventListener('click', () => askKey(''));
  $('#sign-out').addEventListener('click', () => {
    forget();
    if (source) source.close();
    setConn('signed out');
    askKey('Signed out.');
  });
  $('#key-dialog').addEventListener('close', () => {
    const v = $('#key-dialog').returnValue;
    if (v === 'save') {
      const k = $('#key-input').value.trim();
      if (!k) return;
      forget();
      sessionStorage.setItem(KEY, k);
      renderWho();
    } else {
      return;
    }
    connect();
    refreshAll();
  });
}

// ---------- who the page acts as ----------
function learnCaller(c) {
  if (!c || typeof c !== 'object') return;
  if (c.key_id) state.who.keyID = c.key_id;
  if (typeof c.all_keys === 'boolean') state.who.admin = c.all_keys;
  renderWho();
}

// renderWho says which key the page acts as and what it may see, and
// hides what only an admin may do.
function renderWho() {
  const { keyID, admin } = state.who;
  const line = $('#whoami');
  const stored = apiKey() !== '';
  $('#sign-out').hidden = !stored;
  document.body.classList.toggle('client', admin === false);
  document.body.classList.toggle('admin', admin === true);
  if (admin === null) {
    line.textContent = '';
    return;
  }
  const id = keyID ? ' ' + keyID : '';
  if (admin && !stored) line.textContent = 'open access (no keys configured) · sees every key\'s usage';
  else if (admin) line.textContent = `admin key${id} · sees every key's usage`;
  else line.textContent = `client key${id} · sees only its own usage`;
  line.dataset.role = admin ? 'admin' : 'client';
  line.dataset.key = keyID;
}

// ---------- theme ----------
function setupTheme() {
  const saved = localStorage.getItem('drover.theme');
  if (saved) document.documentElement.dataset.theme = saved;
  $('#theme-button').addEventListener('click', () => {
    const dark = document.documentElement.dataset.theme === 'dark' ||
      (!document.documentElement.dataset.theme && matchMedia('(prefers-color-scheme: dark)').matches);
    const next = dark ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    localStorage.setItem('drover.theme', next);
    drawChart();
  });
}

// ---------- live usage (SSE) ----------
let source = null;
let lastMessage = 0;

function setConn(s, title) {
  const p = $('#conn-status');
  p.dataset.state = s;
  p.textContent = s;
  p.title = title || '';
}

function connect() {
  if (source) source.close();
  const k = apiKey();
  source = new EventSource('/api/usage-stream' + (k ? '?api_key=' + encodeURIComponent(k) : ''));
  source.onopen = () => setConn('live', 'streaming /api/usage-stream');
  source.onmessage = (e) => {
    lastMessage = Date.now();
    setConn('live', 'streaming /api/usage-stream');
    state.usage = JSON.parse(e.data);
    // The snapshot says whose usage it holds: every key's, or one key's.
    const sc = state.usage.scope;
    if (sc === 'all' || sc === 'key') learnCaller({ key_id: state.usage.key_id, all_keys: sc === 'all' });
    renderUsage();
  };
  source.onerror = async () => {
    setConn('reconnecting');
    // EventSource hides the status; ask once whether a key is the problem.
    try { await api('/api/usage'); } catch (e) { if (e instanceof Unauthorized) { setConn('unauthorized'); source.close(); } }
  };
}

function sumCounts(m) {
  let n = 0;
  for (const models of Object.values(m || {})) for (const v of Object.values(models)) n += v;
  return n;
}

function capFor(backend) {
  const b = (state.health?.backends || []).find((x) => x.name === backend);
  return b ? b.max_concurrency : 0;
}

function renderUsage() {
  const u = state.usage;
  if (!u) return;
  // In-flight counts and the queue are every key's requests: a client
  // key's snapshot leaves them out, and the page says so.
  const own = u.scope === 'key';
  $('#replica').textContent = u.replica ? 'replica ' + u.replica : '';
  $('#fleet-inflight').textContent = own ? '–' : num(u.in_flight);
  $('#local-inflight').textContent = own ? 'admin only' : `${num(sumCounts(u.local_usage_counts))} on this replica`;
  $('#queue-length').textContent = own ? '–' : num(u.queue_length);
  const f = u.fleet || {};
  $('#fleet-mode').textContent = f.mode === 'fleet' ? `fleet sync: ${(f.peers || []).length} other replica(s)` : `fleet sync off${f.reason ? ': ' + f.reason : ''}`;
  let total = 0;
  for (const models of Object.values(u.token_usage_counts || {})) for (const v of Object.values(models)) total += v;
  $('#tokens-total').textContent = compact(total);
  $('#tokens-total').title = num(total);
  const src = u.token_source || {};
  const ts = $('#token-source');
  ts.textContent = src.mode === 'fleet' ? 'whole fleet (ClickHouse + stream)' : 'this replica only';
  ts.title = src.reason || '';

  // In flight per backend and model.
  const rows = [];
  const entries = [];
  for (const [ep, models] of Object.entries(u.usage_counts || {})) {
    for (const [m, n] of Object.entries(models)) if (n > 0) entries.push([ep, m, n]);
  }
  entries.sort((a, b) => a[0].localeCompare(b[0]) || b[2] - a[2] || a[1].localeCompare(b[1]));
  for (const [ep, m, n] of entries) {
    const local = u.local_usage_counts?.[ep]?.[m] || 0;
    const cap = capFor(ep);
    const pct = cap ? Math.min(100, (100 * n) / cap) : 0;
    rows.push(el('tr', { 'data-backend': ep, 'data-model': m },
      el('td', { text: ep }), el('td', { text: m }),
      el('td', { class: 'num n', text: num(n) }), el('td', { class: 'num', text: num(local) }),
      el('td', {}, el('div', { class: 'bar' + (cap && n >= cap ? ' full' : ''), title: cap ? `${n} of ${cap}` : `${n}` },
        el('i', { style: `width:${pct}%` })))));
  }
  fill($('#inflight tbody'), rows, own ? 'Admin only: in-flight counts cover every key\'s requests.' : 'Nothing in flight.', 5);

  // Totals per backend and model.
  const trs = [];
  const tot = [];
  for (const [ep, models] of Object.entries(u.totals || {})) for (const [m, c] of Object.entries(models)) tot.push([ep, m, c]);
  tot.sort((a, b) => (b[2].input_tokens + b[2].output_tokens) - (a[2].input_tokens + a[2].output_tokens));
  for (const [ep, m, c] of tot) {
    trs.push(el('tr', {}, el('td', { text: ep }), el('td', { text: m }), el('td', { class: 'num', text: num(c.requests) }),
      el('td', { class: 'num', text: num(c.input_tokens) }), el('td', { class: 'num', text: num(c.output_tokens) }),
      el('td', { class: 'num', text: num(c.input_tokens + c.output_tokens) })));
  }
  fill($('#totals tbody'), trs, 'No requests yet.', 6);
  renderKeys();
  renderBackends();
}

// ---------- backends ----------
// /health answers anyone, in detail (backends, errors) only for an admin
// key: its detail is how the page learns the key's role.
async function loadHealth() {
  try {
    const signal = session.signal;
    const res = await api('/health');
    const h = await res.json();
    if (signal.aborted) throw new Dropped('key changed');
    state.health = h;
  } catch (e) {
    if (!quiet(e)) $('#health-status').textContent = 'health unavailable: ' + e.message;
    return;
  }
  // Without a stored key the page learns nothing from /health: a
  // public answer then means only that no key was shown.
  settleRole();
  renderBackends();
}

// settleRole: /health in detail means an admin key; in brief, for a key
// that other routes accepted, a client key.
function settleRole() {
  const h = state.health;
  if (!h) return;
  if (Array.isArray(h.backends)) learnCaller({ all_keys: true });
  else if (state.keyOK) learnCaller({ all_keys: false });
}

function renderBackends() {
  const h = state.health;
  if (!h) return;
  if (!Array.isArray(h.backends)) {
    $('#backends-usable').textContent = h.status || '–';
    $('#health-status').textContent = 'detail for admin keys only';
    $('#affinity-sub').textContent = 'admin only';
    fill($('#backends tbody'), [], 'Admin only: backends and their errors need an admin key.', 7);
    return;
  }
  renderAffinity(h.affinity);
  const bs = h.backends;
  const usable = bs.filter((b) => b.health?.healthy).length;
  $('#backends-usable').textContent = `${usable} / ${bs.length}`;
  $('#health-status').textContent = h.status || '';
  const u = state.usage?.usage_counts || {};
  const rows = bs.map((b) => {
    const st = b.health?.state || '?';
    const inflight = Object.values(u[b.name] || {}).reduce((a, n) => a + n, 0);
    return el('tr', { 'data-backend': b.name },
      el('td', { text: b.name }), el('td', { class: 'muted', text: b.url }), el('td', { text: b.type || 'ollama' }),
      el('td', {}, el('span', { class: 'state ' + st, text: st })),
      el('td', { class: 'num n', text: num(inflight) }), el('td', { class: 'num', text: num(b.max_concurrency) }),
      el('td', { class: 'err', title: b.health?.last_error || '', text: b.health?.last_error || '' }));
  });
  fill($('#backends tbody'), rows, 'No backends configured.', 7);
}

// renderAffinity shows this replica's cache-affine routing (docs/routing.md):
// the share of ranked requests sent where their prompt prefix or session
// was cached, and the share of prompt bytes the chosen backends held.
function renderAffinity(a) {
  if (!a) return;
  const ranked = (a.hits || 0) + (a.misses || 0) + (a.overrides || 0);
  if (a.strategy !== 'prefix' && a.strategy !== 'session') {
    $('#affinity-hit').textContent = 'off';
    $('#affinity-sub').textContent = `strategy ${a.strategy}`;
    return;
  }
  $('#affinity-hit').textContent = ranked ? pct(a.hit_rate) : '–';
  $('#affinity-sub').textContent = `${pct(a.cached_rate)} of prompt bytes sent where indexed; ${num(a.overrides)} over the load bound; ${num(a.index_entries)} indexed (this replica)`;
}

function pct(x) { return (100 * (x || 0)).toFixed(1) + ' %'; }

// ---------- models ----------
// loadModels lists the models the key may use; where each is loaded
// (/api/ps_details) is an admin's view, left empty for a client key.
async function loadModels() {
  try {
    const adminOnly = (p) => getJSON(p).catch((e) => { if (e.status === 403) return { models: [], denied: true }; throw e; });
    const [tags, ps] = await Promise.all([getJSON('/api/tags'), adminOnly('/api/ps_details')]);
    state.tags = tags.models || [];
    state.ps = ps.models || [];
    state.psDenied = !!ps.denied;
  } catch (e) {
    if (!quiet(e)) toast('Could not list models: ' + e.message, true);
    return;
  }
  renderModels();
}

function baseName(n) { return n && !n.includes(':') ? n + ':latest' : n; }

function renderModels() {
  const rows = state.tags.slice().sort((a, b) => a.name.localeCompare(b.name)).map((m) => {
    const loaded = state.ps.filter((p) => baseName(p.name || p.model) === baseName(m.name));
    const d = m.details || {};
    return el('tr', { 'data-model': m.name },
      el('td', {}, el('strong', { text: m.name })),
      el('td', { class: 'num', text: bytes(m.size) }),
      el('td', { text: d.parameter_size || '' }),
      el('td', { text: d.quantization_level || '' }),
      el('td', {}, ...(m.endpoints || []).map((e) => el('span', { class: 'chip', text: e }))),
      el('td', {}, ...(state.psDenied ? [el('span', { class: 'muted', text: 'admin only' })] :
        loaded.map((p) => el('span', { class: 'chip loaded', title: p.size_vram ? `${bytes(p.size_vram)} in VRAM` : '', text: `${p.endpoint} · ${until(p.expires_at)}` })))),
      el('td', { class: 'actions' },
        el('button', { type: 'button', text: 'show', onclick: () => showModel(m.name) }), ' ',
        el('button', { type: 'button', class: 'admin-only', text: 'copy', onclick: () => copyModel(m.name) }), ' ',
        el('button', { type: 'button', class: 'danger admin-only', text: 'delete', onclick: () => deleteModel(m.name) })));
  });
  fill($('#models tbody'), rows, 'No models on any backend.', 7);
}

async function showModel(name) {
  try {
    const info = await getJSON('/api/show', { method: 'POST', body: JSON.stringify({ model: name }) });
    for (const k of ['license', 'modelfile', 'template']) {
      if (typeof info[k] === 'string' && info[k].length > 600) info[k] = info[k].slice(0, 600) + '…';
    }
    if (info.tensors) info.tensors = `(${info.tensors.length} tensors)`;
    $('#show-title').textContent = name;
    $('#show-body').textContent = JSON.stringify(info, null, 2);
    $('#show-dialog').showModal();
  } catch (e) {
    if (!quiet(e)) toast(`show ${name}: ${e.message}`, true);
  }
}

function copyModel(name) {
  $('#copy-source').textContent = name;
  $('#copy-dest').value = name.replace(/(:[^:]*)?$/, '-copy$1');
  $('#copy-dialog').showModal();
}

async function doCopy(source, destination) {
  try {
    const res = await api('/api/copy', { method: 'POST', body: JSON.stringify({ source, destination }) });
    if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.statusText);
    toast(`Copied ${source} to ${destination}`);
    loadModels();
  } catch (e) {
    if (!quiet(e)) toast(`copy ${source}: ${e.message}`, true);
  }
}

async function deleteModel(name) {
  if (!confirm(`Delete ${name} from every backend?`)) return;
  try {
    const res = await api('/api/delete', { method: 'DELETE', body: JSON.stringify({ model: name }) });
    if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.statusText);
    toast(`Deleted ${name}`);
    loadModels();
  } catch (e) {
    if (!quiet(e)) toast(`delete ${name}: ${e.message}`, true);
  }
}

// pull streams Ollama's NDJSON progress: bytes are summed per digest.
async function pull(name) {
  const box = $('#pull-status');
  const bar = $('#pull-progress');
  const text = $('#pull-text');
  box.hidden = false;
  bar.removeAttribute('value');
  text.textContent = `pulling ${name}…`;
  const layers = new Map();
  let failed = null;
  try {
    const res = await api('/api/pull', { method: 'POST', body: JSON.stringify({ model: name, stream: true }) });
    if (!res.ok && !res.body) throw new Error(res.statusText);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        let msg;
        try { msg = JSON.parse(line); } catch { continue; }
        if (msg.error) { failed = msg.error; continue; }
        if (msg.digest && msg.total) layers.set(msg.digest, [msg.completed || 0, msg.total]);
        let c = 0, t = 0;
        for (const [a, b] of layers.values()) { c += a; t += b; }
        if (t) { bar.max = t; bar.value = c; }
        text.textContent = `${name}: ${msg.status || ''}${t ? ` — ${bytes(c)} of ${bytes(t)}` : ''}`;
      }
    }
    if (failed) throw new Error(failed);
    bar.max = 1; bar.value = 1;
    text.textContent = `${name}: done`;
    toast(`Pulled ${name}`);
    loadModels();
  } catch (e) {
    if (!quiet(e)) { text.textContent = `${name}: ${e.message}`; toast(`pull ${name}: ${e.message}`, true); }
  }
}

// ---------- tokens per minute (ClickHouse, via the analytics routes) ----------
const RANGES = { '1h': [3600, 60], '1d': [86400, 900], '7d': [604800, 7200], '30d': [2592000, 43200] };
const COLORS = ['#2f6fde', '#1f9d57', '#d2403a', '#c98a00', '#8e44ad', '#16a2b8', '#e67e22', '#7f8c8d', '#b03a7e'];
let chartData = null;

function fmtBucket(s) {
  if (s % 86400 === 0) return s / 86400 + 'd';
  if (s % 3600 === 0) return s / 3600 + 'h';
  return s / 60 + 'm';
}

async function loadChart() {
  const [span, step] = RANGES[state.range];
  const q = `since=${state.range}&bucket=${fmtBucket(step)}&group_by=model`;
  try {
    const [series, keys, apis] = await Promise.all([
      getJSON('/api/token_usage?' + q),
      getJSON(`/api/token_usage?since=${state.range}&group_by=key`),
      getJSON(`/api/token_usage?since=${state.range}&group_by=api`),
    ]);
    chartData = { span, step, rows: series.rows || [], until: new Date(series.until || Date.now()) };
    learnCaller(series.caller);
    state.rangeKeys = keys.rows || [];
    state.rangeAPIs = apis.rows || [];
  } catch (e) {
    if (quiet(e)) return;
    chartData = { error: e.status === 503 ? 'Tokens per minute come from ClickHouse: ' + e.message : e.message };
    state.rangeKeys = null;
    state.rangeAPIs = null;
  }
  drawChart();
  renderKeys();
  renderAPIs();
}

// Which APIs clients use (ollama, openai, anthropic, responses), from
// ClickHouse's token_usage_minute_by_api.
function renderAPIs() {
  const rows = (state.rangeAPIs || []).slice().sort((a, b) => b.total_tokens - a.total_tokens);
  $('#apis-range').textContent = state.rangeAPIs ? `last ${state.range}, from ClickHouse` : '';
  fill($('#apis tbody'), rows.map((r) => el('tr', { 'data-api': r.api },
    el('td', { text: r.api || '(before per-API counts)' }),
    ...[r.requests, r.errors, r.input_tokens, r.output_tokens, r.total_tokens].map((v) => el('td', { class: 'num', text: num(v) })),
    // Partial usage (streams cut short) is in the totals; shown apart here.
    el('td', { class: 'num partial', text: r.partial_requests ? `${num(r.partial_requests)} req, ${num((r.partial_input_tokens || 0) + (r.partial_output_tokens || 0))} tok` : '–' }))),
  state.rangeAPIs ? 'No usage yet.' : 'Needs ClickHouse.', 7);
}

function drawChart() {
  const box = $('#chart');
  const legend = $('#chart-legend');
  if (!chartData) return;
  if (chartData.error) {
    box.replaceChildren(el('p', { class: 'muted', text: chartData.error }));
    legend.replaceChildren();
    return;
  }
  const { span, step, rows } = chartData;
  const end = Math.floor(chartData.until.getTime() / 1000 / step) * step;
  const start = end - span + step;
  const n = Math.round(span / step);
  // Top models by tokens; the rest are "other".
  const byModel = new Map();
  for (const r of rows) byModel.set(r.model, (byModel.get(r.model) || 0) + r.total_tokens);
  const top = [...byModel.entries()].sort((a, b) => b[1] - a[1]).slice(0, COLORS.length - 1).map((e) => e[0]);
  const names = byModel.size > top.length ? [...top, 'other'] : top;
  const grid = names.map(() => new Array(n).fill(0));
  for (const r of rows) {
    const t = Math.floor(new Date(r.bucket).getTime() / 1000);
    const i = Math.round((t - start) / step);
    if (i < 0 || i >= n) continue;
    let k = names.indexOf(r.model);
    if (k < 0) k = names.length - 1;
    grid[k][i] += r.total_tokens / (step / 60); // tokens per minute
  }
  const totals = new Array(n).fill(0);
  for (const s of grid) s.forEach((v, i) => { totals[i] += v; });
  const max = Math.max(1, ...totals);
  const W = Math.max(320, box.clientWidth || 800), H = 220, L = 52, B = 22, T = 8;
  const bw = (W - L - 4) / n;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    svg.append(e);
    return e;
  };
  for (let g = 0; g <= 4; g++) {
    const y = T + ((H - T - B) * g) / 4;
    add('line', { x1: L, x2: W, y1: y, y2: y, class: 'axis' });
    add('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, compact((max * (4 - g)) / 4));
  }
  for (let i = 0; i < n; i++) {
    let y = H - B;
    grid.forEach((s, k) => {
      if (!s[i]) return;
      const h = ((H - T - B) * s[i]) / max;
      y -= h;
      const r = add('rect', { x: L + i * bw + 0.5, y, width: Math.max(1, bw - 1), height: h, fill: COLORS[k] });
      r.append(Object.assign(document.createElementNS(ns, 'title'), { textContent: `${names[k]}: ${compact(s[i])} tokens/min at ${new Date((start + i * step) * 1000).toLocaleString()}` }));
    });
  }
  for (let g = 0; g < 4; g++) {
    const i = Math.round((g * (n - 1)) / 3);
    const t = new Date((start + i * step) * 1000);
    const label = span <= 86400 ? t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : t.toLocaleDateString([], { month: 'short', day: 'numeric' });
    add('text', { x: L + i * bw + bw / 2, y: H - 6, 'text-anchor': g === 0 ? 'start' : g === 3 ? 'end' : 'middle' }, label);
  }
  box.replaceChildren(svg);
  legend.replaceChildren(...(names.length ? names.map((m, k) => el('span', {}, el('i', { style: `background:${COLORS[k]}` }), m)) : [el('span', { text: `No tokens in the last ${state.range}.` })]));
}

function setupRanges() {
  for (const b of document.querySelectorAll('.ranges button')) {
    b.addEventListener('click', () => {
      state.range = b.dataset.range;
      for (const x of document.querySelectorAll('.ranges button')) x.classList.toggle('on', x === b);
      loadChart();
    });
  }
}

// ---------- keys ----------
// Usage per key: every key's for an admin, its own for a client key (the
// routes answer only that; the page does not filter).
function renderKeys() {
  $('#keys-title').textContent = state.who.admin === false ? 'Usage of this key' : 'Usage per client key';
  const rows = [];
  if (state.rangeKeys) {
    $('#keys-range').textContent = `last ${state.range}, from ClickHouse`;
    for (const r of state.rangeKeys.slice().sort((a, b) => b.total_tokens - a.total_tokens)) {
      rows.push([r.api_key, r.requests, r.errors, r.input_tokens, r.output_tokens, r.total_tokens]);
    }
  } else if (state.usage) {
    $('#keys-range').textContent = state.usage.token_source?.mode === 'fleet' ? 'all time, whole fleet' : 'since this replica started';
    for (const [k, c] of Object.entries(state.usage.key_totals || {})) {
      rows.push([k, c.requests, c.errors, c.input_tokens, c.output_tokens, c.input_tokens + c.output_tokens]);
    }
    rows.sort((a, b) => b[5] - a[5]);
  }
  fill($('#keys tbody'), rows.map((r) => el('tr', { 'data-key': r[0] },
    el('td', { text: r[0] || '(none)' }), ...r.slice(1).map((v) => el('td', { class: 'num', text: num(v) })))), 'No usage yet.', 6);
}

// ---------- limits ----------
// /api/limits answers a client key with its own status and an admin with
// every key's ({keys: [...]}); the page shows what it is given.
async function loadLimits() {
  try {
    const body = await getJSON('/api/limits');
    state.limits = Array.isArray(body.keys) ? body.keys : [body];
    state.limitsError = '';
  } catch (e) {
    if (quiet(e)) return;
    state.limits = null;
    state.limitsError = 'Limits unavailable: ' + e.message;
  }
  renderLimits();
}

// The five windows of a key's limits: the limit's field, what is left of
// it, and what was spent (null: not counted per model).
const WINDOWS = [
  ['requests_per_minute', 'requests_this_minute', 'requests_this_minute'],
  ['tokens_per_minute', 'tokens_this_minute', 'tokens_this_minute'],
  ['concurrent', 'concurrent', 'in_flight'],
  ['tokens_per_day', 'tokens_today', 'tokens_today'],
  ['tokens_per_month', 'tokens_this_month', 'tokens_this_month'],
];

// limitCell shows one window: spent of the limit and what is left, or
// the spend and "no limit".
function limitCell(limit, left, spent, field) {
  if (!limit && spent == null) return el('td', { class: 'num limit', 'data-field': field, title: 'no limit of its own' });
  const main = limit ? `${spent == null ? '' : compact(spent) + ' / '}${compact(limit)}` : (spent == null ? '' : compact(spent));
  const sub = limit ? `${num(left)} left` : 'no limit';
  const low = limit && left != null && left <= 0;
  const pct = limit && spent != null ? Math.min(100, (100 * spent) / limit) : 0;
  return el('td', { class: 'num limit' + (low ? ' spent' : ''), 'data-field': field, title: limit ? `${num(spent)} of ${num(limit)}; ${num(left)} left` : 'unlimited' },
    el('div', { class: 'n', text: main }),
    limit && spent != null ? el('div', { class: 'bar thin' + (low ? ' full' : '') }, el('i', { style: `width:${pct}%` })) : null,
    el('div', { class: 'sub muted', text: sub }));
}

function renderLimits() {
  $('#limits-title').textContent = state.who.admin === false ? 'Limits of this key' : 'Limits per key';
  const rows = [];
  for (const s of (state.limits || []).slice().sort((a, b) => a.key_id.localeCompare(b.key_id))) {
    const l = s.limits || {}, r = s.remaining || {}, sp = s.spend || {};
    rows.push(el('tr', { 'data-key': s.key_id },
      el('td', {}, el('strong', { text: s.key_id })),
      ...WINDOWS.map(([f, rem, sf]) => limitCell(l[f] || 0, r[rem], sp[sf], f))));
    for (const [m, ml] of Object.entries(s.model_limits || {}).sort((a, b) => a[0].localeCompare(b[0]))) {
      const mr = s.model_remaining?.[m] || {};
      rows.push(el('tr', { 'data-key': s.key_id, 'data-model': m, class: 'model-limit' },
        el('td', {}, el('span', { class: 'muted', text: '↳ model ' }), m),
        // Spend is counted per key; per model, what is used is the limit
        // less what is left.
        ...WINDOWS.map(([f, rem]) => limitCell(ml[f] || 0, mr[rem], ml[f] && mr[rem] != null ? ml[f] - mr[rem] : null, f))));
    }
  }
  fill($('#limits tbody'), rows, state.limitsError || 'No keys.', 6);
  // Figures that are not the whole fleet's say so (no NATS, ClickHouse
  // not read yet).
  const partial = (state.limits || []).find((s) => !s.fleet);
  $('#limits-note').textContent = partial ? 'This replica\'s view, not the whole fleet\'s: ' + (partial.reason || 'unknown') : '';
}

// ---------- start ----------
function refreshAll() {
  loadHealth();
  loadModels();
  loadChart();
  loadLimits();
}

document.addEventListener('DOMContentLoaded', () => {
  renderWho();
  setupTheme();
  setupKeyDialog();
  setupRanges();
  $('#pull-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('#pull-name').value.trim();
    if (name) pull(name);
  });
  $('#copy-dialog').addEventListener('close', () => {
    if ($('#copy-dialog').returnValue !== 'copy') return;
    const dest = $('#copy-dest').value.trim();
    if (dest) doCopy($('#copy-source').textContent, dest);
  });
  connect();
  refreshAll();
  setInterval(loadHealth, 5000);
  setInterval(loadLimits, 5000);
  setInterval(loadModels, 15000);
  setInterval(loadChart, 60000);
  setInterval(() => { if (state.ps.length) renderModels(); }, 30000);
  window.addEventListener('resize', drawChart);
});
