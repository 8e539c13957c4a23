// The LCZ cube as a web map on Leaflet (vendored: vendor/leaflet, so the page asks only this
// server and works offline and as a static export): the cube's XYZ tiles with pan and zoom, a
// scale bar, the legend, a year switch, and the class at a clicked point.
//
// URL parameters (query or hash): z, lat, lon (the view; also kept in the hash as #z/lat/lon),
// year, clickpx=X,Y (a scripted click at map pixel X,Y once the view is set), click=LON,LAT.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const mapEl = document.getElementById("map");
  const readout = document.getElementById("readout");
  const statusEl = document.getElementById("status");
  const ATTRIBUTION = "LCZ classes: Stewart &amp; Oke (2012); colours: global LCZ map (Demuzere et al. 2022)";

  // One ring of tiles beyond the map's edges: panning shows no gaps, and a window that grows
  // (a headless screenshot's does, after layout) is covered at once. Leaflet (1.9.4, pinned)
  // computes the area it tiles in _getTiledPixelBounds; the Leaflet.EdgeBuffer plugin widens it too.
  const RingTileLayer = L.TileLayer.extend({
    _getTiledPixelBounds(center) {
      const b = L.TileLayer.prototype._getTiledPixelBounds.call(this, center), ring = L.point(256, 256);
      return L.bounds(b.min.subtract(ring), b.max.add(ring));
    },
  });

  function getJson(url) {  // the server's errors are JSON too: {"error": "..."}
    return fetch(url).then((r) => r.json().then((body) => (r.ok ? body : Promise.reject(body.error))));
  }

  function swatch(color) {
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color;
    return sw;
  }

  function buildLegend(legend) {
    const ol = document.getElementById("legend");
    for (const e of legend) {
      const li = document.createElement("li");
      li.dataset.code = String(e.code);
      const code = document.createElement("span");
      code.className = "code";
      code.textContent = e.label;
      const name = document.createElement("span");
      name.textContent = e.name;
      li.append(swatch(e.color), code, name);
      ol.appendChild(li);
    }
  }

  function show(p, note) {
    readout.textContent = "";
    readout.dataset.code = String(p.code || 0);
    const where = p.lat.toFixed(5) + ", " + p.lng.toFixed(5);
    if (!p.code) {
      readout.textContent = "No data here (" + where + ")";
      return;
    }
    const txt = document.createElement("span");
    txt.className = "class-name";
    txt.textContent = "LCZ " + p.label + " — " + p.name;
    const line = document.createElement("div");
    line.textContent = where + (p.year ? " · " + p.year : "") + (note ? " · " + note : "");
    readout.append(swatch(p.color), txt, line);
  }

  function initialView(info) {
    const hash = location.hash.slice(1).split("/").map(Number);
    let [z, lat, lon] = hash.length === 3 && hash.every(Number.isFinite) ? hash : [];
    if (params.has("z")) z = Number(params.get("z"));
    if (params.has("lat")) lat = Number(params.get("lat"));
    if (params.has("lon")) lon = Number(params.get("lon"));
    const b = info.bounds;
    if (lat === undefined || lon === undefined) { lon = (b[0] + b[2]) / 2; lat = (b[1] + b[3]) / 2; }
    return [[lat, lon], Math.round(z === undefined ? info.startzoom : z)];
  }

  function start(info, legend) {
    document.title = info.title || document.title;
    buildLegend(legend);
    let year = info.static ? null : params.get("year");  // a static export has one year
    const tileUrl = () => "tiles/{z}/{x}/{y}.png" + (year ? "?year=" + year : "");
    const box = L.latLngBounds([info.bounds[1], info.bounds[0]], [info.bounds[3], info.bounds[2]]);
    const map = L.map(mapEl, { minZoom: info.minzoom, maxZoom: info.maxzoom, trackResize: false });
    const tiles = new RingTileLayer(tileUrl(), {
      minZoom: info.minzoom, maxZoom: info.maxzoom, attribution: ATTRIBUTION,
      bounds: info.static ? box : undefined,  // a static export holds tiles over the data only
    }).addTo(map);
    L.control.scale({ imperial: false }).addTo(map);
    const spot = L.circleMarker([0, 0], { radius: 6, color: "#000", weight: 2, fill: false });
    let clicked = null;

    function colourAt(ll) {  // static export: the class from the colour of the tile there
      if (!box.contains(ll)) return Promise.resolve(null);  // no tile was written there
      const z = map.getZoom(), p = map.project(ll, z).floor();
      const tx = Math.floor(p.x / 256), ty = Math.floor(p.y / 256);
      return new Promise((resolve) => {
        const img = new Image();
        img.onerror = () => resolve(null);
        img.onload = () => {
          const ctx = Object.assign(document.createElement("canvas"), { width: 1, height: 1 }).getContext("2d");
          ctx.drawImage(img, tx * 256 - p.x, ty * 256 - p.y);
          const d = ctx.getImageData(0, 0, 1, 1).data;
          const hex = "#" + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, "0")).join("");
          resolve(d[3] ? legend.find((e) => e.color.toLowerCase() === hex) || null : null);
        };
        img.src = "tiles/" + z + "/" + tx + "/" + ty + ".png";
      });
    }

    function query(ll) {
      ll = ll.wrap();  // a click on a copy of the world east or west of the first
      clicked = ll;
      spot.setLatLng(ll).addTo(map);
      readout.textContent = "…";
      const at = { lat: ll.lat, lng: ll.lng };
      if (info.static) {
        colourAt(ll).then((e) => show(Object.assign(at, e || { code: 0 }), "at zoom " + map.getZoom() + " resolution"));
        return;
      }
      getJson("point?lon=" + ll.lng + "&lat=" + ll.lat + (year ? "&year=" + year : ""))
        .then((p) => show(Object.assign(at, p)))
        .catch((err) => { readout.textContent = "read-out failed: " + err; });
    }

    function moved() {  // the view in the hash (a link to it), the status line, and data-view
      const c = map.getCenter(), z = map.getZoom();
      const hash = "#" + z + "/" + c.lat.toFixed(5) + "/" + c.lng.toFixed(5);
      if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
      const o = map.getPixelBounds().min, s = map.getSize();
      mapEl.dataset.view = [z, o.x, o.y, s.x, s.y].join(",");  // for tests and debugging
      statusEl.textContent = "zoom " + z + " · " + c.lat.toFixed(4) + ", " + c.lng.toFixed(4);
    }

    if (!info.static && info.years.length > 1) {  // the year switch
      const select = document.getElementById("year");
      for (const y of info.years) select.add(new Option(String(y), String(y)));
      select.value = year || String(info.years[info.years.length - 1]);
      select.addEventListener("change", () => {
        year = select.value;
        params.set("year", year);
        history.replaceState(null, "", "?" + params + location.hash);
        tiles.setUrl(tileUrl());
        if (clicked) query(clicked);
      });
      document.getElementById("year-switch").hidden = false;
    }

    // a resize keeps the centre exactly, at once (Leaflet's own handler, off above, waits for an
    // animation frame and keeps it to a pixel; a headless screenshot draws no frame in between)
    window.addEventListener("resize", () => {
      const c = map.getCenter();
      map.invalidateSize({ pan: false });
      const corner = map.project(c).subtract(map.getSize().divideBy(2)).round();
      map.panBy(corner.subtract(map.getPixelBounds().min), { animate: false });
    });
    map.on("moveend", moved);
    map.on("click", (e) => query(e.latlng));
    map.setView(...initialView(info));

    const px = params.get("clickpx");  // scripted clicks, for tests and links
    if (px) {
      const [x, y] = px.split(",").map(Number);
      const r = mapEl.getBoundingClientRect();
      mapEl.dispatchEvent(new MouseEvent("click", { clientX: r.left + x, clientY: r.top + y, bubbles: true }));
    }
    const ll = params.get("click");
    if (ll) {
      const [lon, lat] = ll.split(",").map(Number);
      query(L.latLng(lat, lon));
    }
  }

  Promise.all([getJson("info.json"), getJson("legend.json")])
    .then(([info, legend]) => start(info, legend))
    .catch((err) => { statusEl.textContent = "could not load the map: " + err; });
})();
