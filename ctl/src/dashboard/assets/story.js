// sticler dashboard, the story panel: one story in full (/api/story), its spec rendered, its
// commit's diff, and its log followed as it grows (/api/log), with ANSI colours and Claude
// stream-json shown as turns. Loaded after app.js, whose helpers ($, esc, S, ...) it uses.
'use strict';

// ---- the story panel ---------------------------------------------------------------------------

function openStory(id) {
  const before = S.selected && document.getElementById('n-' + S.selected);
  S.selected = id;
  if (before) before.classList.remove('selected');
  const node = document.getElementById('n-' + id);
  if (node) node.classList.add('selected');
  if ($('panel').hidden) {
    $('panel').hidden = false;
    refit();
  }
  $('story-title').textContent = id;
  $('story-body').innerHTML = '<p>loading…</p>';
  loadStory(id, true);
}

function closePanel() {
  if (S.logAbort) S.logAbort.abort();
  S.logAbort = null;
  const node = S.selected && document.getElementById('n-' + S.selected);
  if (node) node.classList.remove('selected');
  S.selected = null;
  if (!$('panel').hidden) {
    $('panel').hidden = true;
    refit();
  }
}

async function loadStory(id, withLog) {
  let d;
  try {
    d = await getJSON(`/api/story?project=${enc(S.project)}&story=${enc(id)}`);
  } catch (e) {
    if (S.selected === id) $('story-body').innerHTML = `<p class="error">${esc(e.message)}</p>`;
    return;
  }
  if (S.selected !== id) return;
  renderStory(d);
  const select = $('log-iteration');
  const chosen = select.value;
  select.innerHTML = '<option value="">latest</option>' + d.iterations.map((it) => `<option value="${it.iteration}">iteration ${it.iteration}</option>`).join('');
  if (!withLog && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
  if (withLog) showLog();
}

function renderStory(d) {
  const s = d.story;
  $('story-title').textContent = `${s.id}: ${s.title}`;
  const rows = [['state', `<span class="badge st-${esc(s.state)}">${esc(s.state)}</span>`], ['worker status', esc(s.disk_status)],
    ['iteration', `${s.iteration} (runs this run: ${s.runs})`], ['criteria', `${s.criteria_done}/${s.criteria_total}`]];
  if (s.cost_usd != null) rows.push(['cost', money(s.cost_usd) + (s.tokens ? ` · ${s.tokens.input + s.tokens.output} tokens` : '')]);
  if (s.dependencies.length) rows.push(['depends on', esc(s.dependencies.join(', '))]);
  if (s.blocked_by.length) rows.push(['blocked by', esc(s.blocked_by.join(', '))]);
  if (s.focus) rows.push(['focus', esc(s.focus)]);
  if (s.waiting) rows.push(['waiting', esc(s.waiting)]);
  if (s.worktree) rows.push(['worktree', `<code id="worktree">${esc(s.worktree)}</code>`]);
  if (s.commit_hash) rows.push(['commit', `<code id="commit">${esc(s.commit_hash)}</code>`]);
  const out = [`<dl class="kv">${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('')}</dl>`];
  if (s.state === 'failed' || s.state === 'blocked') out.push('<p><button type="button" id="retry-story" class="primary">Retry this story</button></p>');
  if (s.failed_reasons.length) out.push(`<h3>Failed reasons</h3><ul class="reasons">${s.failed_reasons.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>`);
  if (d.criteria.length) out.push(`<h3>Criteria</h3><ul class="criteria">${d.criteria.map((c) => `<li class="${c.done ? 'done' : ''}">${esc(c.text)}</li>`).join('')}</ul>`);
  if (d.worker_notes) out.push(`<h3>Worker notes</h3><pre>${esc(d.worker_notes)}</pre>`);
  if (d.iterations.length) {
    const now = Date.now();
    out.push('<h3>Iterations</h3><table class="iterations"><tr><th>#</th><th>started</th><th>took</th><th>ended</th><th>verdict</th></tr>' +
      d.iterations.map((it) => `<tr><td>${it.iteration}</td><td>${esc(clock(it.started_ms))}</td><td>${duration((it.ended_ms || now) - it.started_ms)}</td>` +
        `<td>${esc(it.exit ? exitText(it.exit) : 'running')}</td><td>${esc(it.verdict || '')}</td></tr>`).join('') + '</table>');
  }
  if (d.commit_show) out.push(`<h3>Commit</h3><pre id="diff" class="diff">${diffHtml(d.commit_show)}</pre>`);
  out.push(`<h3>Spec</h3><div class="spec">${markdown(d.spec)}</div>`);
  $('story-body').innerHTML = out.join('');
  const retry = $('retry-story');
  if (retry) retry.addEventListener('click', () => control('retry', [s.id]));
}

function exitText(exit) {
  if (typeof exit === 'string') return exit.replace(/_/g, ' ');
  if ('exited' in exit) return 'exited ' + exit.exited;
  if ('signalled' in exit) return 'killed by signal ' + exit.signalled;
  return JSON.stringify(exit);
}

function diffHtml(text) {
  return text.split('\n').map((line) => {
    const cls = line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') ? 'file'
      : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@@') ? 'hunk' : '';
    return cls ? `<span class="${cls}">${esc(line)}</span>` : esc(line);
  }).join('\n');
}

// A small Markdown subset: headings, lists, code blocks, paragraphs, `code`, **bold**, *emphasis*.
function markdown(text) {
  const inline = (s) => esc(s).replace(/`([^`]+)`/g, '<code>$1</code>').replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>').replace(/\*([^*]+)\*/g, '<em>$1</em>');
  const out = [];
  let list = null;
  let code = null;
  let para = [];
  const flush = () => {
    if (para.length) out.push(`<p>${inline(para.join(' '))}</p>`);
    para = [];
    if (list) out.push(`</${list}>`);
    list = null;
  };
  for (const line of String(text).split('\n')) {
    if (code !== null) {
      if (line.startsWith('```')) {
        out.push(`<pre>${esc(code.join('\n'))}</pre>`);
        code = null;
      } else code.push(line);
      continue;
    }
    let m;
    if (line.startsWith('```')) {
      flush();
      code = [];
    } else if ((m = /^(#{1,6})\s+(.*)/.exec(line))) {
      flush();
      out.push(`<h${m[1].length}>${inline(m[2])}</h${m[1].length}>`);
    } else if ((m = /^\s*(?:[-*]|(\d+)\.)\s+(.*)/.exec(line))) {
      if (para.length) {
        out.push(`<p>${inline(para.join(' '))}</p>`);
        para = [];
      }
      const kind = m[1] ? 'ol' : 'ul';
      if (list !== kind) {
        if (list) out.push(`</${list}>`);
        out.push(`<${kind}>`);
        list = kind;
      }
      out.push(`<li>${inline(m[2].replace(/^\[( |x)\]\s*/, (_, x) => (x === 'x' ? '☑ ' : '☐ ')))}</li>`);
    } else if (!line.trim()) {
      flush();
    } else {
      para.push(line.trim());
    }
  }
  if (code !== null) out.push(`<pre>${esc(code.join('\n'))}</pre>`);
  flush();
  return out.join('');
}

// ---- the log ----------------------------------------------------------------------------------

async function showLog() {
  if (S.logAbort) S.logAbort.abort();
  const id = S.selected;
  if (!id) return;
  const abort = new AbortController();
  S.logAbort = abort;
  const pre = $('log');
  pre.innerHTML = '';
  const iteration = $('log-iteration').value;
  const follow = !iteration && $('log-follow').checked;
  const url = `/api/log?project=${enc(S.project)}&story=${enc(id)}` + (iteration ? `&iteration=${iteration}` : '') + (follow ? '&follow=1' : '');
  let response;
  try {
    response = await fetch(url, { credentials: 'same-origin', signal: abort.signal });
  } catch (e) {
    return;
  }
  if (!response.ok || !response.body) {
    pre.textContent = 'no log: ' + response.statusText;
    return;
  }
  // A followed log moves on to later iterations by itself; one that ended must be asked again.
  S.logFollowing = follow;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const state = { rest: '', fg: null, bold: false };
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      break;
    }
    if (chunk.done || abort.signal.aborted) break;
    const text = state.rest + decoder.decode(chunk.value, { stream: true });
    const lines = text.split('\n');
    state.rest = lines.pop();
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.insertAdjacentHTML('beforeend', lines.map((l) => logLine(l, state)).join(''));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  if (abort.signal.aborted) return;
  S.logFollowing = false;
  if (state.rest) pre.insertAdjacentHTML('beforeend', logLine(state.rest, state));
}

// One line of a log: an iteration mark, a Claude stream-json event shown as a turn, or text with ANSI colours.
function logLine(line, state) {
  if (line.startsWith('\u001e')) {
    const k = line.slice(1);
    return k === '0' ? '' : `<span class="iter">── iteration ${esc(k)} ──</span>`;
  }
  if (line.startsWith('{')) {
    let ev = null;
    try {
      ev = JSON.parse(line);
    } catch (e) {
      ev = null;
    }
    if (ev && typeof ev.type === 'string') return streamJsonLine(ev);
  }
  return ansi(line, state) + '\n';
}

function streamJsonLine(ev) {
  const turn = (cls, text) => `<span class="turn ${cls}">${esc(text)}</span>`;
  if (ev.type === 'system') return turn('tool', `session ${ev.subtype || ''}${ev.model ? ' · ' + ev.model : ''}`);
  if (ev.type === 'result') {
    const cost = ev.total_cost_usd ?? ev.cost_usd;
    return turn(ev.is_error ? 'error' : 'result', `■ result (${ev.subtype || 'done'})${cost != null ? ' · ' + money(cost) : ''}${ev.result ? ': ' + ev.result : ''}`);
  }
  const content = ev.message && Array.isArray(ev.message.content) ? ev.message.content : [];
  const parts = content.map((c) => {
    if (c.type === 'text') return turn('', (ev.type === 'assistant' ? 'assistant: ' : 'user: ') + c.text);
    if (c.type === 'tool_use') return turn('tool', `⚙ ${c.name} ${clip(JSON.stringify(c.input || {}), 300)}`);
    if (c.type === 'tool_result') {
      const body = typeof c.content === 'string' ? c.content : JSON.stringify(c.content);
      return turn(c.is_error ? 'error' : '', '↳ ' + clip(body || '', 400));
    }
    return '';
  });
  return parts.join('') || turn('', ev.type);
}

// SGR colours and bold; every other escape sequence is dropped.
function ansi(line, state) {
  let out = '';
  let open = false;
  const start = () => {
    const cls = [state.bold ? 'a-b' : '', state.fg ? 'a-' + state.fg : ''].filter(Boolean).join(' ');
    if (cls) {
      out += `<span class="${cls}">`;
      open = true;
    }
  };
  start();
  const re = /\u001b\[([0-9;]*)([A-Za-z])/g;
  let last = 0;
  let m;
  while ((m = re.exec(line))) {
    out += esc(line.slice(last, m.index));
    last = re.lastIndex;
    if (m[2] !== 'm') continue;
    for (const code of (m[1] || '0').split(';').map(Number)) {
      if (code === 0) {
        state.fg = null;
        state.bold = false;
      } else if (code === 1) state.bold = true;
      else if (code === 22) state.bold = false;
      else if (code >= 30 && code <= 37) state.fg = code;
      else if (code >= 90 && code <= 97) state.fg = code - 60;
      else if (code === 39) state.fg = null;
    }
    if (open) out += '</span>';
    open = false;
    start();
  }
  out += esc(line.slice(last));
  if (open) out += '</span>';
  return out;
}

