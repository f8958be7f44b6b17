// xrq review: keyboard shortcuts, image zoom, and a warning before leaving unsaved edits.
// Plain JavaScript, no build step, no library. Every action also works without it (buttons, links).
(function () {
  "use strict";
  function click(id) { var el = document.getElementById(id); if (el) { el.click(); return true; } return false; }
  function typing(el) { return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" || el.tagName === "SELECT"); }

  var dirty = false;
  document.addEventListener("input", function (e) { if (e.target && e.target.id === "report") { dirty = true; } });
  document.addEventListener("submit", function () { dirty = false; });
  window.addEventListener("beforeunload", function (e) { if (dirty) { e.preventDefault(); e.returnValue = ""; } });

  document.addEventListener("keydown", function (e) {
    var key = e.key;
    if ((e.ctrlKey || e.metaKey) && !e.altKey && (key === "s" || key === "S")) {
      if (click("save")) { e.preventDefault(); }
    } else if ((e.ctrlKey || e.metaKey) && key === "Enter") {
      if (click("sign")) { e.preventDefault(); }
    } else if (e.altKey && (key === "r" || key === "R")) {
      var reason = document.getElementById("reason");
      if (reason) { reason.focus(); e.preventDefault(); }
    } else if (e.altKey && (key === "n" || key === "N")) {
      if (click("next-button")) { e.preventDefault(); }
    } else if (!typing(document.activeElement) && (key === "+" || key === "=" || key === "-")) {
      zoomAll(key === "-" ? "out" : "in");
    }
  });

  function zoom(img, how) {
    var natural = img.naturalWidth || 1024;
    var current = img.classList.contains("zoomed") ? img.getBoundingClientRect().width : 0;
    if (how === "out") {
      if (!current) { return; }
      var smaller = current / 1.5;
      if (smaller <= img.parentElement.clientWidth) { img.classList.remove("zoomed"); img.style.width = ""; return; }
      img.style.width = smaller + "px";
      return;
    }
    if (!img.classList.contains("zoomed") && img.dataset.full && img.src.indexOf("size=full") < 0) {
      img.src = img.dataset.full;  // the full resolution, once zooming starts
    }
    var from = current || img.parentElement.clientWidth;
    img.classList.add("zoomed");
    img.style.width = Math.min(from * 1.5, Math.max(natural, from) * 4) + "px";
  }
  function zoomAll(how) { document.querySelectorAll("img.xray").forEach(function (img) { zoom(img, how); }); }

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (t.classList && t.classList.contains("zoom")) {
      var img = t.closest("figure").querySelector("img.xray");
      zoom(img, t.dataset.zoom);
    } else if (t.classList && t.classList.contains("xray")) {
      zoom(t, t.classList.contains("zoomed") ? "out" : "in");
    }
  });
})();
