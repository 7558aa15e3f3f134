// The fleet dashboard's one script: live presence (/events), live logs, the recent
// actions table while an action runs, and confirmations before risky actions.
// Plain browser JavaScript, no dependencies. Pages work without it (forms post, links
// link); it only keeps them current.
"use strict";

(function () {
  const body = document.body;
  // Every open event stream, closed when the page is left (see "back/forward" below).
  const streams = [];

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
    streams.push(es);
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
    const filter = document.querySelector("form[data-log-filter]");
    const MAX = 1000;
    let count = 0;
    let es = null;
    // The filters' query (service, q, stderr), as the stream and the download take it.
    function query() {
      if (!filter) return "";
      const q = new URLSearchParams(new FormData(filter)).toString();
      return q ? "?" + q : "";
    }
    function open() {
      if (es) { es.close(); streams.splice(streams.indexOf(es), 1); }
      pre.textContent = "";
      count = 0;
      if (state) state.textContent = "connecting\u2026";
      es = new EventSource(pre.dataset.logSrc + query());
      streams.push(es);
      es.onopen = function () { if (state) state.textContent = "live"; };
      es.onerror = function () { if (state) state.textContent = "reconnecting\u2026"; };
      es.addEventListener("line", line);
      es.addEventListener("gap", gap);
    }
    if (filter) {
      let typing = null;
      // The text field re-opens once typing pauses; a select or a checkbox at once.
      filter.addEventListener("input", function (e) {
        clearTimeout(typing);
        typing = setTimeout(open, e.target.name === "q" ? 400 : 0);
      });
    }
    function line(e) {
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
    }
    function gap() {
      const row = document.createElement("div");
      row.className = "sys";
      row.textContent = "\u2026 some lines were skipped (the view fell behind) \u2026";
      pre.appendChild(row);
    }
    open();
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

  // --- group actions on the devices table: select rows, count them, confirm ---
  function bulkActions() {
    const form = document.querySelector("form[data-bulk]");
    if (!form) return;
    const all = form.querySelector("[data-select-all]");
    const boxes = function () { return form.querySelectorAll('input[name="uuid"]'); };
    const count = form.querySelector("[data-bulk-count]");
    const chosen = form.querySelector("[data-bulk-chosen]");
    function update() {
      const n = [...boxes()].filter(function (b) { return b.checked; }).length;
      count.textContent = n === 0 ? "Select devices for a group action"
        : n + " device" + (n === 1 ? "" : "s") + " selected";
      form.querySelectorAll("[data-bulk-action]").forEach(function (b) { b.disabled = n === 0; });
      if (all) {
        all.checked = n > 0 && n === boxes().length;
        all.indeterminate = n > 0 && n < boxes().length;
      }
      form.classList.toggle("has-selection", n > 0);
    }
    form.classList.add("js-ready");
    if (all) {
      all.addEventListener("change", function () {
        boxes().forEach(function (b) { b.checked = all.checked; });
        update();
      });
    }
    form.addEventListener("change", function (e) {
      if (e.target.name === "uuid") update();
    });
    form.querySelectorAll("[data-bulk-action]").forEach(function (b) {
      b.addEventListener("click", function (e) {
        if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) {
          e.preventDefault();
          return;
        }
        chosen.value = b.value;
      });
    });
    update();
  }

  // --- the publish form: a compose file chosen from disk goes into the text box ---
  function composeFile() {
    const input = document.querySelector("[data-compose-file]");
    if (!input || !window.FileReader) return;
    input.addEventListener("change", function () {
      const file = input.files && input.files[0];
      if (!file) return;
      const reader = new FileReader();
      reader.onload = function () {
        input.form.querySelector('textarea[name="compose"]').value = String(reader.result);
      };
      reader.readAsText(file);
    });
  }

  // --- the terminal inside the device page (xterm.js, loaded on first use) ---
  // The WebSocket is the dashboard's own (/devices/{uuid}/terminal): the session cookie
  // and the page's CSRF token authenticate it, so no token is asked for.
  function embeddedTerminal() {
    const card = document.querySelector("[data-terminal]");
    if (!card) return;
    const openBtn = card.querySelector("[data-term-open]");
    const closeBtn = card.querySelector("[data-term-close]");
    const status = card.querySelector("[data-term-status]");
    const box = card.querySelector("[data-term-box]");
    const service = card.querySelector("[data-term-service]");
    let assets = null;
    let ws = null;
    let term = null;
    let fit = null;
    function script(src) {
      return new Promise(function (resolve, reject) {
        const s = document.createElement("script");
        s.src = src;
        s.onload = resolve;
        s.onerror = reject;
        document.head.appendChild(s);
      });
    }
    function load() {
      if (!assets) {
        const css = document.createElement("link");
        css.rel = "stylesheet";
        css.href = "/assets/terminal/xterm.css";
        document.head.appendChild(css);
        assets = script("/assets/terminal/xterm.js").then(function () {
          return script("/assets/terminal/addon-fit.js");
        });
      }
      return assets;
    }
    function setState(text, state) {
      status.textContent = text;
      card.dataset.termState = state;
    }
    function ended() {
      openBtn.disabled = false;
      closeBtn.hidden = true;
      service.disabled = false;
    }
    function start() {
      if (term) term.dispose();
      box.hidden = false;
      term = new Terminal({ cursorBlink: true, scrollback: 5000, fontFamily: "monospace" });
      fit = new FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(box);
      fit.fit();
      term.focus();
      const q = new URLSearchParams({
        cols: String(term.cols), rows: String(term.rows), csrf: card.dataset.csrf
      });
      if (service.value) q.set("service", service.value);
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const sock = new WebSocket(proto + "//" + location.host + card.dataset.terminal + "?" + q.toString());
      ws = sock;
      sock.binaryType = "arraybuffer";
      const enc = new TextEncoder();
      let done = false;
      const t = term;
      sock.onopen = function () {
        setState("connected to " + (service.value ? "service " + service.value : "the host"), "open");
        closeBtn.hidden = false;
      };
      sock.onmessage = function (ev) {
        if (typeof ev.data !== "string") { t.write(new Uint8Array(ev.data)); return; }
        let msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (msg.type === "exit") {
          done = true;
          card.dataset.termExit = String(msg.code);
          t.write("\r\n\x1b[2m[session ended: exit status " + msg.code + "]\x1b[0m\r\n");
          setState("exited with status " + msg.code, "exited");
        } else if (msg.type === "error") {
          done = true;
          t.write("\r\n\x1b[31m[" + msg.message + "]\x1b[0m\r\n");
          setState("error: " + msg.message, "error");
        }
      };
      sock.onclose = function (ev) {
        if (!done) {
          // A refused upgrade (offline device, expired session) is a close without a reason.
          setState("disconnected" + (ev.reason ? ": " + ev.reason
            : " (is the device online? reload the page if you were signed out)"), "closed");
        }
        if (ws === sock) ended();
      };
      t.onData(function (d) { if (sock.readyState === 1) sock.send(enc.encode(d)); });
      t.onBinary(function (d) {
        if (sock.readyState !== 1) return;
        const b = new Uint8Array(d.length);
        for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
        sock.send(b);
      });
      t.onResize(function (s) {
        if (sock.readyState === 1) sock.send(JSON.stringify({ type: "resize", cols: s.cols, rows: s.rows }));
      });
    }
    openBtn.addEventListener("click", function () {
      openBtn.disabled = true;
      service.disabled = true;
      setState("connecting\u2026", "connecting");
      load().then(start, function () {
        setState("the terminal's script did not load", "error");
        ended();
      });
    });
    closeBtn.addEventListener("click", function () { if (ws) ws.close(); });
    window.addEventListener("resize", function () { if (fit && !box.hidden) fit.fit(); });
  }

  // --- back/forward: a page kept in the browser's back/forward cache would keep its
  // event streams open, and a browser opens only 6 HTTP/1.1 connections to one host: a
  // few pages later, the next click would wait for a free one. So the streams close when
  // the page is left, and a page shown again from that cache is loaded afresh.
  window.addEventListener("pagehide", function () {
    streams.forEach(function (es) { es.close(); });
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) location.reload();
  });

  livePresence();
  liveLogs();
  liveActions();
  bulkActions();
  composeFile();
  embeddedTerminal();
  body.dataset.ready = "1";
})();
