/* edgefleet console: live updates over Server-Sent Events and bulk selection. No framework.
 * Elements with an id and a data-live attribute are swapped for their fresh copy whenever
 * the server says the registry changed (GET /console/events, see console/live.py). */
(function () {
  "use strict";
  var body = document.body;
  var since = body.getAttribute("data-cursor") || "";
  var busy = false, again = false;

  function checked() {
    var ids = {};
    document.querySelectorAll("input.select-device:checked").forEach(function (el) { ids[el.value] = true; });
    return ids;
  }

  // At most one refresh in flight and one every MIN_GAP_MS: a fleet that reports all the
  // time must not turn an open console into a stream of page loads.
  var MIN_GAP_MS = 2000, lastAt = 0;
  function refresh() {
    if (busy) { again = true; return; }
    var wait = lastAt + MIN_GAP_MS - Date.now();
    if (wait > 0) { busy = true; setTimeout(function () { busy = false; refresh(); }, wait); return; }
    lastAt = Date.now();
    busy = true;
    var keep = checked();
    var focused = document.activeElement && document.activeElement.id;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh) el.replaceWith(document.importNode(fresh, true));
        });
        document.querySelectorAll("input.select-device").forEach(function (el) {
          el.checked = !!keep[el.value];
        });
        if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
        body.setAttribute("data-updated", String(Date.now()));
        document.dispatchEvent(new CustomEvent("edgefleet:updated"));
        bulkCount();
      })
      .catch(function () { /* the next change event retries */ })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    if (!window.EventSource || !body.hasAttribute("data-cursor")) return;
    var device = body.getAttribute("data-live-device");
    var es = new EventSource("/console/events?since=" + encodeURIComponent(since) +
                             (device ? "&device=" + encodeURIComponent(device) : ""));
    es.addEventListener("change", function (e) { since = e.data; refresh(); });
    es.addEventListener("bye", function (e) { since = e.data; es.close(); setTimeout(connect, 100); });
  }

  function bulkCount() {
    var out = document.getElementById("bulk-count");
    if (out) out.textContent = String(document.querySelectorAll("input.select-device:checked").length);
  }

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.id === "select-all") {
      document.querySelectorAll("input.select-device").forEach(function (el) { el.checked = t.checked; });
    }
    bulkCount();
  });
  connect();

  // Pages without live updates reload every data-refresh-s seconds, but never while the
  // operator is typing into a form field (the old meta refresh threw their input away).
  var refreshS = Number(body.getAttribute("data-refresh-s") || 0);
  if (refreshS > 0) {
    setInterval(function () {
      var a = document.activeElement;
      if (a && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName)) return;
      location.reload();
    }, refreshS * 1000);
  }
})();
