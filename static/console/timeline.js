// Draws the correlation timeline: the figure is built on the server and embedded as JSON.
(function () {
  "use strict";
  document.querySelectorAll("[data-figure]").forEach(function (node) {
    var source = document.getElementById(node.dataset.figure);
    if (!source || typeof Plotly === "undefined") {
      return;
    }
    var figure = JSON.parse(source.textContent);
    Plotly.newPlot(node, figure.data, figure.layout, { responsive: true, displaylogo: false })
      .then(function () {
        // A click on a marker scrolls to that item's row below the timeline.
        node.on("plotly_click", function (event) {
          var point = event.points && event.points[0];
          var row = point && point.customdata && document.getElementById(point.customdata);
          if (row) {
            row.scrollIntoView({ behavior: "smooth", block: "center" });
            row.classList.add("highlight");
            setTimeout(function () { row.classList.remove("highlight"); }, 1500);
          }
        });
      });
  });
})();
