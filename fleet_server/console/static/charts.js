/* edgefleet charts: time-series charts drawn with the vendored uPlot (static/vendor/).
 * Reusable: any console page can include templates/_chart.html, whose element reads either
 * a JSON URL (data-src, one object per chart name, data-chart picks one) or an inline
 * <script type="application/json"> (data-spec-id). A spec is
 *   {title, unit, x: [unix seconds...],
 *    series: [{label, values: [number|null...], stepped?: true}],
 *    threshold?: number (drawn as the line "threshold"), lines?: [{label, value}] (dashed
 *    horizontal lines), markers?: [{x, label}] (dashed vertical lines, e.g. a decision),
 *    bands?: [[upper, lower]] (series indexes; the space between them is shaded),
 *    yrange?: [min, max], notes?: [string per x] (added to the tooltip),
 *    xlabel?: string, xtime?: false (x is a count, not a time)}
 * Charts get time (or count) axes, the unit on the y axis, a legend whose values follow the
 * cursor, a tooltip, a grid, and points drawn so that a single window still shows. */
(function () {
  "use strict";
  var COLORS = ["#1d4ed8", "#b91c1c", "#15803d", "#7e22ce", "#b45309", "#0e7490"];
  var LINE_COLORS = ["#92400e", "#166534", "#9d174d"];

  function tooltip(notes) {
    var tip;
    return {
      hooks: {
        init: function (u) {
          tip = document.createElement("div");
          tip.className = "chart-tooltip";
          tip.setAttribute("role", "status");
          tip.style.display = "none";
          u.over.appendChild(tip);
        },
        setCursor: function (u) {
          var i = u.cursor.idx;
          if (i == null) { tip.style.display = "none"; return; }
          var x = u.data[0][i];
          var head = u.series[0].value(u, x, 0, i);
          var lines = [head];
          if (notes && notes[i]) lines.push(notes[i]);
          for (var s = 1; s < u.series.length; s++) {
            var v = u.data[s][i];
            lines.push(u.series[s].label + ": " + (v == null ? "no value" : fmt(v) + " " + (u.series[s]._unit || "")));
          }
          tip.textContent = lines.join("\n");
          tip.style.display = "block";
          tip.style.left = Math.min(u.cursor.left + 10, u.over.clientWidth - 160) + "px";
          tip.style.top = Math.max(u.cursor.top - 10, 0) + "px";
        }
      }
    };
  }

  function fmt(v) {
    if (v == null) return "-";
    var a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
  }

  function markers(list) {
    return {
      hooks: {
        draw: function (u) {
          var ctx = u.ctx, r = window.uPlot.pxRatio || 1;
          ctx.save();
          ctx.strokeStyle = ctx.fillStyle = "#92400e";
          ctx.lineWidth = 2 * r;
          ctx.setLineDash([5 * r, 4 * r]);
          ctx.font = Math.round(12 * r) + "px sans-serif";
          list.forEach(function (m) {
            var x = Math.round(u.valToPos(m.x, "x", true));
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            var w = ctx.measureText(m.label).width;
            var tx = x + 4 * r + w > u.bbox.left + u.bbox.width ? x - 4 * r - w : x + 4 * r;
            ctx.fillText(m.label, tx, u.bbox.top + 14 * r);
          });
          ctx.restore();
        }
      }
    };
  }

  function pad(min, max, span) {
    if (min == null || max == null) return [0, 1];
    if (min === max) return [min - span, max + span];
    return [min, max];
  }

  function render(el, spec) {
    var xs = spec.x || [];
    var data = [xs].concat(spec.series.map(function (s) { return s.values; }));
    var points = xs.length;
    el.setAttribute("data-points", String(points));
    el.setAttribute("data-series", String(spec.series.length));
    el.setAttribute("data-markers", String((spec.markers || []).length));
    var holder = el.querySelector(".chart-canvas");
    holder.textContent = "";
    var empty = el.querySelector(".chart-empty");
    if (empty) empty.hidden = points > 0;
    if (!points || !window.uPlot) return null;
    var timeX = spec.xtime !== false;
    var series = [{ label: timeX ? "time" : (spec.xlabel || "x") }].concat(spec.series.map(function (s, k) {
      return {
        label: s.label, stroke: COLORS[k % COLORS.length], width: 2, spanGaps: true,
        paths: s.stepped ? window.uPlot.paths.stepped({ align: 1 }) : undefined,
        points: { show: true, size: 6, fill: COLORS[k % COLORS.length] },
        value: function (u, v) { return v == null ? "-" : fmt(v) + " " + spec.unit; },
        _unit: spec.unit
      };
    }));
    var lines = (spec.lines || []).slice();
    if (spec.threshold != null) lines.push({ label: "threshold", value: spec.threshold });
    lines.forEach(function (l, k) {
      data.push(xs.map(function () { return l.value; }));
      series.push({ label: l.label, stroke: LINE_COLORS[k % LINE_COLORS.length], dash: [6, 4],
                    width: 1.5, points: { show: false },
                    value: function (u, v) { return v == null ? "-" : fmt(v) + " " + spec.unit; },
                    _unit: spec.unit });
    });
    var bands = (spec.bands || []).map(function (b) {
      return { series: [b[0] + 1, b[1] + 1], fill: "rgba(29, 78, 216, 0.15)" };
    });
    var width = Math.max(280, Math.min(holder.clientWidth || el.clientWidth || 560, 900));
    var opts = {
      width: width, height: 220, title: "",
      scales: {
        // from the data itself: with a single x, uPlot widens a time scale by 86400/ms (1,000
        // days for unix seconds) before this is called, so min and max cannot be trusted
        x: { time: timeX, range: function (u) {
          var d = u.data[0];
          return pad(d[0], d[d.length - 1], timeX ? 60 : 1);
        } },
        y: { range: spec.yrange ? function () { return spec.yrange; } : function (u, min, max) {
          var r = pad(Math.min(0, min), max, 1);
          return [r[0], r[1] * 1.1];
        } }
      },
      axes: [
        { label: timeX ? "time (local)" : (spec.xlabel || ""), stroke: "#1f2937", grid: { stroke: "#e5e7eb" } },
        { label: spec.unit, stroke: "#1f2937", grid: { stroke: "#e5e7eb" }, size: 60 }
      ],
      series: series,
      bands: bands,
      legend: { live: true },
      cursor: { points: { size: 8 } },
      plugins: [tooltip(spec.notes), markers(spec.markers || [])]
    };
    return new window.uPlot(opts, data, holder);
  }

  var cache = {};
  function load(src) {
    if (!cache[src]) {
      cache[src] = fetch(src, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error(src + ": " + r.status);
        return r.json();
      });
    }
    return cache[src];
  }

  function mountAll() {
    cache = {};
    document.querySelectorAll(".ef-chart").forEach(function (el) {
      var specId = el.getAttribute("data-spec-id");
      if (specId) {
        var node = document.getElementById(specId);
        if (node) {
          if (el._plot) el._plot.destroy();
          el._plot = render(el, JSON.parse(node.textContent));
          el.setAttribute("data-rendered", "true");
        }
        return;
      }
      var src = el.getAttribute("data-src");
      if (!src) return;
      load(src).then(function (all) {
        var spec = all[el.getAttribute("data-chart")];
        if (!spec) return;
        if (el._plot) el._plot.destroy();
        el._plot = render(el, spec);
        el.setAttribute("data-rendered", "true");
      }).catch(function (e) { el.setAttribute("data-error", String(e)); });
    });
  }

  window.EdgefleetCharts = { render: render, mountAll: mountAll };
  document.addEventListener("DOMContentLoaded", mountAll);
  document.addEventListener("edgefleet:updated", mountAll);
})();
