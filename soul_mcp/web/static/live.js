// Live updates only: the pages work without this. On a change: a line in #live, and the parts
// marked data-refresh are fetched again (the forms are left alone, with what is typed in them).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var prefix = live.getAttribute("data-prefix") || "/ui";
  var busy = false;

  function refresh() {
    var parts = document.querySelectorAll("[data-refresh]");
    if (!parts.length || busy) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        parts.forEach(function (part) {
          var next = part.id && fresh.getElementById(part.id);
          if (next) part.replaceWith(document.importNode(next, true));
        });
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }

  function said(change) {
    var name = String(change.name || "").replace("_", " ");
    if (change.what === "document") return "The " + name + " changed: version " + change.id + ".";
    return "A memory was " + name + (change.id ? " (" + change.id + ")" : "") + ".";
  }

  var source = new EventSource(prefix + "/events");
  source.addEventListener("change", function (event) {
    var change;
    try { change = JSON.parse(event.data); } catch (e) { return; }
    live.textContent = said(change) + " " + new Date().toLocaleTimeString();
    refresh();
  });
})();
