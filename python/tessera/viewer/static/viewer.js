// tessera view: a Deep Zoom viewer on one canvas. The slide's tiles, the tissue mask and the
// patch boxes are drawn with one transform (level-0 pixels to screen pixels), so overlays
// cannot drift from the image. Coarser levels already loaded fill in while finer tiles
// arrive, so panning and zooming never show holes. The view is kept in the address's
// fragment (#x=..&y=..&zoom=..: the level-0 point at the centre, and screen pixels per
// level-0 pixel), so a view can be bookmarked or opened directly.
'use strict';
(function () {
  const canvas = document.getElementById('view');
  const ctx = canvas.getContext('2d');
  const statusEl = document.getElementById('status');
  const MAX_INFLIGHT = 8;      // tile requests at once (a browser opens about 6 per host)
  const MAX_TILES = 1500;      // decoded tiles kept; the coarsest levels are never dropped
  const EASE_MS = 90;          // time constant of the zoom animation
  const PATCH_COLOR = '#00b4ff';

  let info = null;             // /info.json
  let W = 0, H = 0;            // level-0 size
  let dzMax = 0;               // the finest Deep Zoom level (1:1 with level 0)
  let dzDims = [];             // [width, height] of each Deep Zoom level
  let baseLevel = 0;           // the finest level held in one tile: loaded first, always drawn
  const tiles = new Map();     // "level/col/row" -> {img, state: 0 loading 1 loaded 2 failed, used}
  let inflight = 0;
  let frame = 0;
  let wanted = [];             // tiles the current view lacks, most needed first

  // The view: level-0 point at the centre of the canvas, and screen pixels per level-0 pixel.
  const view = {x: 0, y: 0, s: 1};
  // Where the view is going; an anchor keeps one level-0 point under one screen point while
  // the scale eases (zooming about the cursor).
  const goal = {x: 0, y: 0, s: 1, anchor: null};
  let lastTime = 0;
  let redraw = true;

  let patches = null;          // /locations.json
  let patchesOn = true;
  let mask = null;             // {img, width, height, scaleX, scaleY} once loaded
  let maskOn = false, maskOpacity = 0.4, maskLoading = false;

  // ---- geometry ------------------------------------------------------------------------

  function cssSize() { return [canvas.clientWidth, canvas.clientHeight]; }
  function toScreen(px, py) {
    const [cw, ch] = cssSize();
    return [(px - view.x) * view.s + cw / 2, (py - view.y) * view.s + ch / 2];
  }
  function toSlide(sx, sy, v) {
    const [cw, ch] = cssSize();
    return [(sx - cw / 2) / v.s + v.x, (sy - ch / 2) / v.s + v.y];
  }
  function fitScale() {
    const [cw, ch] = cssSize();
    return Math.min(cw / W, ch / H) * 0.95;
  }
  function minScale() { return fitScale() / 4; }
  function maxScale() { return 8; }
  function clampGoal() {
    goal.s = Math.min(maxScale(), Math.max(minScale(), goal.s));
    goal.x = Math.min(W, Math.max(0, goal.x));
    goal.y = Math.min(H, Math.max(0, goal.y));
  }
  // The Deep Zoom level whose pixels are at least as fine as the screen's.
  function levelFor(s) {
    const l = Math.ceil(dzMax + Math.log2(s * (window.devicePixelRatio || 1)) - 1e-9);
    return Math.max(0, Math.min(dzMax, l));
  }

  // ---- tiles ---------------------------------------------------------------------------

  function tileKey(l, c, r) { return l + '/' + c + '/' + r; }
  function tileRange(l, x0, y0, x1, y1) {
    const f = Math.pow(2, dzMax - l), t = info.deepzoom.tile_size;
    const [lw, lh] = dzDims[l];
    const cols = Math.ceil(lw / t), rows = Math.ceil(lh / t);
    const c0 = Math.max(0, Math.floor(x0 / f / t)), c1 = Math.min(cols - 1, Math.floor(x1 / f / t));
    const r0 = Math.max(0, Math.floor(y0 / f / t)), r1 = Math.min(rows - 1, Math.floor(y1 / f / t));
    return [c0, r0, c1, r1];
  }
  function visibleRect() {
    const [cw, ch] = cssSize();
    const a = toSlide(0, 0, view), b = toSlide(cw, ch, view);
    return [a[0], a[1], b[0], b[1]];
  }
  function requestTile(l, c, r) {
    const key = tileKey(l, c, r);
    const t = {img: new Image(), state: 0, used: frame, level: l};
    tiles.set(key, t);
    inflight++;
    t.img.onload = () => { t.state = 1; inflight--; redraw = true; };
    t.img.onerror = () => { t.state = 2; inflight--; redraw = true; };
    t.img.src = '/slide_files/' + l + '/' + c + '_' + r + '.jpeg';
  }
  function pump() {
    while (inflight < MAX_INFLIGHT && wanted.length) {
      const [l, c, r] = wanted.shift();
      if (!tiles.has(tileKey(l, c, r))) requestTile(l, c, r);
    }
  }
  function evict() {
    if (tiles.size <= MAX_TILES) return;
    const old = [...tiles.entries()].filter(([, t]) => t.state !== 0 && t.level > baseLevel)
      .sort((a, b) => a[1].used - b[1].used);
    for (let i = 0; i < old.length && tiles.size > MAX_TILES; i++) tiles.delete(old[i][0]);
  }
  // Draws level l's loaded tiles over the visible rectangle; the tiles it lacks go on the
  // wanted list when `want` (the level the screen needs, and the base level).
  function drawLevel(l, rect, want) {
    const f = Math.pow(2, dzMax - l), t = info.deepzoom.tile_size, ov = info.deepzoom.overlap;
    const [c0, r0, c1, r1] = tileRange(l, ...rect);
    const [cx, cy] = [(c0 + c1) / 2, (r0 + r1) / 2];
    const lack = [];
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const tile = tiles.get(tileKey(l, c, r));
        if (!tile) { if (want) lack.push([l, c, r]); continue; }
        tile.used = frame;
        if (tile.state !== 1) continue;
        const px = (c * t - (c ? ov : 0)) * f, py = (r * t - (r ? ov : 0)) * f;
        const [sx, sy] = toScreen(px, py);
        ctx.drawImage(tile.img, sx, sy, tile.img.naturalWidth * f * view.s,
                      tile.img.naturalHeight * f * view.s);
      }
    }
    lack.sort((a, b) => Math.hypot(a[1] - cx, a[2] - cy) - Math.hypot(b[1] - cx, b[2] - cy));
    return lack;
  }

  // ---- overlays ------------------------------------------------------------------------

  function drawMask() {
    if (!maskOn || !mask) return;
    const [sx, sy] = toScreen(0, 0);
    ctx.save();
    ctx.globalAlpha = maskOpacity;
    ctx.imageSmoothingEnabled = false;  // show the mask's own pixels
    ctx.drawImage(mask.img, sx, sy, mask.width * mask.scaleX * view.s,
                  mask.height * mask.scaleY * view.s);
    ctx.restore();
  }
  // Each box on whole screen pixels, so its 2-pixel outline is solid, not blurred.
  function drawPatches(rect) {
    if (!patchesOn || !patches) return;
    const b = patches.boxes;
    ctx.save();
    ctx.strokeStyle = PATCH_COLOR;
    ctx.lineWidth = 2;
    ctx.beginPath();
    for (let i = 0; i < b.length; i += 4) {
      if (b[i + 2] < rect[0] || b[i] > rect[2] || b[i + 3] < rect[1] || b[i + 1] > rect[3]) continue;
      const [x0, y0] = toScreen(b[i], b[i + 1]);
      const [x1, y1] = toScreen(b[i + 2], b[i + 3]);
      const ax = Math.round(x0), ay = Math.round(y0);
      ctx.rect(ax, ay, Math.max(1, Math.round(x1) - ax), Math.max(1, Math.round(y1) - ay));
    }
    ctx.stroke();
    ctx.restore();
  }
  function loadMask() {
    if (mask || maskLoading) return;
    maskLoading = true;
    setStatusNote('computing the tissue mask...');
    fetch('/mask.json').then((r) => r.ok ? r.json() : r.text().then((t) => { throw new Error(t); }))
      .then((m) => {
        const img = new Image();
        img.onload = () => {
          mask = {img, width: m.width, height: m.height, scaleX: m.downsample, scaleY: m.downsample};
          document.getElementById('mask-text').textContent = '(' + m.width + ' \u00d7 ' + m.height +
            (m.mpp ? ', ' + m.mpp.toPrecision(3) + ' \u00b5m/px' : ', downsample ' + m.downsample) +
            ', ' + (100 * m.tissue_fraction).toFixed(1) + '% tissue)';
          maskLoading = false; setStatusNote(''); redraw = true;
        };
        img.onerror = () => { maskLoading = false; setStatusNote('the mask image failed'); };
        img.src = '/mask.png';
      })
      .catch((e) => { maskLoading = false; setStatusNote('no mask: ' + e.message.trim()); });
  }

  // The patch under the pointer (the last drawn, so the one on top), named in the status line
  // with its corner as the file gives it and, from tessera grid, its tissue fraction.
  let hoverText = '';
  function hover(sx, sy) {
    let text = '';
    if (patches && patchesOn) {
      const [px, py] = toSlide(sx, sy, view), b = patches.boxes;
      for (let i = b.length - 4; i >= 0; i -= 4) {
        if (px >= b[i] && px < b[i + 2] && py >= b[i + 1] && py < b[i + 3]) {
          const n = i / 4;
          text = 'patch ' + (n + 1) + ' at ' + patches.locations[2 * n] + ', ' +
            patches.locations[2 * n + 1] + (patches.tissue ? ', tissue ' + patches.tissue[n] : '');
          break;
        }
      }
    }
    if (text !== hoverText) { hoverText = text; redraw = true; }
  }

  // ---- the frame -----------------------------------------------------------------------

  let note = '';
  function setStatusNote(text) { note = text; redraw = true; }

  function step(now) {
    const dt = lastTime ? Math.min(100, now - lastTime) : 16;
    lastTime = now;
    const k = 1 - Math.exp(-dt / EASE_MS);
    const ds = Math.log(goal.s) - Math.log(view.s);
    const near = Math.abs(ds) <= 1e-4 && Math.abs(goal.x - view.x) * view.s <= 0.05 &&
      Math.abs(goal.y - view.y) * view.s <= 0.05;
    if (near) {
      if (view.s !== goal.s || view.x !== goal.x || view.y !== goal.y) {
        Object.assign(view, {x: goal.x, y: goal.y, s: goal.s});
        redraw = true;
      }
      goal.anchor = null;
    } else {
      view.s = Math.abs(ds) > 1e-4 ? Math.exp(Math.log(view.s) + ds * k) : goal.s;
      if (goal.anchor && view.s !== goal.s) {
        const [cw, ch] = cssSize(), a = goal.anchor;
        view.x = a.px - (a.sx - cw / 2) / view.s;
        view.y = a.py - (a.sy - ch / 2) / view.s;
      } else {
        view.x += (goal.x - view.x) * k;
        view.y += (goal.y - view.y) * k;
      }
      redraw = true;
    }
    if (redraw && info) draw();
    requestAnimationFrame(step);
  }

  function draw() {
    redraw = false;
    frame++;
    const dpr = window.devicePixelRatio || 1;
    const [cw, ch] = cssSize();
    if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
      canvas.width = Math.round(cw * dpr);
      canvas.height = Math.round(ch * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#3a3a3a';
    ctx.fillRect(0, 0, cw, ch);
    const [ox, oy] = toScreen(0, 0);
    ctx.fillStyle = info.background;
    ctx.fillRect(ox, oy, W * view.s, H * view.s);
    const rect = visibleRect();
    const need = levelFor(view.s);
    let lack = drawLevel(baseLevel, rect, true);
    for (let l = Math.max(baseLevel + 1, need - 3); l <= need; l++) {
      const miss = drawLevel(l, rect, l === need);
      if (l === need) lack = lack.concat(miss);
    }
    wanted = lack;
    pump();
    evict();
    drawMask();
    drawPatches(rect);
    const mpp = info.mpp ? ' \u00b7 ' + (info.mpp[0] / view.s).toPrecision(3) + ' \u00b5m/px' : '';
    statusEl.textContent = 'zoom ' + (view.s * 100).toPrecision(3) + '%' + mpp +
      (note ? ' \u00b7 ' + note : '') + (hoverText ? ' \u00b7 ' + hoverText : '');
    if (wanted.length || inflight) redraw = true;  // keep asking until the view is whole
    saveHash();
  }

  // ---- the address ---------------------------------------------------------------------

  let hashTimer = 0;
  function saveHash() {
    clearTimeout(hashTimer);
    hashTimer = setTimeout(() => {
      const h = '#x=' + Math.round(goal.x) + '&y=' + Math.round(goal.y) + '&zoom=' +
        goal.s.toPrecision(4) + (maskOn ? '&mask=1' : '') + (patches && !patchesOn ? '&patches=0' : '');
      if (location.hash !== h) history.replaceState(null, '', h);
    }, 300);
  }
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const num = (k) => (p.has(k) && isFinite(parseFloat(p.get(k))) ? parseFloat(p.get(k)) : null);
    return {x: num('x'), y: num('y'), zoom: num('zoom'), mask: p.get('mask'), patches: p.get('patches')};
  }

  // ---- input ---------------------------------------------------------------------------

  function zoomAt(factor, sx, sy) {
    const [px, py] = toSlide(sx, sy, view);
    // compose with a zoom still running, about the new point
    goal.s = Math.min(maxScale(), Math.max(minScale(), goal.s * factor));
    goal.anchor = {sx, sy, px, py};
    const [cw, ch] = cssSize();
    goal.x = px - (sx - cw / 2) / goal.s;
    goal.y = py - (sy - ch / 2) / goal.s;
  }
  function centre() { const [cw, ch] = cssSize(); return [cw / 2, ch / 2]; }
  function home() {
    goal.s = fitScale(); goal.x = W / 2; goal.y = H / 2; goal.anchor = null;
  }
  function panBy(dx, dy) {  // screen pixels, at once (dragging follows the pointer)
    view.x -= dx / view.s; view.y -= dy / view.s;
    goal.x = Math.min(W, Math.max(0, view.x)); goal.y = Math.min(H, Math.max(0, view.y));
    view.x = goal.x; view.y = goal.y; goal.s = view.s; goal.anchor = null;
    redraw = true;
  }

  const pointers = new Map();
  let pinch = null;
  canvas.addEventListener('pointerdown', (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, [e.offsetX, e.offsetY]);
    canvas.classList.add('dragging');
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      pinch = {d: Math.hypot(a[0] - b[0], a[1] - b[1])};
    }
  });
  canvas.addEventListener('pointermove', (e) => {
    const last = pointers.get(e.pointerId);
    if (!last) { hover(e.offsetX, e.offsetY); return; }
    if (pointers.size === 1) {
      panBy(e.offsetX - last[0], e.offsetY - last[1]);
    } else if (pinch) {
      pointers.set(e.pointerId, [e.offsetX, e.offsetY]);
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a[0] - b[0], a[1] - b[1]);
      if (pinch.d > 0 && d > 0) zoomAt(d / pinch.d, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
      pinch.d = d;
    }
    pointers.set(e.pointerId, [e.offsetX, e.offsetY]);
  });
  function pointerUp(e) {
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
    if (!pointers.size) canvas.classList.remove('dragging');
  }
  canvas.addEventListener('pointerup', pointerUp);
  canvas.addEventListener('pointercancel', pointerUp);
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    const lines = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    zoomAt(Math.pow(2, -e.deltaY * lines / 300), e.offsetX, e.offsetY);
  }, {passive: false});
  canvas.addEventListener('dblclick', (e) => zoomAt(e.shiftKey ? 0.5 : 2, e.offsetX, e.offsetY));
  window.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT') return;
    const [cx, cy] = centre(), step = 120;
    const keys = {
      '+': () => zoomAt(1.5, cx, cy), '=': () => zoomAt(1.5, cx, cy), '-': () => zoomAt(1 / 1.5, cx, cy),
      '0': home, Home: home,
      ArrowLeft: () => { goal.x -= step / goal.s; }, ArrowRight: () => { goal.x += step / goal.s; },
      ArrowUp: () => { goal.y -= step / goal.s; }, ArrowDown: () => { goal.y += step / goal.s; },
    };
    if (keys[e.key]) { keys[e.key](); if (e.key.startsWith('Arrow')) { goal.anchor = null; clampGoal(); } e.preventDefault(); }
  });
  document.getElementById('zoom-in').onclick = () => zoomAt(2, ...centre());
  document.getElementById('zoom-out').onclick = () => zoomAt(0.5, ...centre());
  document.getElementById('zoom-home').onclick = home;
  window.addEventListener('resize', () => { redraw = true; });

  // ---- the side panel ------------------------------------------------------------------

  function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }
  function fillPanel() {
    document.title = info.name + ' \u2014 tessera view';
    document.getElementById('name').textContent = info.name;
    document.getElementById('summary').textContent = W + ' \u00d7 ' + H + ' pixels' +
      (info.mpp ? ', ' + info.mpp[0] + ' \u00d7 ' + info.mpp[1] + ' \u00b5m/px' : '') +
      (info.vendor ? ', ' + info.vendor : '');
    const lv = document.querySelector('#levels tbody');
    info.levels.forEach((l, i) => {
      const row = lv.insertRow();
      [i, l.width, l.height, l.downsample.toFixed(3)].forEach((v) => cell(row, String(v)));
    });
    const props = document.querySelector('#props tbody');
    for (const [k, v] of Object.entries(info.properties)) {
      const row = props.insertRow();
      cell(row, k); cell(row, v);
    }
    document.getElementById('prop-filter').addEventListener('input', (e) => {
      const q = e.target.value.toLowerCase();
      for (const row of props.rows) row.hidden = q && !row.textContent.toLowerCase().includes(q);
    });
    const assoc = document.getElementById('associated');
    if (!info.associated.length) assoc.textContent = 'none';
    for (const a of info.associated) {
      const fig = document.createElement('figure');
      const link = document.createElement('a');
      link.href = '/associated/' + encodeURIComponent(a.name) + '.png';
      link.target = '_blank';
      const img = document.createElement('img');
      img.src = link.href; img.alt = a.name; img.loading = 'lazy';
      link.appendChild(img);
      const cap = document.createElement('figcaption');
      cap.textContent = a.name + ' (' + a.width + ' \u00d7 ' + a.height + ')';
      fig.append(link, cap);
      assoc.appendChild(fig);
    }
  }
  function setupOverlays(hash) {
    if (info.mask.available) {
      document.getElementById('mask-row').hidden = false;
      const box = document.getElementById('mask-on');
      maskOn = hash.mask !== null ? hash.mask === '1' : info.mask.shown;
      box.checked = maskOn;
      box.onchange = () => { maskOn = box.checked; if (maskOn) loadMask(); redraw = true; };
      const op = document.getElementById('mask-opacity');
      op.oninput = () => { maskOpacity = op.value / 100; redraw = true; };
      if (maskOn) loadMask();
    }
    document.getElementById('no-patches').hidden = !!info.locations;
    if (info.locations) {
      const l = info.locations;
      document.getElementById('patches-row').hidden = false;
      document.getElementById('patches-text').textContent = '(' + l.count + ' of ' + l.size[0] +
        ' \u00d7 ' + l.size[1] + ' at level ' + l.level + ', ' + l.file + ')';
      const box = document.getElementById('patches-on');
      patchesOn = hash.patches !== '0';
      box.checked = patchesOn;
      box.onchange = () => { patchesOn = box.checked; redraw = true; };
      fetch('/locations.json').then((r) => r.json()).then((p) => { patches = p; redraw = true; });
    }
  }

  // ---- start ---------------------------------------------------------------------------

  fetch('/info.json').then((r) => r.json()).then((i) => {
    info = i;
    W = i.width; H = i.height;
    dzDims = i.deepzoom.dimensions;
    dzMax = i.deepzoom.levels - 1;
    baseLevel = 0;
    while (baseLevel < dzMax && dzDims[baseLevel + 1][0] <= i.deepzoom.tile_size &&
           dzDims[baseLevel + 1][1] <= i.deepzoom.tile_size) baseLevel++;
    fillPanel();
    const hash = readHash();
    home();
    if (hash.zoom !== null) goal.s = hash.zoom;
    if (hash.x !== null) goal.x = hash.x;
    if (hash.y !== null) goal.y = hash.y;
    clampGoal();
    Object.assign(view, {x: goal.x, y: goal.y, s: goal.s});
    setupOverlays(hash);
    redraw = true;
  });
  // A fragment typed or pasted into the address moves the view there (ours, written by
  // replaceState, does not fire this).
  window.addEventListener('hashchange', () => {
    if (!info) return;
    const hash = readHash();
    if (hash.zoom !== null) goal.s = hash.zoom;
    if (hash.x !== null) goal.x = hash.x;
    if (hash.y !== null) goal.y = hash.y;
    goal.anchor = null;
    clampGoal();
    if (hash.patches !== null && info.locations) {
      patchesOn = hash.patches !== '0';
      document.getElementById('patches-on').checked = patchesOn;
    }
    if (hash.mask !== null && info.mask.available) {
      maskOn = hash.mask === '1';
      document.getElementById('mask-on').checked = maskOn;
      if (maskOn) loadMask();
    }
    redraw = true;
  });
  requestAnimationFrame(step);

  // For scripts and tests: the view, and whether everything it needs has arrived and been
  // drawn.
  window.tesseraViewer = {
    view: () => ({x: view.x, y: view.y, zoom: view.s, level: levelFor(view.s),
                  width: canvas.clientWidth, height: canvas.clientHeight}),
    idle: () => !!info && !redraw && view.s === goal.s && view.x === goal.x && view.y === goal.y &&
      !wanted.length && !inflight && (!maskOn || !!mask || !maskLoading) &&
      (!info.locations || !!patches),
    setView: (x, y, zoom) => { Object.assign(goal, {x, y, s: zoom, anchor: null}); clampGoal(); },
  };
})();
