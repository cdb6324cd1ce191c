/* Keeps a dashboard current: redraws its Plotly charts and fragments from its JSON endpoint.
 *
 * The page holds <div data-dashboard data-source="URL" data-poll="15"> and the first payload in
 * <script id="dashboard-payload" type="application/json">: {figures: {NAME: {data, layout}},
 * fragments: {NAME: html}, generated_at}. Each figure is drawn into #chart-NAME (marked
 * data-ready="1" once drawn) and each fragment replaces the content of #fragment-NAME.
 *
 * It re-fetches the endpoint every data-poll seconds, and sooner after the live events that
 * static/console/live.js dispatches on document: about a second after "andon:alerts", and on
 * "andon:health" when the last fetch is older than a third of the poll period (those come every
 * few seconds). Without live.js it simply polls. A hidden tab is not polled; it catches up when
 * shown again.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-dashboard]");
  var first = document.getElementById("dashboard-payload");
  if (!root || !first) {
    return;
  }
  var source = root.dataset.source;
  var pollMs = (parseFloat(root.dataset.poll) || 15) * 1000;
  var stamp = document.querySelector("[data-dashboard-stamp]");
  var config = { displayModeBar: false, responsive: true, scrollZoom: false };
  var timer = null;
  var busy = false;
  var lastFetch = Date.now();

  function draw(payload) {
    var figures = payload.figures || {};
    Object.keys(figures).forEach(function (name) {
      var element = document.getElementById("chart-" + name);
      if (!element || typeof Plotly === "undefined") {
        return;
      }
      Plotly.react(element, figures[name].data, figures[name].layout, config).then(function () {
        element.dataset.ready = "1";
      });
    });
    var fragments = payload.fragments || {};
    Object.keys(fragments).forEach(function (name) {
      var element = document.getElementById("fragment-" + name);
      if (element) {
        element.innerHTML = fragments[name];
      }
    });
    if (stamp && payload.generated_at) {
      stamp.textContent = "as of " + payload.generated_at.substring(11, 19) + " UTC";
      stamp.classList.remove("stale");
    }
  }

  function schedule(delayMs) {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, delayMs);
  }

  function refresh() {
    if (busy) {
      return;
    }
    if (document.hidden) {
      schedule(pollMs);
      return;
    }
    busy = true;
    lastFetch = Date.now();
    fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(draw)
      .catch(function (error) {
        if (stamp) {
          stamp.textContent = "not updated (" + error.message + "), retrying";
          stamp.classList.add("stale");
        }
      })
      .then(function () {
        busy = false;
        schedule(pollMs);
      });
  }

  document.addEventListener("andon:alerts", function (event) {
    var plant = event.detail && event.detail.plant;
    if (plant && root.dataset.plant && plant !== root.dataset.plant) {
      return; // another plant's alert
    }
    schedule(1000);
  });
  document.addEventListener("andon:health", function () {
    if (Date.now() - lastFetch > pollMs / 3) {
      schedule(0);
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && Date.now() - lastFetch > pollMs) {
      schedule(0);
    }
  });

  draw(JSON.parse(first.textContent));
  schedule(pollMs);
})();
