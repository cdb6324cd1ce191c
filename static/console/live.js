/* Andon live updates: one websocket per page (/ws/live/), opted into with data attributes.
 *
 * base.html includes this file on every page; it connects only when the page marks
 * something with one of these attributes (streams separated by spaces or commas):
 *
 *   data-live="alerts health"   Subscribe to these streams (alerts, replays, health) and
 *                               listen for the DOM events below.
 *   data-live-refresh="alerts"  (needs an id) On an update of the stream, re-fetch this
 *                               page's own URL (coalesced, at most about once a second) and
 *                               swap in the element with the same id. Children with ids are
 *                               matched one by one: a new one gets the class "live-new", one
 *                               whose data-live-version changed gets "live-changed", one that
 *                               holds the keyboard focus is left alone (a half-typed comment
 *                               survives). The page never reloads or navigates.
 *   data-live-updated="alerts"  Shows "updated just now", then "updated 2 min ago"; also
 *                               "connecting…" / "reconnecting…" while the socket is down.
 *   data-live-replay="42"       Subscribe to "replays". Events of job 42 (event.job_id, else
 *                               event.id) are also dispatched on this element (not bubbling,
 *                               so document listeners hear each event once), and each descendant [data-live-field="delivered"] shows that
 *                               field of the event (on <progress> or <meter>: its value).
 *
 * DOM events, dispatched on document; event.detail is the event payload, already cut down
 * to what the user's role and plants allow:
 *
 *   andon:alerts   an alert was created or changed: {kind: "alert", id, rule, key, state,
 *                  severity, summary, plant, plant_id, started_at, fired_at, resolved_at,
 *                  resolution, acknowledged_by, updated_at, url}; or {kind: "overflow"}
 *                  when a pass changed too many to list.
 *   andon:replays  replay job progress, as the replay worker publishes it (job_id, state, totals).
 *   andon:health   every few seconds: {ingest: [{endpoint, requests_per_s, items_per_s, ...}],
 *                  connectors: [{key, plant, state, colour, per_minute, failure_ratio,
 *                  p95_latency_ms, latency_slo_ms, last_seen}], window_s, at}.
 *   andon:live     the connection changed: detail = {state, message}.
 *   andon:refreshed  the data-live-refresh elements of a stream were swapped in: detail = {stream}.
 *
 * The connection state is also on <html data-live-state="connecting|open|closed|denied">.
 * The socket reconnects with backoff (1 s doubling to 30 s, with jitter) and, after a
 * reconnect, refreshes the data-live-refresh elements once to catch up on what it missed.
 * Close codes 4400 (bad request), 4401 (not logged in) and 4403 (no Andon role) are final.
 *
 * window.AndonLive: {state, streams, on(stream, fn), refresh(stream), rescan()}; a page that
 * adds data-live attributes after it loaded (markup built by script) calls rescan().
 */
(function () {
  "use strict";

  var STREAMS = ["alerts", "replays", "health"];
  var FINAL_CODES = [4400, 4401, 4403];
  var MAX_BACKOFF_MS = 30000;
  var root = document.documentElement;

  var live = {
    state: "idle",
    streams: [],
    message: "",
    on: function (stream, fn) {
      document.addEventListener("andon:" + stream, function (e) { fn(e.detail, e); });
    },
    refresh: function (stream) { scheduleRefresh(stream, 0); },
    rescan: function () { start(); }
  };
  window.AndonLive = live;

  function words(value) {
    return (value || "").split(/[\s,]+/).filter(function (w) { return w; });
  }

  function wantedStreams() {
    var wanted = {};
    function add(list) {
      list.forEach(function (s) { if (STREAMS.indexOf(s) >= 0) wanted[s] = true; });
    }
    document.querySelectorAll("[data-live]").forEach(function (el) { add(words(el.dataset.live)); });
    document.querySelectorAll("[data-live-refresh]").forEach(function (el) {
      add(words(el.dataset.liveRefresh));
    });
    document.querySelectorAll("[data-live-updated]").forEach(function (el) {
      add(words(el.dataset.liveUpdated));
    });
    if (document.querySelector("[data-live-replay]")) wanted.replays = true;
    return STREAMS.filter(function (s) { return wanted[s]; });
  }

  // --- Connection state and the "updated …" indicators ---------------------------------------

  var lastUpdate = {};

  function setState(state, message) {
    live.state = state;
    live.message = message || "";
    root.dataset.liveState = state;
    document.dispatchEvent(new CustomEvent("andon:live", { detail: { state: state, message: live.message } }));
    paintIndicators();
  }

  function ago(ms) {
    var s = Math.round(ms / 1000);
    if (s < 10) return "just now";
    if (s < 60) return s + " s ago";
    var m = Math.round(s / 60);
    if (m < 60) return m + " min ago";
    return Math.round(m / 60) + " h ago";
  }

  function paintIndicators() {
    document.querySelectorAll("[data-live-updated]").forEach(function (el) {
      var text;
      if (live.state === "denied") {
        text = "live updates off: " + live.message;
      } else if (live.state === "closed") {
        text = "reconnecting…";
      } else if (live.state !== "open") {
        text = "connecting…";
      } else {
        var newest = 0;
        words(el.dataset.liveUpdated).forEach(function (s) { newest = Math.max(newest, lastUpdate[s] || 0); });
        text = newest ? "updated " + ago(Date.now() - newest) : "live";
      }
      if (el.textContent !== text) el.textContent = text;
      el.title = live.state === "open" ? "Live updates on" : "Live updates: " + live.state;
    });
  }

  // --- Refreshing marked elements from a fresh copy of the page ------------------------------

  var refresh = {};  // stream -> {timer, running, again}
  var rendered = new WeakMap();  // node -> the server's HTML it was made from

  function refreshTargets(stream) {
    return Array.prototype.filter.call(document.querySelectorAll("[data-live-refresh][id]"), function (el) {
      return words(el.dataset.liveRefresh).indexOf(stream) >= 0;
    });
  }

  function scheduleRefresh(stream, delay) {
    if (!refreshTargets(stream).length) return;
    var r = refresh[stream] || (refresh[stream] = { timer: null, running: false, again: false });
    if (r.running) { r.again = true; return; }
    if (r.timer) return;
    r.timer = setTimeout(function () { r.timer = null; runRefresh(stream, r); }, delay);
  }

  function runRefresh(stream, r) {
    r.running = true;
    fetch(window.location.href, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "andon-live" },
      cache: "no-store"
    }).then(function (response) {
      if (!response.ok || new URL(response.url).pathname !== window.location.pathname) {
        throw new Error("refresh answered " + response.status + " from " + response.url);
      }
      return response.text();
    }).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html");
      refreshTargets(stream).forEach(function (el) {
        var next = fresh.getElementById(el.id);
        if (next) morph(el, next);
      });
      lastUpdate[stream] = Date.now();
      paintIndicators();
      document.dispatchEvent(new CustomEvent("andon:refreshed", { detail: { stream: stream } }));
    }).catch(function (err) {
      if (window.console) console.warn("andon live: " + err.message);
    }).then(function () {
      r.running = false;
      if (r.again) { r.again = false; scheduleRefresh(stream, 1000); }
    });
  }

  function morph(el, next) {
    var keyed = Array.prototype.filter.call(next.children, function (c) { return c.id; });
    if (!keyed.length) {
      if (el.innerHTML !== next.innerHTML) el.innerHTML = next.innerHTML;
      return;
    }
    var old = {};
    Array.prototype.forEach.call(el.children, function (c) { if (c.id) old[c.id] = c; });
    var focused = document.activeElement;
    var nodes = Array.prototype.map.call(next.children, function (child) {
      var before = child.id ? old[child.id] : null;
      if (before && focused && before !== focused && before.contains(focused)) return before;
      var html = child.outerHTML;
      if (before && (rendered.get(before) || before.outerHTML) === html) return before;
      var node = document.importNode(child, true);
      rendered.set(node, html);
      if (child.id && !before) {
        node.classList.add("live-new");
      } else if (before && before.dataset.liveVersion !== child.dataset.liveVersion) {
        node.classList.add("live-changed");
      }
      return node;
    });
    el.replaceChildren.apply(el, nodes);
  }

  // --- Replay job elements -------------------------------------------------------------------

  function updateReplayElements(event) {
    var job = event.job_id != null ? event.job_id : event.id;
    if (job == null) return;
    document.querySelectorAll('[data-live-replay="' + String(job) + '"]').forEach(function (el) {
      el.querySelectorAll("[data-live-field]").forEach(function (field) {
        var value = event[field.dataset.liveField];
        if (value === undefined || value === null) return;
        var tag = field.tagName;
        if (tag === "PROGRESS" || tag === "METER") {
          field.value = Number(value);
        } else {
          field.textContent = String(value);
        }
      });
      el.dispatchEvent(new CustomEvent("andon:replays", { detail: event, bubbles: false }));
    });
  }

  // --- The socket ----------------------------------------------------------------------------

  var socket = null;
  var attempts = 0;
  var everOpened = false;

  function dispatch(stream, event) {
    lastUpdate[stream] = Date.now();
    if (stream === "replays") updateReplayElements(event);
    document.dispatchEvent(new CustomEvent("andon:" + stream, { detail: event }));
    scheduleRefresh(stream, 300);
    paintIndicators();
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + "/ws/live/?streams=" + live.streams.join(",");
    setState(everOpened ? "closed" : "connecting");
    var denied = "";
    try {
      socket = new WebSocket(url);
    } catch (err) {
      retry();
      return;
    }
    socket.onmessage = function (message) {
      var frame;
      try { frame = JSON.parse(message.data); } catch (err) { return; }
      if (frame.type === "hello") {
        var reconnected = everOpened;
        attempts = 0;
        everOpened = true;
        setState("open");
        if (reconnected) live.streams.forEach(function (s) { scheduleRefresh(s, 0); });
      } else if (frame.type === "event") {
        dispatch(frame.stream, frame.event);
      } else if (frame.type === "error") {
        denied = frame.message || "refused";
      }
    };
    socket.onclose = function (e) {
      socket = null;
      if (FINAL_CODES.indexOf(e.code) >= 0) {
        setState("denied", denied || "refused (" + e.code + ")");
        return;
      }
      setState("closed");
      retry();
    };
  }

  function retry() {
    var delay = Math.min(MAX_BACKOFF_MS, 1000 * Math.pow(2, attempts));
    attempts += 1;
    setTimeout(connect, delay / 2 + Math.random() * delay / 2);
  }

  var ticking = false;

  function start() {
    var wanted = wantedStreams();
    if (wanted.join(",") === live.streams.join(",") && (socket || !wanted.length)) return;
    live.streams = wanted;
    if (socket) {
      // Reopen with the new set of streams.
      socket.onclose = null;
      socket.close();
      socket = null;
    }
    if (!wanted.length || !("WebSocket" in window)) return;
    connect();
    if (!ticking) {
      ticking = true;
      setInterval(paintIndicators, 5000);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
