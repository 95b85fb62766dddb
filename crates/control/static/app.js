// kakuremichi web UI: keeps status badges and counters fresh without reloading the page.
// Every page is complete without this script; it only polls GET /api/v1/status (same origin,
// session cookie) every few seconds and updates elements marked with data attributes:
//   data-node="agent:3" / "gateway:1"   -> online / offline
//   data-tunnel="5"                     -> serving / disabled / not reachable
//   data-count="agents|gateways|tunnels"-> "online / total"
(function () {
  "use strict";
  var INTERVAL_MS = 3000;
  var watched = document.querySelector("[data-node],[data-tunnel],[data-count]");
  if (!watched || !window.fetch) return;

  function setBadge(el, cls, text) {
    if (el.textContent === text && el.classList.contains(cls)) return;
    el.classList.remove("online", "offline", "disabled");
    el.classList.add(cls);
    el.textContent = text;
  }

  function apply(status) {
    var nodes = {};
    status.gateways.items.forEach(function (g) { nodes["gateway:" + g.id] = g.status; });
    status.agents.items.forEach(function (a) { nodes["agent:" + a.id] = a.status; });
    document.querySelectorAll("[data-node]").forEach(function (el) {
      var s = nodes[el.getAttribute("data-node")];
      if (s) setBadge(el, s, s);
    });
    var serving = 0;
    status.tunnels.forEach(function (t) {
      if (t.reachable) serving++;
      document.querySelectorAll('[data-tunnel="' + t.id + '"]').forEach(function (el) {
        if (t.reachable) setBadge(el, "online", "serving");
        else if (!t.enabled) setBadge(el, "disabled", "disabled");
        else setBadge(el, "offline", "not reachable");
      });
    });
    var counts = {
      gateways: status.gateways.online + " / " + status.gateways.total,
      agents: status.agents.online + " / " + status.agents.total,
      tunnels: serving + " / " + status.tunnels.length
    };
    document.querySelectorAll("[data-count]").forEach(function (el) {
      var v = counts[el.getAttribute("data-count")];
      if (v !== undefined) el.textContent = v;
    });
  }

  function poll() {
    fetch("/api/v1/status", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) { if (s) apply(s); })
      .catch(function () { /* Control restarting: try again next time */ })
      .then(function () { setTimeout(poll, INTERVAL_MS); });
  }
  poll();
})();
