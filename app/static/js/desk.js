// Site-wide behaviour. No inline scripts anywhere (the CSP forbids them).
(function () {
  "use strict";

  // Move focus to the error summary so keyboard and screen-reader users hear it first.
  document.addEventListener("DOMContentLoaded", function () {
    var summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
  });

  // Tables marked "sortable" (e.g. PACS search results, which arrive whole from one
  // C-FIND): each column header becomes a button that sorts the rows in the browser.
  function makeSortable(root) {
    root.querySelectorAll("table.sortable").forEach(function (table) {
      if (table.dataset.sortable === "on") { return; }
      table.dataset.sortable = "on";
      table.querySelectorAll("thead th").forEach(function (th, index) {
        if (index === 0) { return; }  // the tick-box column
        var button = document.createElement("button");
        button.type = "button";
        button.className = "sort-button";
        button.textContent = th.textContent;
        th.textContent = "";
        th.appendChild(button);
        button.addEventListener("click", function () {
          var ascending = th.getAttribute("aria-sort") !== "ascending";
          table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          rows.sort(function (a, b) {
            var x = (a.cells[index].dataset.sort || a.cells[index].textContent).trim();
            var y = (b.cells[index].dataset.sort || b.cells[index].textContent).trim();
            var nx = parseFloat(x), ny = parseFloat(y);
            var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
            return ascending ? order : -order;
          });
          rows.forEach(function (row) { body.appendChild(row); });
        });
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { makeSortable(document); });
  document.addEventListener("htmx:afterSettle", function () { makeSortable(document); });

  // Polls are not a person's action: they say so (X-IEP-Poll), and the server then does
  // not renew the session (issue 11.2). A poll is a request htmx makes with no triggering
  // event from an element whose hx-trigger has "every Ns".
  function isPoll(detail) {
    var trigger = detail.elt && detail.elt.getAttribute ? detail.elt.getAttribute("hx-trigger") : null;
    return !detail.triggeringEvent && !!trigger && /(^|,)\s*every\s/.test(trigger);
  }
  document.addEventListener("htmx:configRequest", function (event) {
    if (isPoll(event.detail)) { event.detail.headers["X-IEP-Poll"] = "1"; }
  });

  // The idle time-out: a minute before it (half the lifetime when that is shorter) a
  // warning with "Stay signed in"; at the end, the sign-in page ("Your session has
  // ended"). Every request of the person's own (not a poll) starts the clock again.
  var sessionTimers = [];
  function startSessionClock() {
    var seconds = parseInt(document.body.dataset.sessionSeconds || "", 10);
    if (!seconds) { return; }
    sessionTimers.forEach(clearTimeout);
    var warning = document.getElementById("session-warning");
    if (warning) { warning.hidden = true; }
    var warnBefore = Math.min(60, seconds / 2);
    sessionTimers = [
      // role="alert" announces it; focus stays where the person is typing.
      setTimeout(function () { if (warning) { warning.hidden = false; } }, (seconds - warnBefore) * 1000),
      setTimeout(function () {
        window.location.assign(document.body.dataset.sessionEndedUrl || window.location.href);
      }, seconds * 1000 + 200)
    ];
  }
  document.addEventListener("DOMContentLoaded", startSessionClock);
  document.addEventListener("htmx:afterRequest", function (event) {
    var xhr = event.detail.xhr;
    var poll = event.detail.requestConfig && event.detail.requestConfig.headers &&
      event.detail.requestConfig.headers["X-IEP-Poll"] === "1";
    if (!poll && xhr && xhr.status < 400) { startSessionClock(); }
  });

  // The queue's editor, in a row under the request's own (issue 13.1). Edit swaps the
  // request's <tbody> for the row and its editor; Close, Escape or a save closes it and
  // focus goes back to that row's Edit. One editor at a time (its fields have fixed ids).
  function editLink(entry) { return entry.querySelector("a.edit-link"); }
  function closeEditor(entry, focusEdit) {
    var row = entry.querySelector("tr.editor-row");
    if (row) { row.remove(); }
    var link = editLink(entry);
    if (link) {
      link.setAttribute("aria-expanded", "false");
      link.removeAttribute("aria-controls");
      if (focusEdit) { link.focus(); }
    }
  }
  function firstField(entry) {
    return entry.querySelector(".editor-row .error-summary, .editor-row [aria-invalid='true']") ||
      entry.querySelector(".editor-row select, .editor-row input:not([type='hidden']), .editor-row textarea");
  }
  document.addEventListener("click", function (event) {
    var close = event.target.closest && event.target.closest(".editor-close");
    if (close) { closeEditor(close.closest("tbody.queue-entry"), true); }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || !event.target.closest) { return; }
    var row = event.target.closest("tr.editor-row");
    if (row) {
      event.preventDefault();
      closeEditor(row.closest("tbody.queue-entry"), true);
    }
  });
  document.addEventListener("htmx:confirm", function (event) {
    var elt = event.detail.elt;
    if (!elt || !elt.closest) { return; }
    // The 5 s refresh would replace the table, the open editor and what is typed in it.
    if (elt.id === "desk-table" && elt.querySelector("tr.editor-row")) {
      event.preventDefault();
      return;
    }
    if (elt.classList.contains("edit-link")) {
      var entry = elt.closest("tbody.queue-entry");
      if (entry && entry.querySelector("tr.editor-row")) {  // already open: go to it, keep the typing
        event.preventDefault();
        var field = firstField(entry);
        if (field) { field.focus(); }
        return;
      }
      document.querySelectorAll("tbody.queue-entry").forEach(function (other) {
        if (other !== entry && other.querySelector("tr.editor-row")) { closeEditor(other, false); }
      });
    }
  });
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("tbody.queue-entry[data-focus]").forEach(function (entry) {
      var what = entry.dataset.focus;
      entry.removeAttribute("data-focus");
      var target = what === "edit" ? editLink(entry) : firstField(entry);
      if (target) { target.focus(); }
    });
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
