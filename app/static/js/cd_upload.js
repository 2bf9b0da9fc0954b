// Uploading a CD's contents from the request's page (issue 12.1). No inline scripts (CSP).
//
// The protocol (app/cds/routes.py): POST the manifest (each file's path and size) as JSON;
// the answer gives each file's id and the bytes the desk already has (a resumed upload).
// Then each file, one at a time, in chunks of at most 8 MiB: PUT .../files/<id>?offset=N
// with the raw bytes. A 409 carries the file's `received` count: continue from there. A
// network error or a 5xx is retried with a growing wait; after that the upload pauses.
(function () {
  "use strict";

  var CHUNK = 8 * 1024 * 1024;
  var RETRIES = 6;
  var MB = 1024 * 1024;

  function byId(id) { return document.getElementById(id); }

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) { return ""; }
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function storageKey(root) { return "iep-cd-upload:" + root.dataset.callRef; }

  function remember(root, value) {
    try {
      if (value) { localStorage.setItem(storageKey(root), JSON.stringify(value)); }
      else { localStorage.removeItem(storageKey(root)); }
    } catch (e) { /* private mode: resuming still works, the server knows the upload */ }
  }

  function remembered(root) {
    try { return JSON.parse(localStorage.getItem(storageKey(root)) || "null"); } catch (e) { return null; }
  }

  // Walk a dropped folder (DataTransferItem.webkitGetAsEntry): every file under it, with
  // its path from the dropped folder's name down, as the directory picker names them.
  function readAll(reader) {
    return new Promise(function (resolve, reject) {
      var entries = [];
      (function next() {
        reader.readEntries(function (batch) {
          if (!batch.length) { resolve(entries); return; }
          entries = entries.concat(Array.prototype.slice.call(batch));
          next();
        }, reject);
      })();
    });
  }

  function walk(entry, out) {
    if (entry.isFile) {
      return new Promise(function (resolve, reject) {
        entry.file(function (file) {
          out.push({ path: entry.fullPath.replace(/^\/+/, ""), file: file });
          resolve();
        }, reject);
      });
    }
    if (entry.isDirectory) {
      return readAll(entry.createReader()).then(function (children) {
        return children.reduce(function (chain, child) {
          return chain.then(function () { return walk(child, out); });
        }, Promise.resolve());
      });
    }
    return Promise.resolve();
  }

  function Uploader(root) {
    this.root = root;
    this.paused = false;
    this.running = false;
    this.resumeWaiters = [];
    this.status = byId("cd-status");
    this.error = byId("cd-error");
    this.pauseButton = byId("cd-pause");
  }

  Uploader.prototype.say = function (text) { this.status.textContent = text; };

  Uploader.prototype.fail = function (lines) {
    this.error.textContent = "";
    var list = document.createElement("ul");
    lines.forEach(function (line) {
      var item = document.createElement("li");
      item.textContent = line;  // text, never HTML: the messages quote file names
      list.appendChild(item);
    });
    this.error.appendChild(list);
    this.error.hidden = false;
  };

  Uploader.prototype.clearError = function () { this.error.hidden = true; this.error.textContent = ""; };

  // The progress region (cds/_progress.html), redrawn here while sending.
  Uploader.prototype.draw = function () {
    var box = byId("cd-progress");
    var bar = byId("cd-progress-bar");
    var text = byId("cd-progress-text");
    if (!bar || !text || bar.getAttribute("max") === "1" && this.total > 1) {
      box.textContent = "";
      var label = document.createElement("label");
      label.className = "visually-hidden";
      label.htmlFor = "cd-progress-bar";
      label.textContent = "Upload progress";
      bar = document.createElement("progress");
      bar.id = "cd-progress-bar";
      text = document.createElement("p");
      text.id = "cd-progress-text";
      text.setAttribute("aria-live", "polite");
      box.appendChild(label);
      box.appendChild(bar);
      box.appendChild(text);
    }
    bar.max = Math.max(this.total, 1);
    bar.value = this.sent;
    text.textContent = this.filesDone + " of " + this.files.length + " files, " +
      (this.sent / MB).toFixed(1) + " of " + (this.total / MB).toFixed(1) + " MB";
  };

  Uploader.prototype.setPaused = function (paused) {
    this.paused = paused;
    this.pauseButton.textContent = paused ? "Resume" : "Pause";
    this.pauseButton.setAttribute("aria-pressed", paused ? "true" : "false");
    if (!paused) {
      var waiters = this.resumeWaiters;
      this.resumeWaiters = [];
      waiters.forEach(function (resolve) { resolve(); });
      this.clearError();
      this.say("Uploading…");
    } else {
      this.say("Paused. Press Resume to carry on.");
    }
  };

  Uploader.prototype.whenRunning = function () {
    var self = this;
    if (!self.paused) { return Promise.resolve(); }
    return new Promise(function (resolve) { self.resumeWaiters.push(resolve); });
  };

  Uploader.prototype.request = function (method, url, body, json) {
    var headers = { "X-CSRFToken": csrfToken() };
    if (json) { headers["Content-Type"] = "application/json"; }
    return fetch(url, { method: method, headers: headers, body: body, credentials: "same-origin" });
  };

  // One chunk, retried on network errors and 5xx with a growing wait (1, 2, 4 ... 30 s);
  // after RETRIES the upload pauses and the person resumes it when the network is back.
  Uploader.prototype.put = async function (url, blob) {
    var wait = 1000;
    for (var attempt = 0; ; attempt++) {
      await this.whenRunning();
      var response = null;
      try {
        response = await this.request("PUT", url, blob, false);
      } catch (e) { response = null; }
      if (response && response.status < 500) { return response; }
      if (attempt >= RETRIES) {
        this.setPaused(true);
        this.say("The desk cannot be reached. Check the connection, then press Resume: nothing received is lost.");
        attempt = -1;
        wait = 1000;
        continue;
      }
      this.say("Connection lost; trying again in " + Math.round(wait / 1000) + " s…");
      await sleep(wait);
      wait = Math.min(wait * 2, 30000);
    }
  };

  Uploader.prototype.sendFile = async function (item, info) {
    var offset = info.received;
    var size = item.file.size;
    while (offset < size) {
      var url = this.base + "/files/" + info.id + "?offset=" + offset;
      var end = Math.min(offset + CHUNK, size);
      var response = await this.put(url, item.file.slice(offset, end));
      var body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      if (response.ok) {
        this.sent += body.received - offset;
        offset = body.received;
        if (body.complete) { this.finished = body; }
      } else if (response.status === 409 && typeof body.received === "number" && body.received !== offset &&
                 body.received <= size) {
        this.sent += body.received - offset;  // the desk has more (or less) than we thought
        offset = body.received;
      } else {
        throw new Error(body.error || ("The desk refused the upload (" + response.status + ")."));
      }
      this.draw();
    }
  };

  Uploader.prototype.start = async function (items, kind) {
    if (this.running) { return; }
    this.running = true;
    this.clearError();
    this.finished = null;
    var manifest = items.map(function (item) { return { path: item.path, size: item.file.size }; });
    this.say("Checking the " + items.length + " files with the desk…");
    try {
      var response = await this.request("POST", this.root.dataset.startUrl,
        JSON.stringify({ kind: kind, files: manifest }), true);
      var body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      if (!response.ok) {
        var lines = [];
        if (body.errors) { Object.keys(body.errors).forEach(function (k) { lines = lines.concat(body.errors[k]); }); }
        if (body.error) { lines.push(body.error); }
        if (!lines.length) { lines.push("The desk refused the upload (" + response.status + "). Reload the page and try again."); }
        this.fail(lines);
        this.say("");
        return;
      }
      this.base = this.root.dataset.startUrl + "/" + body.upload_id;
      remember(this.root, { uploadId: body.upload_id, files: items.length, kind: kind });
      var byPath = {};
      body.files.forEach(function (f) { byPath[f.path] = f; });
      this.files = items;
      this.total = body.bytes_expected;
      this.sent = body.bytes_received;
      this.filesDone = 0;
      var self = this;
      items.forEach(function (item) { if (byPath[item.path].received >= item.file.size) { self.filesDone++; } });
      var notice = byId("cd-unfinished");
      if (notice) { notice.hidden = true; }
      this.pauseButton.hidden = false;
      this.say(body.resumed ? "Resuming the unfinished upload…" : "Uploading…");
      this.draw();
      for (var i = 0; i < items.length; i++) {
        var info = byPath[items[i].path];
        if (info.received >= items[i].file.size) { continue; }  // the desk has it already
        await this.sendFile(items[i], info);
        this.filesDone++;
        this.draw();
      }
      this.pauseButton.hidden = true;
      remember(this.root, null);
      this.done(body);
    } catch (e) {
      this.fail([e.message || "The upload stopped."]);
      this.say("");
    } finally {
      this.running = false;
    }
  };

  // Every file is in: the progress region from the desk ("All N files received —
  // scanning") and the scan's section, which follows the scan by itself.
  Uploader.prototype.done = function (body) {
    var message = this.finished && this.finished.message ? this.finished.message : "All files received.";
    this.say(message);
    if (window.htmx) {
      window.htmx.ajax("GET", this.base + "/progress", { target: "#cd-progress", swap: "outerHTML" });
      window.htmx.ajax("GET", this.root.dataset.pageUrl, { target: "#cd-scan-slot", select: "#cd-scan-slot",
                                                           swap: "outerHTML" });
    }
  };

  function filesOf(input) {
    return Array.prototype.map.call(input.files, function (file) {
      return { path: file.webkitRelativePath || file.name, file: file };
    });
  }

  function setUp() {
    var root = byId("cd-upload");
    if (!root) { return; }
    var controls = root.querySelector(".cd-controls");
    if (!controls) { return; }
    controls.hidden = false;
    var uploader = new Uploader(root);
    var notice = byId("cd-unfinished");
    var mine = remembered(root);
    if (notice && mine && String(mine.uploadId) === root.dataset.unfinishedId) {
      var what = mine.kind === "zip" ? "the same .zip" : mine.kind === "files" ? "the same files" : "the same folder";
      notice.textContent = "An upload of " + root.dataset.unfinishedFiles + " files is unfinished: choose " +
        what + " to resume.";
    }
    function pick(input, kind) {
      input.addEventListener("change", function () {
        var items = filesOf(input);
        if (!items.length) { return; }
        if (kind === "files" && items.length === 1 && /\.zip$/i.test(items[0].path)) { kind = "zip"; }
        uploader.start(items, kind);
      });
    }
    pick(byId("cd-folder"), "folder");
    pick(byId("cd-files"), "files");
    pick(byId("cd-zip"), "zip");
    uploader.pauseButton.addEventListener("click", function () { uploader.setPaused(!uploader.paused); });

    var drop = byId("cd-drop");
    drop.addEventListener("dragover", function (event) {
      event.preventDefault();
      drop.classList.add("is-over");
    });
    drop.addEventListener("dragleave", function () { drop.classList.remove("is-over"); });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      drop.classList.remove("is-over");
      var entries = Array.prototype.map.call(event.dataTransfer.items || [], function (item) {
        return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      }).filter(Boolean);
      var items = [];
      var folder = entries.some(function (entry) { return entry.isDirectory; });
      entries.reduce(function (chain, entry) {
        return chain.then(function () { return walk(entry, items); });
      }, Promise.resolve()).then(function () {
        if (!items.length) { uploader.fail(["Nothing to upload was dropped: drop the CD's folder or its files."]); return; }
        var kind = folder ? "folder" : (items.length === 1 && /\.zip$/i.test(items[0].path) ? "zip" : "files");
        uploader.start(items, kind);
      }, function () { uploader.fail(["The dropped folder could not be read. Choose it with the button instead."]); });
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", setUp); }
  else { setUp(); }
})();
