/* Draws the Plotly figures the server rendered into <script type="application/json"> tags.
 *
 * An element with data-figure="<id of the JSON script>" becomes a chart; clicking a point whose
 * customdata is [name, url] (a connector on the flow map) opens the url. Marks the element with
 * data-ready="1" once drawn, so tests can wait for it.
 */
(function () {
  "use strict";

  function draw(element) {
    var source = document.getElementById(element.dataset.figure);
    if (!source || typeof Plotly === "undefined") {
      return;
    }
    var figure = JSON.parse(source.textContent);
    var config = { displayModeBar: false, responsive: true, scrollZoom: false };
    Plotly.newPlot(element, figure.data, figure.layout, config).then(function () {
      element.dataset.ready = "1";
    });
    element.on("plotly_click", function (event) {
      var point = event.points && event.points[0];
      var data = point && point.customdata;
      if (data && data[1]) {
        window.location.href = data[1];
      }
    });
  }

  document.querySelectorAll("[data-figure]").forEach(draw);
})();
