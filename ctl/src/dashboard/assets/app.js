// sticler dashboard: the page of `sticlerctl dashboard`. Reads /api/status once per project,
// then follows the daemon's events (/api/events, Server-Sent Events) and updates the graph,
// the header and the story panel in place. The graph is graph.js, the story panel story.js.
'use strict';

const NODE_W = 200;
const NODE_H = 54;
const STATES = ['pending', 'ready', 'running', 'verifying', 'merging', 'completed', 'failed', 'blocked', 'invalid', 'waiting'];
// Events after which counts, criteria and costs change: the status is read again (once per burst).
const REFRESHING = new Set(['iteration_ended', 'story_completed', 'story_failed', 'story_blocked', 'story_retried',
  'run_started', 'run_stopping', 'run_ended', 'usage_limit_wait', 'usage_limit_resumed', 'budget_spent']);
const REFRESH_DELAY_MS = 500;
const LATENCIES_KEPT = 10000;
const MAX_SCALE = 1.25;
const MIN_FIRST_SCALE = 0.7;

const S = {
  project: '',
  phases: [],
  phase: null,
  stories: new Map(),
  selected: null,
  lastSeq: 0,
  source: null,
  refreshTimer: null,
  // A status request is on its way; the events meanwhile wait in `pending`.
  loading: false,
  pending: [],
  detailTimer: null,
  logAbort: null,
  // The log shown is a followed stream still open.
  logFollowing: false,
  view: null,
  // The user zoomed or panned: the view is theirs, not refitted.
  zoomed: false,
  // The region of the graph in the DOM, and which graph (phase and stories) it is.
  drawn: null,
  graphKey: '',
  // The delay between the daemon's event and its change on this page, for the header (and the bench).
  latencies: [],
};
window.sticler = S;

const $ = (id) => document.getElementById(id);
const esc = (text) => String(text ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const enc = encodeURIComponent;

async function getJSON(url) {
  const response = await fetch(url, { credentials: 'same-origin' });
  const body = await response.json().catch(() => ({ message: response.statusText }));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function money(usd) {
  return usd == null ? '' : '$' + usd.toFixed(2);
}

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function clock(unixMs) {
  return new Date(unixMs).toLocaleString();
}

// ---- projects, phases, status -------------------------------------------------------------

async function init() {
  $('legend').innerHTML = STATES.map((s) => `<span class="st-${s}">${s === 'waiting' ? 'waiting for a usage limit' : s}</span>`).join('');
  $('project').addEventListener('change', () => openProject($('project').value));
  document.querySelectorAll('.controls button').forEach((b) => b.addEventListener('click', () => control(b.dataset.action)));
  $('panel-close').addEventListener('click', closePanel);
  $('log-iteration').addEventListener('change', () => showLog());
  $('log-follow').addEventListener('change', () => showLog());
  setUpZoom();
  $('graph').setAttribute('preserveAspectRatio', 'xMinYMin meet');
  window.addEventListener('resize', refit);
  document.addEventListener('visibilitychange', visibility);
  // The dashboard's own project (the server's default) at once; the switcher fills meanwhile.
  openProject('');
  try {
    const projects = await getJSON('/api/projects');
    $('project').innerHTML = projects.map((p) => `<option value="${esc(p)}">${esc(p)}</option>`).join('');
    $('project').hidden = projects.length < 2;
    $('project').value = S.project || projects[0];
  } catch (e) {
    answer('cannot reach sticlerd: ' + e.message, true);
  }
}

function openProject(project) {
  S.project = project;
  S.phase = null;
  S.lastSeq = 0;
  S.pending = [];
  S.view = null;
  closePanel();
  connect(null);
}

// The event stream first, the status once it is open: no event falls between the two.
function connect(since) {
  if (S.source) S.source.close();
  S.source = null;
  // A tab opened in the background connects once it is shown (see `visibility`).
  if (document.hidden) return;
  const url = `/api/events?project=${enc(S.project)}` + (since ? `&since=${since}` : '');
  const source = new EventSource(url);
  S.source = source;
  source.addEventListener('ready', () => {
    live(true);
    loadStatus();
  });
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.onerror = () => {
    live(false);
    // The browser reconnects by itself (with Last-Event-ID) unless the answer was an error:
    // then start again from the last event this page saw.
    if (source.readyState === EventSource.CLOSED && S.source === source) {
      setTimeout(() => S.source === source && connect(S.lastSeq), 2000);
    }
  };
}

// A browser allows six connections to one host, shared by all its tabs: a hidden tab lets go of
// its event stream and followed log, and takes them up again, from its last event, when shown.
function visibility() {
  if (document.hidden) {
    if (S.source) S.source.close();
    S.source = null;
    // A followed log, streaming or still being asked for.
    const followed = S.logFollowing || ($('log-follow').checked && !$('log-iteration').value);
    if (followed && S.logAbort) {
      S.logAbort.abort();
      S.logAbort = null;
      S.logFollowing = false;
    }
    return;
  }
  if (S.source === null) {
    connect(S.lastSeq || null);
    if (S.selected && $('log-follow').checked && !$('log-iteration').value) showLog();
  }
}

function live(on) {
  const el = $('live');
  el.className = 'live ' + (on ? 'on' : 'off');
  el.textContent = on ? 'live' : 'reconnecting…';
}

async function loadStatus() {
  let report;
  const asked = S.project;
  S.loading = true;
  try {
    report = await getJSON(`/api/status?project=${enc(asked)}`);
  } catch (e) {
    answer(e.message, true);
    return;
  } finally {
    S.loading = false;
  }
  // Another project was chosen meanwhile: its own status is on its way.
  if (S.project !== asked) return;
  S.project = report.project;
  S.phases = report.phases;
  if (!S.phases.some((p) => p.phase === S.phase)) {
    const running = S.phases.find((p) => p.running);
    S.phase = (running || S.phases[0] || { phase: null }).phase;
  }
  renderTabs();
  renderPhase();
  const pending = S.pending;
  S.pending = [];
  pending.forEach(apply);
}

function current() {
  return S.phases.find((p) => p.phase === S.phase);
}

function renderTabs() {
  $('phases').innerHTML = S.phases.map((p) =>
    `<button type="button" data-phase="${p.phase}" class="${p.phase === S.phase ? 'current' : ''}">Phase ${p.phase}${p.running ? ' ●' : ''}</button>`).join('');
  $('phases').querySelectorAll('button').forEach((b) => b.addEventListener('click', () => {
    S.phase = Number(b.dataset.phase);
    S.view = null;
    closePanel();
    renderTabs();
    renderPhase();
  }));
}

function renderPhase() {
  const phase = current();
  if (!phase) {
    $('phase-title').textContent = 'No phase in this project';
    $('graph').innerHTML = '';
    S.graphKey = '';
    return;
  }
  // The same stories of the same phase: the nodes drawn are updated in place.
  const key = phase.phase + ':' + phase.layout.nodes.map((n) => n.id).join(',');
  const same = key === S.graphKey;
  S.graphKey = key;
  S.stories = new Map(phase.stories.map((s) => [s.id, s]));
  renderHeader(phase);
  if (same) {
    phase.stories.forEach(updateNode);
  } else {
    renderGraph(phase);
  }
}

// The counts of the stories as this page shows them (events included), grouped as `status` groups them.
function counts(stories) {
  const c = { total: stories.length, pending: 0, running: 0, completed: 0, failed: 0, blocked: 0, invalid: 0 };
  const group = { ready: 'pending', verifying: 'running', merging: 'running' };
  for (const story of stories) c[group[story.state] || story.state] += 1;
  return c;
}

function renderHeader(phase) {
  $('phase-title').textContent = `Phase ${phase.phase}: ${phase.title}`;
  $('phase-status').textContent = phase.running ? `${phase.status} · running` : phase.status;
  const c = counts(phase.stories);
  const parts = [`<b>${c.total}</b> stories`, `<b>${c.completed}</b> completed`, `<b>${c.running}</b> running`,
    `<b>${c.pending}</b> pending`, `<b>${c.failed}</b> failed`, `<b>${c.blocked}</b> blocked`];
  if (c.invalid) parts.push(`<b>${c.invalid}</b> invalid`);
  if (phase.cost_usd != null || phase.budget_usd != null) {
    parts.push(`cost <b>${money(phase.cost_usd || 0)}</b>` + (phase.budget_usd != null ? ` of ${money(phase.budget_usd)}` : ''));
  }
  const wall = wallTime(phase);
  if (wall) parts.push(wall);
  $('phase-stats').innerHTML = parts.join(' · ');
  $('phase-summary').textContent = phase.summary || '';
  $('phase-summary').title = phase.summary || '';
  const wait = $('phase-wait');
  const waiting = phase.waiting || (phase.paused_until ? `waiting for a usage limit until ${clock(phase.paused_until * 1000)}` : '');
  wait.hidden = !waiting;
  wait.textContent = waiting + (phase.paused_until ? ` (resets ${clock(phase.paused_until * 1000)})` : '');
}

// Wall time of the run: from its start (the status says when; a `run_started` seen here is newer).
function wallTime(phase) {
  const started = phase._startedMs || phase.run_started_ms;
  if (!started) return '';
  const end = phase._endedMs || (phase.running ? Date.now() : null);
  if (!end) return '';
  return `wall time <b>${duration(end - started)}</b>`;
}

// ---- live events ----------------------------------------------------------------------------

function onEvent(ev) {
  if (ev.seq <= S.lastSeq) return;
  S.lastSeq = ev.seq;
  // Events that come while a status is on its way are applied on top of it, in order.
  if (S.loading) S.pending.push(ev);
  else apply(ev);
}

function apply(ev) {
  const phase = S.phases.find((p) => p.phase === ev.phase);
  if (phase && ev.kind === 'run_started') {
    phase._startedMs = ev.time_ms;
    phase._endedMs = null;
  }
  if (phase && ev.kind === 'run_ended') phase._endedMs = ev.time_ms;
  const story = phase && ev.story ? phase.stories.find((s) => s.id === ev.story) : null;
  if (story) {
    const state = {
      iteration_started: 'running', story_completed: 'completed', story_failed: 'failed', story_blocked: 'blocked', story_retried: 'pending',
    }[ev.kind];
    if (state) story.state = state;
    if (ev.kind === 'iteration_started') story.running_iteration = ev.iteration;
    if (ev.kind === 'story_failed') story.failed_reasons = [...(story.failed_reasons || []), ev.reason];
    if (ev.phase === S.phase) {
      updateNode(story);
      if (state) renderHeader(phase);
    }
  }
  if (ev.phase === S.phase) {
    const latency = Date.now() - ev.time_ms;
    S.latencies.push(latency);
    if (S.latencies.length > LATENCIES_KEPT) S.latencies.shift();
    $('live').textContent = `live · #${ev.seq} · ${describe(ev)} · +${latency} ms`;
  }
  if (REFRESHING.has(ev.kind) && !S.refreshTimer) {
    S.refreshTimer = setTimeout(() => {
      S.refreshTimer = null;
      loadStatus();
    }, REFRESH_DELAY_MS);
  }
  if (ev.story && ev.story === S.selected && REFRESHING.has(ev.kind) && !S.detailTimer) {
    S.detailTimer = setTimeout(() => {
      S.detailTimer = null;
      loadStory(S.selected, false);
    }, REFRESH_DELAY_MS);
  }
  if (ev.story === S.selected && ev.kind === 'iteration_started' && $('log-follow').checked && !$('log-iteration').value && !S.logFollowing) showLog();
}

function describe(ev) {
  return (ev.story ? ev.story + ' ' : '') + ev.kind.replace(/_/g, ' ');
}

// ---- controls -------------------------------------------------------------------------------

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $('confirm');
    $('confirm-text').textContent = text;
    const done = (ok) => {
      $('confirm-ok').onclick = null;
      $('confirm-cancel').onclick = null;
      dialog.close();
      resolve(ok);
    };
    $('confirm-ok').onclick = () => done(true);
    $('confirm-cancel').onclick = () => done(false);
    dialog.oncancel = () => resolve(false);
    dialog.showModal();
  });
}

const ACTION_TEXT = {
  start: 'Start phase %p?', stop: 'Stop phase %p? Workers get SIGTERM, then SIGKILL after the grace period.',
  kill: 'Kill phase %p now (SIGKILL)?', retry_failed: 'Retry every failed or blocked story of phase %p?',
  resume: 'End the usage-limit wait now?', retry: 'Retry %s?',
};

async function control(action, stories) {
  const phase = S.phase;
  if (phase == null) return;
  const text = ACTION_TEXT[action].replace('%p', phase).replace('%s', (stories || []).join(', '));
  if (!(await confirmAction(text))) return;
  answer('…', false);
  try {
    const response = await fetch('/api/control', {
      method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ project: S.project, phase, action, stories: stories || [] }),
    });
    const body = await response.json();
    answer(body.message, !body.ok);
  } catch (e) {
    answer(e.message, true);
  }
}

function answer(text, error) {
  const el = $('answer');
  el.textContent = text;
  el.className = error ? 'error' : '';
}

// After graph.js and story.js: their functions are defined by then.
document.addEventListener('DOMContentLoaded', init);
