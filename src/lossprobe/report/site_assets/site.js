/* lossprobe report site: draws every [data-plot] element with the bundled plotly.js.
   The figure specifications are inline JSON (no fetch: pages must work from file://).
   Without WebGL a 3-D surface is drawn as a 2-D contour map instead, with a note. */
(function () {
  "use strict";

  function hasWebGL() {
    try {
      var c = document.createElement("canvas");
      return !!(window.WebGLRenderingContext && (c.getContext("webgl") || c.getContext("experimental-webgl")));
    } catch (e) {
      return false;
    }
  }

  var webgl = hasWebGL();
  var specs = {};

  function render(el) {
    var spec = JSON.parse(document.getElementById(el.getAttribute("data-plot")).textContent);
    specs[el.id] = spec;
    var data = spec.data;
    if (!webgl && data.some(function (t) { return t.type === "surface"; })) {
      data = data.map(function (t) {
        if (t.type !== "surface") { return t; }
        return { type: "contour", x: t.x, y: t.y, z: t.z, colorscale: t.colorscale, name: t.name,
                 contours: { coloring: "heatmap", showlabels: true }, hovertemplate: t.hovertemplate };
      });
      var note = document.createElement("p");
      note.className = "plot-desc gl-note";
      note.textContent = "This browser has no WebGL, so the 3-D surface is shown as a contour map.";
      el.parentNode.insertBefore(note, el);
    }
    var config = { responsive: true, displaylogo: false, scrollZoom: false,
                   toImageButtonOptions: { filename: spec.filename || el.id, format: "png", scale: 2 } };
    return Plotly.newPlot(el, data, spec.layout, config).then(function () {
      el.setAttribute("data-rendered", "true");
    });
  }

  function rotate(el, degrees) {
    var scene = el._fullLayout && el._fullLayout.scene;
    if (!scene) { return; }
    var eye = scene.camera.eye;
    var r = Math.sqrt(eye.x * eye.x + eye.y * eye.y);
    var a = Math.atan2(eye.y, eye.x) + degrees * Math.PI / 180;
    Plotly.relayout(el, { "scene.camera.eye": { x: r * Math.cos(a), y: r * Math.sin(a), z: eye.z } });
  }

  function act(button) {
    var el = document.getElementById(button.getAttribute("data-target"));
    var what = button.getAttribute("data-action");
    var spec = specs[el.id];
    if (!spec) { return; }
    if (what === "reset") {
      Plotly.react(el, el.data, JSON.parse(JSON.stringify(spec.layout)));
      document.querySelectorAll('button[data-action="logy"][data-target="' + el.id + '"]').forEach(function (b) {
        b.setAttribute("aria-pressed", "false");
      });
    } else if (what === "left") {
      rotate(el, -20);
    } else if (what === "right") {
      rotate(el, 20);
    } else if (what === "top") {
      Plotly.relayout(el, { "scene.camera.eye": { x: 0, y: 0, z: 2.4 } });
    } else if (what === "logy") {
      var log = (el.layout.yaxis && el.layout.yaxis.type) === "log";
      Plotly.relayout(el, { "yaxis.type": log ? "linear" : "log" });
      button.setAttribute("aria-pressed", log ? "false" : "true");
    } else if (what === "png") {
      Plotly.downloadImage(el, { format: "png", filename: spec.filename || el.id, scale: 2 });
    }
  }

  function start() {
    if (typeof Plotly === "undefined") {
      document.querySelectorAll("[data-plot]").forEach(function (el) {
        el.textContent = "The interactive plot needs assets/plotly.min.js, which is missing from this site.";
      });
      return;
    }
    var els = Array.prototype.slice.call(document.querySelectorAll("[data-plot]"));
    Promise.all(els.map(render)).then(function () {
      document.body.setAttribute("data-plots-rendered", String(els.length));
    });
    document.querySelectorAll("button[data-action]").forEach(function (b) {
      b.addEventListener("click", function () { act(b); });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
