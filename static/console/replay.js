// The replay job page's progress bar: polls the job's progress JSON every second while it
// runs and reloads once when it finishes, to show each message's final outcome.
// A live push for this job (console/live.py, stream "replays") can call window.andonReplay.poll()
// to fetch the progress at once, or update(progress) with the JSON that progress.json answers.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) {
    return;
  }
  var url = box.dataset.url;
  var active = box.dataset.active === "1";
  var timer = null;
  var SEGMENTS = ["delivered", "failed", "dead_lettered", "uncertain", "skipped"];
  var COUNTS = [
    "delivered", "failed", "dead_lettered", "uncertain", "skipped", "remaining", "total", "done_percent",
  ];

  function update(progress) {
    SEGMENTS.forEach(function (name) {
      var seg = box.querySelector('[data-seg="' + name + '"]');
      if (seg && progress.percent) {
        seg.style.width = progress.percent[name] + "%";
      }
    });
    COUNTS.forEach(function (name) {
      var node = box.querySelector('[data-count="' + name + '"]');
      if (node && progress[name] !== undefined) {
        node.textContent = progress[name];
      }
    });
    var bar = box.querySelector(".progress");
    if (bar) {
      bar.setAttribute("aria-valuenow", progress.done_percent);
    }
    var badge = document.getElementById("job-state");
    if (badge && progress.state) {
      badge.textContent = progress.state;
      badge.className = "badge job-" + progress.state;
    }
    if (active && !progress.active) {
      // Finished: show every message's final outcome (and drop the cancel button).
      active = false;
      stop();
      window.location.reload();
    }
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("progress answered " + response.status);
        }
        return response.json();
      })
      .then(update)
      .catch(function () { /* a missed poll is caught up by the next one */ });
  }

  function stop() {
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  }

  if (active && url) {
    timer = setInterval(poll, 1000);
  }
  window.andonReplay = { update: update, poll: poll, stop: stop, jobUrl: url };
})();
