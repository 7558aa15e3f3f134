// The fleet dashboard's one script: live presence (/events), live logs, the recent
// actions table while an action runs, and confirmations before risky actions.
// Plain browser JavaScript, no dependencies. Pages work without it (forms post, links
// link); it only keeps them current.
"use strict";

(function () {
  const body = document.body;

  // --- presence: rows and the device header switch online/offline without a reload ---
  function setPresence(uuid, online, transport) {
    const scopes = document.querySelectorAll(
      '[data-uuid="' + uuid + '"]'
    );
    scopes.forEach(function (scope) {
      scope.querySelectorAll("[data-presence]").forEach(function (b) {
        b.classList.toggle("online", online);
        b.classList.toggle("offline", !online);
        b.textContent = online ? "online" : "offline";
        b.classList.remove("flash");
        void b.offsetWidth; // restart the animation
        b.classList.add("flash");
      });
      if (scope.tagName === "TR") {
        scope.classList.toggle("is-online", online);
        scope.classList.toggle("is-offline", !online);
      }
      const container = scope.tagName === "TR" ? scope : document;
      container.querySelectorAll('[data-field="transport"]').forEach(function (t) {
        t.textContent = "";
        const s = document.createElement("span");
        if (online && transport) {
          s.className = "transport";
          s.textContent = transport;
        } else {
          s.className = "muted";
          s.textContent = "\u2014";
        }
        t.appendChild(s);
      });
      container.querySelectorAll('[data-field="last-seen"]').forEach(function (t) {
        t.textContent = "just now";
      });
    });
  }

  function livePresence() {
    if (!document.querySelector("[data-uuid]") || !window.EventSource) return;
    const es = new EventSource("/events");
    es.onopen = function () { body.dataset.live = "open"; };
    es.onerror = function () { body.dataset.live = "reconnecting"; };
    es.addEventListener("presence", function (e) {
      const p = JSON.parse(e.data);
      setPresence(p.uuid, p.online, p.transport);
    });
    // This stream fell behind the gateway: the rows may be stale; load them afresh.
    es.addEventListener("resync", function () { location.reload(); });
  }

  // --- logs ---
  function liveLogs() {
    const pre = document.querySelector("[data-log-src]");
    if (!pre || !window.EventSource) return;
    const state = document.querySelector("[data-log-state]");
    const es = new EventSource(pre.dataset.logSrc);
    const MAX = 1000;
    let count = 0;
    es.onopen = function () { if (state) state.textContent = "live"; };
    es.onerror = function () { if (state) state.textContent = "reconnecting\u2026"; };
    es.addEventListener("line", function (e) {
      const l = JSON.parse(e.data);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      const row = document.createElement("div");
      const ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = new Date(l.ts).toISOString().replace("T", " ").slice(0, 19) + " ";
      row.appendChild(ts);
      if (l.service) {
        const svc = document.createElement("span");
        svc.className = "svc";
        svc.textContent = "[" + l.service + "] ";
        row.appendChild(svc);
      }
      const msg = document.createElement("span");
      msg.textContent = l.message;
      if (l.stderr) msg.className = "err";
      else if (l.system) msg.className = "sys";
      row.appendChild(msg);
      pre.appendChild(row);
      if (++count > MAX) { pre.removeChild(pre.firstChild); count--; }
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    es.addEventListener("gap", function () {
      const row = document.createElement("div");
      row.className = "sys";
      row.textContent = "\u2026 some lines were skipped (the view fell behind) \u2026";
      pre.appendChild(row);
    });
  }

  // --- recent actions: refreshed every 1.5 s while one is unfinished ---
  function liveActions() {
    const tbody = document.querySelector("tbody[data-refresh]");
    if (!tbody) return;
    function unfinished() {
      return tbody.querySelector('tr[data-finished="false"]') !== null;
    }
    function tick() {
      if (!unfinished() || document.hidden) return;
      fetch(tbody.dataset.refresh, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) tbody.innerHTML = html; })
        .catch(function () {});
    }
    setInterval(tick, 1500);
  }

  // --- confirmations and double-submit guard ---
  document.addEventListener("submit", function (e) {
    const form = e.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
      return;
    }
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  });

  livePresence();
  liveLogs();
  liveActions();
  body.dataset.ready = "1";
})();
