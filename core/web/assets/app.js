// pefnos status page: plain JavaScript over /api/v1, live from
// /api/v1/events (one EventSource), no framework and no build step.
// Every text from the API goes into the page as text (textContent), never
// as HTML.
'use strict';

const view = () => document.getElementById('view');
const tokenKey = 'pefnos.token';
let current = { render: null, onEvent: null, cleanup: null };
const pendingCommands = new Map();  // command id -> what it was, for the notice

// ------------------------------------------------------------ DOM helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const stateBadge = (s) => h('span', { class: 'state state-' + (s || 'none'), 'data-state': s || '' }, s || '—');
const short = (rev) => (rev || '').slice(0, 10);
function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}
function duration(a, b) {
  if (!a) return '';
  const ms = (b ? new Date(b) : new Date()) - new Date(a);
  if (!(ms >= 0)) return '';
  const s = Math.round(ms / 1000);
  return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
}
function notice(text, bad) {
  const box = document.getElementById('notice');
  const el = h('div', { class: bad ? 'bad' : '' }, text);
  box.prepend(el);
  while (box.children.length > 4) box.lastChild.remove();
  setTimeout(() => el.remove(), 12000);
  return el;
}
function table(headers, rows) {
  return h('table', {}, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
}

// ------------------------------------------------------------ API
async function api(path) {
  for (let attempt = 0; ; ++attempt) {
    const res = await fetch('/api/v1/' + path, { headers: { Accept: 'application/json' } });
    if (res.status === 503 && attempt < 5) {  // busy: the server said to come back
      await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
      continue;
    }
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error || res.status + ' ' + res.statusText);
    return body;
  }
}

function token() { return localStorage.getItem(tokenKey) || ''; }
function showWriteState() { document.body.classList.toggle('can-write', token() !== ''); }

// A write: a command row through the API, followed by its events.
async function command(kind, args, what) {
  const res = await fetch('/api/v1/commands', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + token(), 'Content-Type': 'application/json' },
    body: JSON.stringify({ kind, args }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.status === 401) return notice('The token was refused: ' + (body.error || ''), true);
  if (!res.ok) return notice(what + ': ' + (body.error || res.status), true);
  pendingCommands.set(body.command, { what, el: notice(what + ': command ' + body.command + ' queued') });
}
const button = (label, attrs, fn) =>
  h('button', Object.assign({ class: 'write', type: 'button', onclick: fn }, attrs), label);

// ------------------------------------------------------------ live events
let source = null;
function connectEvents() {
  source = new EventSource('/api/v1/events');
  const live = document.getElementById('live');
  source.onopen = () => { live.className = 'live on'; live.title = 'live updates: on'; };
  source.onerror = () => { live.className = 'live off'; live.title = 'live updates: reconnecting'; };
  for (const type of ['build', 'queue', 'command', 'config', 'mirror', 'resync']) {
    source.addEventListener(type, (e) => {
      let data = {};
      try { data = JSON.parse(e.data); } catch (_) { return; }
      onEvent(type, data);
    });
  }
}
let refreshTimer = null;
function refreshSoon() {  // configuration changed: read the view again, once
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => current.render && current.render(), 700);
}
function onEvent(type, data) {
  if (type === 'queue') updateSummary({ queue: data.queued });
  if (type === 'command') {
    const p = pendingCommands.get(data.id);
    if (p && (data.state === 'done' || data.state === 'failed')) {
      pendingCommands.delete(data.id);
      const text = data.state === 'done'
        ? p.what + ': done ' + (data.result ? JSON.stringify(data.result) : '')
        : p.what + ': failed: ' + (data.error || '');
      p.el.textContent = text;
      p.el.className = data.state === 'done' ? '' : 'bad';
    }
  }
  if (type === 'config' || type === 'mirror' || type === 'resync') refreshSoon();
  if (current.onEvent) current.onEvent(type, data);
}

let summaryState = {};
function updateSummary(s) {
  Object.assign(summaryState, s);
  const el = document.getElementById('summary');
  const b = summaryState.builds || {};
  el.textContent = `queue ${summaryState.queue ?? '?'} · running ${b.running ?? 0} · workers ${summaryState.workers ?? '?'}`;
}
async function loadSummary() {
  try { updateSummary(await api('status')); } catch (_) { /* the view says what failed */ }
}

// ------------------------------------------------------------ views
function pager(path, page, key, render) {
  const next = page['next_before'] ?? page['next_after'];
  if (next === undefined) return null;
  const param = page['next_before'] !== undefined ? 'before' : 'after';
  return h('div', { class: 'pager' }, h('a', { href: '#' + path + '?' + param + '=' + next }, 'more…'));
}

async function renderConsole() {
  const data = await api('console');
  const builders = data.builders;
  const rows = new Map();  // revision -> <tr>
  const head = h('tr', {}, h('th', {}, 'revision'), h('th', {}, 'branch'), h('th', {}, 'author'), h('th', {}, 'change'),
    builders.map((b) => h('th', { class: 'builder', 'data-builder': b.id, title: b.project + '/' + b.name },
      h('a', { href: '#/builders/' + b.id }, b.name),
      b.branches.length ? button('force', { 'data-action': 'force', 'data-builder': b.id,
        title: 'force a build of ' + b.name + ' on ' + b.branches[0].repository + ' ' + b.branches[0].name },
      () => command('force-build', { builder: b.id, branch: b.branches[0].id }, 'force ' + b.name)) : null)));
  const tbody = h('tbody');
  const makeRow = (r) => {
    const tr = h('tr', { 'data-revision': r.revision },
      h('td', { class: 'rev mono', title: r.revision }, short(r.revision)),
      h('td', {}, r.branch ? (r.repository ? r.repository + ' ' : '') + r.branch : ''),
      h('td', {}, r.author || ''), h('td', { class: 'title', title: r.title || '' }, r.title || ''),
      builders.map((b) => h('td', { class: 'cell', 'data-builder': b.id })));
    rows.set(r.revision, tr);
    return tr;
  };
  const setCell = (tr, builderId, build) => {
    const td = tr.querySelector(`td.cell[data-builder="${builderId}"]`);
    if (!td) return;
    td.replaceChildren(h('a', { href: '#/builds/' + build.id, class: 'state-' + build.state, 'data-build': build.id,
      'data-state': build.state, title: build.state + (build.count > 1 ? ' (' + build.count + ' builds)' : '') },
    '#' + build.number));
  };
  for (const r of data.revisions) {
    const tr = makeRow(r);
    for (const [builderId, build] of Object.entries(r.builds)) setCell(tr, builderId, build);
    tbody.append(tr);
  }
  view().replaceChildren(h('h1', {}, 'Console'),
    builders.length ? h('table', { class: 'console', id: 'console' }, h('thead', {}, head), tbody)
      : h('p', { class: 'muted' }, 'No active builders.'));
  current.onEvent = (type, ev) => {
    if (type !== 'build' || !builders.some((b) => b.id === ev.builder_id)) return;
    let tr = rows.get(ev.revision);
    if (!tr) {
      tr = makeRow({ revision: ev.revision, branch: ev.branch });
      tr.classList.add('new');
      tbody.prepend(tr);
    }
    const td = tr.querySelector(`td.cell[data-builder="${ev.builder_id}"] a`);
    if (td && Number(td.dataset.build) > ev.id) return;  // an older build's news
    setCell(tr, ev.builder_id, ev);
  };
}

async function renderBuilders() {
  const page = await api('builders?limit=200');
  view().replaceChildren(h('h1', {}, 'Builders'), table(['builder', 'project', 'last build', 'running', 'queued', 'branches'],
    page.builders.map((b) => h('tr', {}, h('td', {}, h('a', { href: '#/builders/' + b.id }, b.name)), h('td', {}, b.project),
      h('td', {}, b.last_build ? h('a', { href: '#/builds/' + b.last_build.id }, '#' + b.last_build.number + ' ', stateBadge(b.last_build.state)) : ''),
      h('td', {}, b.running), h('td', {}, b.queued), h('td', {}, b.branches.map((x) => x.repository + ' ' + x.name).join(', '))))));
}

async function renderBuilder(id) {
  const [b, page] = await Promise.all([api('builders/' + id), api('builds?limit=50&builder=' + id)]);
  const select = h('select', { id: 'force-branch', class: 'write' },
    b.branches.map((x) => h('option', { value: x.id }, x.repository + ' ' + x.name)));
  const tbody = h('tbody');
  const row = (x) => h('tr', { 'data-build': x.id }, h('td', {}, h('a', { href: '#/builds/' + x.id }, '#' + x.number)),
    h('td', {}, stateBadge(x.state)), h('td', { class: 'mono' }, short(x.revision)), h('td', {}, x.branch || ''),
    h('td', {}, when(x.created_at)), h('td', {}, duration(x.started_at, x.finished_at)));
  page.builds.forEach((x) => tbody.append(row(x)));
  view().replaceChildren(h('h1', {}, 'Builder ', b.name), h('p', { class: 'muted' }, b.description || ''),
    h('div', { class: 'toolbar' }, b.branches.length ? [select, button('Force build', { 'data-action': 'force-builder' },
      () => command('force-build', { builder: b.id, branch: Number(select.value) }, 'force ' + b.name))] : null),
    h('table', {}, h('thead', {}, h('tr', {}, ['build', 'state', 'revision', 'branch', 'created', 'took'].map((x) => h('th', {}, x)))), tbody),
    pager('/builders/' + id, page));
  current.onEvent = (type, ev) => {
    if (type !== 'build' || ev.builder_id !== b.id) return;
    const old = tbody.querySelector(`tr[data-build="${ev.id}"]`);
    if (old) old.replaceWith(row(ev)); else tbody.prepend(row(ev));
  };
}

async function renderBuilds(query) {
  const page = await api('builds?limit=50' + (query ? '&' + query : ''));
  const tbody = h('tbody');
  const row = (x) => h('tr', { 'data-build': x.id }, h('td', {}, h('a', { href: '#/builds/' + x.id }, x.builder + ' #' + x.number)),
    h('td', {}, stateBadge(x.state)), h('td', { class: 'mono' }, short(x.revision)), h('td', {}, x.branch || ''),
    h('td', {}, x.worker || ''), h('td', {}, when(x.created_at)), h('td', {}, duration(x.started_at, x.finished_at)));
  page.builds.forEach((x) => tbody.append(row(x)));
  view().replaceChildren(h('h1', {}, 'Builds'),
    h('table', {}, h('thead', {}, h('tr', {}, ['build', 'state', 'revision', 'branch', 'worker', 'created', 'took'].map((x) => h('th', {}, x)))), tbody),
    pager('/builds', page));
  if (!query) current.onEvent = (type, ev) => {
    if (type !== 'build') return;
    const old = tbody.querySelector(`tr[data-build="${ev.id}"]`);
    if (old) old.replaceWith(row(ev)); else tbody.prepend(row(ev));
  };
}

// One build: its steps, and the log of one step, followed live while it runs.
async function renderBuild(id) {
  let build = await api('builds/' + id);
  let followed = null;  // { step, controller }
  let chosen = null;    // a step the user clicked: no automatic switching
  const log = h('pre', { id: 'log', 'data-step': '' });
  const logTitle = h('h2', { id: 'log-title' }, 'Log');
  const stateEl = h('span', { id: 'build-state' });
  const steps = h('tbody', { class: 'steps' });
  const stop = button('Stop build', { 'data-action': 'stop' }, () => command('stop-build', { build: build.id }, 'stop build ' + build.id));

  async function follow(step) {
    if (followed && followed.step === step.id) return;
    if (followed) followed.controller.abort();
    const controller = new AbortController();
    followed = { step: step.id, controller };
    log.textContent = '';
    log.dataset.step = step.id;
    log.dataset.done = '';
    logTitle.textContent = 'Log of ' + step.name;
    paintSteps();
    try {
      const res = await fetch(`/api/v1/steps/${step.id}/log?follow=1`, { signal: controller.signal });
      if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.status);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
        log.append(decoder.decode(value, { stream: true }));
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      log.dataset.done = '1';
      if (followed && followed.controller === controller) {
        // The step ended: the build says what runs next.
        build = await api('builds/' + id);
        paint();
      }
    } catch (e) {
      if (e.name !== 'AbortError') log.append('\n[log unavailable: ' + e.message + ']\n');
    }
  }
  function pickStep() {
    if (chosen) return build.steps.find((s) => s.id === chosen) || null;
    return build.steps.find((s) => s.state === 'running')
      || (followed ? null : [...build.steps].reverse().find((s) => s.state !== 'pending' && s.state !== 'skipped'))
      || null;
  }
  function paintSteps() {
    steps.replaceChildren(...build.steps.map((s) => h('tr', {
      'data-step': s.id, class: followed && followed.step === s.id ? 'selected' : '',
      onclick: () => { chosen = s.id; follow(s); },
    }, h('td', {}, s.position), h('td', {}, s.name), h('td', {}, stateBadge(s.state)), h('td', {}, s.exit_code ?? ''),
    h('td', {}, s.summary && Object.keys(s.summary).length ? JSON.stringify(s.summary) : ''),
    h('td', {}, duration(s.started_at, s.finished_at)))));
  }
  function paint() {
    stateEl.replaceChildren(stateBadge(build.state));
    stateEl.dataset.state = build.state;
    stop.hidden = !(build.state === 'running' || build.state === 'pending');
    paintSteps();
    const step = pickStep();
    if (step) follow(step);
  }
  view().replaceChildren(
    h('h1', {}, h('a', { href: '#/builders/' + build.builder_id }, build.builder), ' build #' + build.number, ' ', stateEl),
    h('p', {}, 'revision ', h('code', {}, build.revision), build.branch ? ' on ' + build.branch : '', build.worker ? ' · worker ' + build.worker : '',
      ' · ', build.reason, build.summary && build.summary.message ? h('div', { class: 'error-text' }, build.summary.message) : null),
    h('div', { class: 'toolbar' }, stop),
    h('table', {}, h('thead', {}, h('tr', {}, ['#', 'step', 'state', 'exit', 'summary', 'took'].map((x) => h('th', {}, x)))), steps),
    logTitle, log);
  paint();
  current.onEvent = async (type, ev) => {
    if (type !== 'build' || ev.id !== build.id) return;
    build = Object.assign(build, ev, { steps: build.steps.map((s) => Object.assign(s, (ev.steps || []).find((x) => x.id === s.id) || {})) });
    if (ev.steps && ev.steps.length !== build.steps.length) build = await api('builds/' + id);
    paint();
  };
  current.cleanup = () => followed && followed.controller.abort();
}

async function renderQueue() {
  const page = await api('requests?state=queued&limit=200');
  view().replaceChildren(h('h1', {}, 'Queue'), page.requests.length ? table(['request', 'builder', 'branch', 'revision', 'reason', 'priority', 'queued at'],
    page.requests.map((r) => h('tr', {}, h('td', {}, r.id), h('td', {}, h('a', { href: '#/builders/' + r.builder_id }, r.builder)),
      h('td', {}, r.branch || ''), h('td', { class: 'mono' }, short(r.revision)), h('td', {}, r.reason), h('td', {}, r.priority), h('td', {}, when(r.created_at)))))
    : h('p', { class: 'muted' }, 'Nothing waiting.'));
  current.onEvent = (type) => { if (type === 'queue') refreshSoon(); };
}

async function renderRepositories() {
  const page = await api('repositories?limit=200&active=true');
  view().replaceChildren(h('h1', {}, 'Repositories'), table(['repository', 'vcs', 'last poll', 'took', 'polls', 'status', 'branch heads', ''],
    page.repositories.map((r) => h('tr', { 'data-repository': r.id }, h('td', {}, r.project + '/' + r.name, h('div', { class: 'muted mono' }, r.url)),
      h('td', {}, r.vcs), h('td', {}, when(r.last_poll_at)), h('td', {}, r.duration_ms != null ? r.duration_ms + ' ms' : ''), h('td', {}, r.polls),
      h('td', {}, r.last_error ? h('span', { class: 'error-text' }, r.last_error) : (r.last_poll_at ? stateBadge('ok') : h('span', { class: 'muted' }, 'not polled yet'))),
      h('td', {}, r.heads.map((b) => h('div', {}, b.name + ' ', h('code', {}, short(b.revision) || '—'))),
        r.branch_count > r.heads.length ? h('a', { href: '#/branches?repository=' + r.id }, 'all ' + r.branch_count + ' branches') : null),
      h('td', {}, button('Poll now', { 'data-action': 'poll' }, () => command('poll-now', { repository: r.id }, 'poll ' + r.name)))))));
}

async function renderBranches(query) {
  const page = await api('branches?limit=200' + (query ? '&' + query : ''));
  view().replaceChildren(h('h1', {}, 'Branches'), table(['branch', 'repository', 'head', 'updated'],
    page.branches.map((b) => h('tr', {}, h('td', {}, b.name, b.pattern ? ' (pattern)' : ''), h('td', {}, b.repository),
      h('td', { class: 'mono' }, short(b.head)), h('td', {}, when(b.head_updated_at))))), pager('/branches', page));
}

async function renderWorkers() {
  const page = await api('workers?limit=200');
  view().replaceChildren(h('h1', {}, 'Workers'), table(['worker', 'connected', 'slots', 'running', 'trusted', 'tags'],
    page.workers.map((w) => h('tr', {}, h('td', {}, w.name), h('td', {}, w.connected ? stateBadge('ok') : h('span', { class: 'muted' }, 'no'), ' ', w.peer || ''),
      h('td', {}, w.slots), h('td', {}, w.running ?? w.running_builds), h('td', {}, w.trusted ? 'yes' : 'no'),
      h('td', { class: 'mono' }, JSON.stringify(w.tags))))));
  current.onEvent = (type) => { if (type === 'build') refreshSoon(); };
}

async function renderMirrors() {
  const page = await api('mirrors?limit=200');
  view().replaceChildren(h('h1', {}, 'Mirrors'), page.mirrors.length ? table(['mirror', 'from', 'to', 'last run', 'revisions', 'verification', ''],
    page.mirrors.map((m) => h('tr', { 'data-mirror': m.id }, h('td', {}, m.name, m.active ? '' : ' (inactive)'),
      h('td', {}, `${m.source_repository} ${m.source_branch} (${m.source_vcs})`),
      h('td', {}, `${m.target_repository} ${m.target_branch} (${m.target_vcs})`),
      h('td', {}, m.last_run ? [stateBadge(m.last_run.state), ' ', when(m.last_run.finished_at || m.last_run.started_at),
        m.last_run.error ? h('div', { class: 'error-text' }, m.last_run.error) : null] : h('span', { class: 'muted' }, 'never')),
      h('td', {}, m.last_run ? m.last_run.revisions : ''),
      h('td', {}, stateBadge(m.verification), m.last_mismatch ? h('div', { class: 'error-text' },
        'revision ' + short(m.last_mismatch.source_revision) + ': ' + JSON.stringify(m.last_mismatch.differences).slice(0, 300)) : null),
      h('td', {}, button('Mirror now', { 'data-action': 'mirror' }, () => command('mirror-now', { mirror: m.id }, 'mirror ' + m.name))))))
    : h('p', { class: 'muted' }, 'No mirrors configured.'));
  // The mirror engine's runs end with their command: read the table again then.
  current.onEvent = (type, c) => {
    if (type === 'command' && String(c.kind).startsWith('mirror') && (c.state === 'done' || c.state === 'failed')) refreshSoon();
  };
}

async function renderCommands() {
  const page = await api('commands?limit=100');
  const tbody = h('tbody');
  const row = (c) => h('tr', { 'data-command': c.id }, h('td', {}, c.id), h('td', {}, c.kind), h('td', { class: 'mono' }, JSON.stringify(c.args)),
    h('td', {}, stateBadge(c.state)), h('td', { class: 'mono' }, c.error || (c.result ? JSON.stringify(c.result) : '')),
    h('td', {}, c.requested_by), h('td', {}, when(c.created_at)));
  page.commands.forEach((c) => tbody.append(row(c)));
  view().replaceChildren(h('h1', {}, 'Commands'),
    h('table', {}, h('thead', {}, h('tr', {}, ['id', 'kind', 'arguments', 'state', 'outcome', 'by', 'at'].map((x) => h('th', {}, x)))), tbody));
  current.onEvent = (type, c) => {
    if (type !== 'command') return;
    const old = tbody.querySelector(`tr[data-command="${c.id}"]`);
    if (old) old.replaceWith(row(c)); else tbody.prepend(row(c));
  };
}

// ------------------------------------------------------------ routing
const routes = [
  [/^\/?$/, () => renderConsole()],
  [/^\/builders$/, () => renderBuilders()],
  [/^\/builders\/(\d+)$/, (m) => renderBuilder(m[1])],
  [/^\/builds$/, (m, q) => renderBuilds(q)],
  [/^\/builds\/(\d+)$/, (m) => renderBuild(m[1])],
  [/^\/queue$/, () => renderQueue()],
  [/^\/repositories$/, () => renderRepositories()],
  [/^\/branches$/, (m, q) => renderBranches(q)],
  [/^\/workers$/, () => renderWorkers()],
  [/^\/mirrors$/, () => renderMirrors()],
  [/^\/commands$/, () => renderCommands()],
];

async function route() {
  if (current.cleanup) current.cleanup();
  current = { render: null, onEvent: null, cleanup: null };
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  for (const [re, fn] of routes) {
    const m = path.match(re);
    if (!m) continue;
    const render = async () => {
      try { await fn(m, query || ''); } catch (e) {
        view().replaceChildren(h('p', { class: 'error-text' }, 'Cannot show this page: ' + e.message));
      }
    };
    current.render = render;
    return render();
  }
  view().replaceChildren(h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Console')));
}

document.addEventListener('DOMContentLoaded', () => {
  const input = document.getElementById('token');
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (input.value.trim()) localStorage.setItem(tokenKey, input.value.trim());
    input.value = '';
    showWriteState();
    notice(token() ? 'Token set: the action buttons are shown.' : 'No token.');
  });
  document.getElementById('token-clear').addEventListener('click', () => {
    localStorage.removeItem(tokenKey);
    showWriteState();
  });
  showWriteState();
  window.addEventListener('hashchange', route);
  connectEvents();
  loadSummary();
  setInterval(loadSummary, 30000);
  route();
});
