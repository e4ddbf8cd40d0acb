// sticler dashboard, the graph: the phase's stories as laid out by the server (layout.rs), drawn
// into the SVG where the view is, zoomed and panned through its viewBox. Loaded after app.js,
// whose state (S) and helpers it uses.
'use strict';

// ---- the graph ---------------------------------------------------------------------------

function nodeClass(story) {
  const phase = current();
  const waiting = phase && phase.paused_until && (story.state === 'pending' || story.state === 'ready');
  return `node st-${waiting ? 'waiting' : story.state}` + (story.id === S.selected ? ' selected' : '');
}

function nodeMeta(story) {
  const parts = [story.running_iteration ? `iter ${story.running_iteration}` : `iter ${story.iteration}`];
  if (story.criteria_total) parts.push(`${story.criteria_done}/${story.criteria_total}`);
  if (story.cost_usd != null) parts.push(money(story.cost_usd));
  parts.push(story.state);
  return parts.join(' · ');
}

function clip(text, max) {
  return text.length > max ? text.slice(0, max - 1) + '…' : text;
}

function renderGraph(phase) {
  if (!S.view) fit(phase.layout, false);
  S.drawn = null;
  applyView();
  // After the next paint: what the bench reads as the graph's first paint.
  requestAnimationFrame(() => setTimeout(() => performance.mark('sticler-graph-painted')));
}

// Only what lies in or near the view is in the DOM: a 1,000-story graph stays light to draw and
// to update. Drawn again when a pan or a zoom leaves the region drawn.
function drawVisible() {
  const phase = current();
  const v = S.view;
  if (!phase || !v) return;
  const r = S.drawn;
  if (r && v.x >= r.x && v.y >= r.y && v.x + v.w <= r.x + r.w && v.y + v.h <= r.y + r.h) return;
  const region = { x: v.x - v.w / 2, y: v.y - v.h / 2, w: v.w * 2, h: v.h * 2 };
  S.drawn = region;
  const inside = (x1, y1, x2, y2) => x2 >= region.x && x1 <= region.x + region.w && y2 >= region.y && y1 <= region.y + region.h;
  const layout = phase.layout;
  const out = [];
  for (const [from, to] of layout.edges) {
    const a = layout.nodes[from];
    const b = layout.nodes[to];
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    if (!inside(x1, Math.min(y1, y2), x2, Math.max(y1, y2))) continue;
    const mid = (x1 + x2) / 2;
    out.push(`<path class="edge${a.external ? ' external' : ''}" d="M${x1} ${y1}C${mid} ${y1} ${mid} ${y2} ${x2} ${y2}"/>`);
  }
  for (const node of layout.nodes) {
    if (!inside(node.x, node.y, node.x + NODE_W, node.y + NODE_H)) continue;
    if (node.external) {
      out.push(`<g class="node external" transform="translate(${node.x} ${node.y})"><title>a story of another phase</title>` +
        `<rect width="${NODE_W}" height="${NODE_H}" rx="6"/><text x="10" y="22" class="sid">↗ ${esc(node.id)}</text>` +
        `<text x="10" y="40" class="meta">other phase</text></g>`);
      continue;
    }
    const story = S.stories.get(node.id);
    if (!story) continue;
    out.push(`<g class="${nodeClass(story)}" id="n-${esc(story.id)}" data-id="${esc(story.id)}" transform="translate(${node.x} ${node.y})">` +
      `<title>${esc(story.id)}: ${esc(story.title)}</title><rect width="${NODE_W}" height="${NODE_H}" rx="6"/>` +
      `<text x="10" y="17" class="sid">${esc(story.id)}</text><text x="10" y="32" class="title">${esc(clip(story.title, 28))}</text>` +
      `<text x="10" y="47" class="meta">${esc(nodeMeta(story))}</text></g>`);
  }
  $('graph').innerHTML = out.join('');
}

function updateNode(story) {
  const el = document.getElementById('n-' + story.id);
  if (!el) return;
  el.setAttribute('class', nodeClass(story));
  const meta = el.querySelector('.meta');
  if (meta) meta.textContent = nodeMeta(story);
}

// ---- zoom and pan (the SVG's viewBox) --------------------------------------------------------

// The view that shows the whole graph, top left, never larger than MAX_SCALE; the first view
// of a big graph stops at MIN_FIRST_SCALE (readable) and the rest is a pan or a zoom away.
function fit(layout, whole) {
  const pad = 20;
  const w = Math.max(layout.width, NODE_W) + 2 * pad;
  const h = Math.max(layout.height, NODE_H) + 2 * pad;
  const box = $('graph').getBoundingClientRect();
  const bw = box.width || 1280;
  const bh = box.height || 600;
  let scale = Math.min(bw / w, bh / h, MAX_SCALE);
  if (!whole) scale = Math.max(scale, MIN_FIRST_SCALE);
  S.view = { x: -pad, y: -pad, w: bw / scale, h: bh / scale };
  S.zoomed = false;
}

// Panel opened or closed, window resized: the graph's room changed; refit unless zoomed by hand.
function refit() {
  const phase = current();
  if (phase && !S.zoomed) {
    fit(phase.layout, false);
    applyView();
  }
}

function applyView() {
  const v = S.view;
  if (!v) return;
  $('graph').setAttribute('viewBox', `${v.x} ${v.y} ${v.w} ${v.h}`);
  drawVisible();
}

function zoom(factor, cx, cy) {
  const v = S.view;
  if (!v) return;
  S.zoomed = true;
  const px = cx ?? v.x + v.w / 2;
  const py = cy ?? v.y + v.h / 2;
  v.x = px - (px - v.x) * factor;
  v.y = py - (py - v.y) * factor;
  v.w *= factor;
  v.h *= factor;
  applyView();
}

function setUpZoom() {
  const svg = $('graph');
  $('zoom-in').addEventListener('click', () => zoom(0.8));
  $('zoom-out').addEventListener('click', () => zoom(1.25));
  $('zoom-fit').addEventListener('click', () => {
    const phase = current();
    if (phase) {
      fit(phase.layout, true);
      applyView();
    }
  });
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    const box = svg.getBoundingClientRect();
    const v = S.view;
    if (!v) return;
    zoom(e.deltaY > 0 ? 1.15 : 1 / 1.15, v.x + ((e.clientX - box.left) / box.width) * v.w, v.y + ((e.clientY - box.top) / box.height) * v.h);
  }, { passive: false });
  let drag = null;
  svg.addEventListener('pointerdown', (e) => {
    const node = e.target.closest('.node[data-id]');
    if (node) {
      openStory(node.dataset.id);
      return;
    }
    drag = { x: e.clientX, y: e.clientY, view: { ...S.view } };
    svg.classList.add('panning');
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener('pointermove', (e) => {
    if (!drag || !S.view) return;
    const box = svg.getBoundingClientRect();
    S.view.x = drag.view.x - ((e.clientX - drag.x) / box.width) * drag.view.w;
    S.view.y = drag.view.y - ((e.clientY - drag.y) / box.height) * drag.view.h;
    S.zoomed = true;
    applyView();
  });
  const end = () => {
    drag = null;
    svg.classList.remove('panning');
  };
  svg.addEventListener('pointerup', end);
  svg.addEventListener('pointercancel', end);
}

