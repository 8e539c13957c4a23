// A small slippy map for the LCZ cube: XYZ tiles (256 px, Web Mercator), drag to pan, wheel or
// buttons to zoom, click for the class at a point. No dependencies and no network beyond this
// server, so it works offline and in a static export.
//
// URL parameters (query or hash): z, lat, lon (the view; also kept in the hash as #z/lat/lon),
// year, clickpx=X,Y (a scripted click at map pixel X,Y once the view is drawn), click=LON,LAT.
"use strict";

(function () {
  const TILE = 256;
  const params = new URLSearchParams(location.search);
  const mapEl = document.getElementById("map");
  const tilesEl = document.getElementById("tiles");
  const readout = document.getElementById("readout");
  const statusEl = document.getElementById("status");
  let info = null;   // info.json: bounds, zooms, years, static flag
  let legend = [];   // legend.json: [{code, label, name, color}]
  const view = { z: 2, cx: 0, cy: 0 };  // zoom and centre in world pixels at that zoom
  const images = new Map();

  function project(lon, lat, z) {
    const n = Math.pow(2, z) * TILE;
    const la = Math.max(-85.05112878, Math.min(85.05112878, lat)) * Math.PI / 180;
    return [(lon + 180) / 360 * n, (1 - Math.asinh(Math.tan(la)) / Math.PI) / 2 * n];
  }

  function unproject(x, y, z) {
    const n = Math.pow(2, z) * TILE;
    const lon = x / n * 360 - 180;
    const lat = Math.atan(Math.sinh(Math.PI * (1 - 2 * y / n))) * 180 / Math.PI;
    return [lon, lat];
  }

  function size() { return [mapEl.clientWidth, mapEl.clientHeight]; }

  function origin() {  // world pixel at the map's top-left corner, whole pixels: crisp tiles
    const [w, h] = size();
    return [Math.round(view.cx - w / 2), Math.round(view.cy - h / 2)];
  }

  function tileUrl(z, x, y) {
    const year = params.get("year");
    return "tiles/" + z + "/" + x + "/" + y + ".png" + (year && !info.static ? "?year=" + year : "");
  }

  function draw() {
    const [w, h] = size();
    const [ox, oy] = origin();
    const n = Math.pow(2, view.z);
    const want = new Set();
    // one ring of tiles beyond the edges: panning shows no gaps, and a window that grows
    // (a headless screenshot does, after layout) is still covered
    for (let ty = Math.floor(oy / TILE) - 1; ty * TILE < oy + h + TILE; ty++) {
      if (ty < 0 || ty >= n) continue;
      for (let tx = Math.floor(ox / TILE) - 1; tx * TILE < ox + w + TILE; tx++) {
        const x = ((tx % n) + n) % n;
        if (info.static && !inStatic(view.z, x, ty)) continue;
        const key = view.z + "/" + tx + "/" + ty;
        want.add(key);
        let img = images.get(key);
        if (!img) {
          img = new Image();
          img.alt = "";
          img.onerror = () => { img.style.visibility = "hidden"; };
          img.src = tileUrl(view.z, x, ty);
          images.set(key, img);
          tilesEl.appendChild(img);
        }
        img.style.left = (tx * TILE - ox) + "px";
        img.style.top = (ty * TILE - oy) + "px";
      }
    }
    for (const [key, img] of images) {
      if (!want.has(key)) { img.remove(); images.delete(key); }
    }
    const [lon, lat] = unproject(view.cx, view.cy, view.z);
    const hash = "#" + view.z + "/" + lat.toFixed(5) + "/" + lon.toFixed(5);
    if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
    mapEl.dataset.view = [view.z, ox, oy, w, h].join(",");  // for tests and debugging
    statusEl.textContent = "zoom " + view.z + " · " + lat.toFixed(4) + ", " + lon.toFixed(4);
  }

  function inStatic(z, x, y) {  // a static export holds tiles over the data's box only
    if (z < info.minzoom || z > info.maxzoom) return false;
    const b = info.bounds;
    const [x0, y0] = project(b[0], b[3], z), [x1, y1] = project(b[2], b[1], z);
    return x >= Math.floor(x0 / TILE) && x <= Math.floor(x1 / TILE)
      && y >= Math.floor(y0 / TILE) && y <= Math.floor(y1 / TILE);
  }

  function setZoom(z, px, py) {  // keep world point under map pixel (px, py) fixed
    z = Math.max(info.minzoom, Math.min(info.maxzoom, z));
    if (z === view.z) return;
    const [w, h] = size();
    if (px === undefined) { px = w / 2; py = h / 2; }
    const [ox, oy] = [view.cx - w / 2, view.cy - h / 2];
    const f = Math.pow(2, z - view.z);
    view.cx = (ox + px) * f - px + w / 2;
    view.cy = (oy + py) * f - py + h / 2;
    view.z = z;
    draw();
  }

  function lonlatAt(px, py) {
    const [ox, oy] = origin();
    return unproject(ox + px, oy + py, view.z);
  }

  function show(p, note) {
    readout.textContent = "";
    if (!p || !p.code) {
      readout.textContent = "No data here" + (p ? " (" + p.lat.toFixed(5) + ", " + p.lon.toFixed(5) + ")" : "");
      readout.dataset.code = "0";
      return;
    }
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = p.color;
    readout.appendChild(sw);
    const txt = document.createElement("span");
    txt.className = "class-name";
    txt.textContent = "LCZ " + p.label + " — " + p.name;
    readout.appendChild(txt);
    const where = document.createElement("div");
    where.textContent = p.lat.toFixed(5) + ", " + p.lon.toFixed(5) + (note ? " · " + note : "");
    readout.appendChild(where);
    readout.dataset.code = String(p.code);
  }

  function colourAt(px, py) {  // static export: the class from the drawn tile's colour
    const [ox, oy] = origin();
    const wx = ox + px, wy = oy + py;
    const img = images.get(view.z + "/" + Math.floor(wx / TILE) + "/" + Math.floor(wy / TILE));
    if (!img || !img.complete || !img.naturalWidth) return null;
    const c = document.createElement("canvas");
    c.width = c.height = 1;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, -(((wx % TILE) + TILE) % TILE), -(((wy % TILE) + TILE) % TILE));
    const d = ctx.getImageData(0, 0, 1, 1).data;
    if (d[3] === 0) return null;
    const hex = "#" + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, "0")).join("").toUpperCase();
    return legend.find((e) => e.color.toUpperCase() === hex) || null;
  }

  function query(lon, lat, px, py) {
    readout.textContent = "…";
    const year = params.get("year");
    if (info.static) {
      const e = px === undefined ? null : colourAt(px, py);
      show(e ? Object.assign({ lon: lon, lat: lat }, e) : { code: 0, lon: lon, lat: lat },
           "at zoom " + view.z + " resolution");
      return;
    }
    fetch("point?lon=" + lon + "&lat=" + lat + (year ? "&year=" + year : ""))
      .then((r) => r.json())
      .then((p) => show(p))
      .catch((err) => { readout.textContent = "read-out failed: " + err; });
  }

  function buildLegend() {
    const ol = document.getElementById("legend");
    for (const e of legend) {
      const li = document.createElement("li");
      li.dataset.code = String(e.code);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = e.color;
      const code = document.createElement("span");
      code.className = "code";
      code.textContent = e.label;
      const name = document.createElement("span");
      name.textContent = e.name;
      li.append(sw, code, name);
      ol.appendChild(li);
    }
  }

  function initialView() {
    const hash = location.hash.replace(/^#/, "").split("/").map(Number);
    let z, lat, lon;
    if (hash.length === 3 && hash.every(Number.isFinite)) [z, lat, lon] = hash;
    if (params.has("z")) z = Number(params.get("z"));
    if (params.has("lat")) lat = Number(params.get("lat"));
    if (params.has("lon")) lon = Number(params.get("lon"));
    const b = info.bounds;
    if (lat === undefined || lon === undefined) { lon = (b[0] + b[2]) / 2; lat = (b[1] + b[3]) / 2; }
    if (z === undefined) z = info.startzoom;
    view.z = Math.max(info.minzoom, Math.min(info.maxzoom, Math.round(z)));
    [view.cx, view.cy] = project(lon, lat, view.z);
  }

  function wire() {
    let drag = null;
    mapEl.addEventListener("pointerdown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, cx: view.cx, cy: view.cy, moved: false };
      mapEl.setPointerCapture(ev.pointerId);
    });
    mapEl.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        mapEl.classList.add("dragging");
        view.cx = drag.cx - dx; view.cy = drag.cy - dy;
        draw();
      }
    });
    mapEl.addEventListener("pointerup", () => { mapEl.classList.remove("dragging"); });
    mapEl.addEventListener("click", (ev) => {
      if (drag && drag.moved) { drag = null; return; }
      drag = null;
      if (ev.target.closest && ev.target.closest("#zoom")) return;
      const r = mapEl.getBoundingClientRect();
      const px = ev.clientX - r.left, py = ev.clientY - r.top;
      const [lon, lat] = lonlatAt(px, py);
      query(lon, lat, px, py);
    });
    mapEl.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = mapEl.getBoundingClientRect();
      setZoom(view.z + (ev.deltaY < 0 ? 1 : -1), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    mapEl.addEventListener("dblclick", (ev) => {
      const r = mapEl.getBoundingClientRect();
      setZoom(view.z + 1, ev.clientX - r.left, ev.clientY - r.top);
    });
    mapEl.addEventListener("keydown", (ev) => {
      const step = { ArrowLeft: [-64, 0], ArrowRight: [64, 0], ArrowUp: [0, -64], ArrowDown: [0, 64] }[ev.key];
      if (step) { view.cx += step[0]; view.cy += step[1]; draw(); }
      if (ev.key === "+" || ev.key === "=") setZoom(view.z + 1);
      if (ev.key === "-") setZoom(view.z - 1);
    });
    document.getElementById("zoom-in").addEventListener("click", () => setZoom(view.z + 1));
    document.getElementById("zoom-out").addEventListener("click", () => setZoom(view.z - 1));
    window.addEventListener("resize", draw);
  }

  function scripted() {  // tests and links: ?clickpx=X,Y clicks the map, ?click=LON,LAT queries
    const px = params.get("clickpx");
    if (px) {
      const [x, y] = px.split(",").map(Number);
      const r = mapEl.getBoundingClientRect();
      mapEl.dispatchEvent(new MouseEvent("click", { clientX: r.left + x, clientY: r.top + y, bubbles: true }));
    }
    const ll = params.get("click");
    if (ll) {
      const [lon, lat] = ll.split(",").map(Number);
      query(lon, lat);
    }
  }

  Promise.all([fetch("info.json").then((r) => r.json()), fetch("legend.json").then((r) => r.json())])
    .then(([i, l]) => {
      info = i; legend = l;
      document.title = info.title || document.title;
      buildLegend();
      initialView();
      wire();
      draw();
      scripted();
    })
    .catch((err) => { statusEl.textContent = "could not load the map: " + err; });
})();
