// Site-wide behaviour. No inline scripts anywhere (the CSP forbids them).
(function () {
  "use strict";

  // Move focus to the error summary so keyboard and screen-reader users hear it first.
  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
  });

  // HTMX does not swap 4xx/5xx answers: show them, never drop them silently.
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("htmx-error");
    if (!box) { return; }
    var xhr = event.detail.xhr;
    var text = "The desk could not complete that action (" + xhr.status + ").";
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var p = doc.querySelector(".error-page p");
      if (p && p.textContent) { text = p.textContent; }
    } catch (e) { /* keep the generic text */ }
    box.textContent = text;
    box.hidden = false;
  });
  document.addEventListener("htmx:sendError", function () {
    var box = document.getElementById("htmx-error");
    if (box) {
      box.textContent = "The desk could not be reached. Check your connection; nothing was lost.";
      box.hidden = false;
    }
  });
})();
