"""The status page at ``/-/``: /-/status drawn as tables, redrawn every 2 seconds.

One self-contained document: inline CSS and JS, nothing fetched but ``status`` beside it
(relative, so a front proxy that mounts us under a path still works). The page holds no
data of its own: everything comes from /-/status, which never holds a secret, and every
value is written as text, never as markup, so a hostile string in it (an upstream's
error code, a route prefix) cannot run as script. The Content-Security-Policy allows
exactly this script and this style, by hash, and no other source.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from ..http.server import Reply

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.4em 0 .4em}
h3{font-size:1.05em;margin:1.6em 0 .2em;border-top:2px solid #999;padding-top:.6em}
table{border-collapse:collapse;background:#fff;margin-bottom:.4em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eee;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176b1f}.bad{color:#b00020;font-weight:600}.warn{color:#9a5b00}
.muted{color:#777}#updated{margin:.3em 0 0}
.bar{display:inline-block;width:6em;height:.7em;background:#e4e4e4;margin-right:.4em}
.bar>span{display:block;height:100%;background:#3a7bd5}
"""

_SCRIPT: Final = """
"use strict";
const REFRESH_MS = 2000;
const view = document.getElementById("view");
const stamp = document.getElementById("updated");

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function show(v) { return v === null || v === undefined ? "\\u2014" : String(v); }
function secs(v) {
  if (v === null || v === undefined) return "\\u2014";
  const s = Math.max(0, Math.round(v));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}
function num(v) {
  return typeof v === "number" ? String(Math.round(v * 100) / 100) : show(v);
}
// A cell: text, or a node; the key names the value for whoever reads the page's DOM.
function cell(value, key, cls) {
  const td = el("td", cls);
  if (value instanceof Node) td.append(value); else td.textContent = show(value);
  if (key) td.dataset.key = key;
  return td;
}
function table(title, heads, rows, empty) {
  const part = document.createDocumentFragment();
  part.append(el("h2", null, title));
  if (!rows.length) { part.append(el("p", "muted", empty)); return part; }
  const t = el("table"), head = el("tr");
  for (const h of heads) head.append(el("th", null, h));
  t.append(head);
  for (const cells of rows) { const tr = el("tr"); tr.append(...cells); t.append(tr); }
  part.append(t);
  return part;
}
function fillBar(fill) {
  const wrap = el("span");
  if (typeof fill !== "number") { wrap.textContent = "\\u2014"; return wrap; }
  const bar = el("span", "bar"), inner = el("span");
  inner.dataset.fill = String(fill);
  bar.append(inner);
  wrap.append(bar, Math.round(fill * 100) + "%");
  // Width through the CSSOM: a style attribute would need 'unsafe-inline'.
  inner.style.width = Math.round(fill * 100) + "%";
  return wrap;
}

function limitRows(status) {
  const seen = new Map();
  const add = (limits, user) => {
    for (const [name, l] of Object.entries(limits || {})) {
      if (!seen.has(name)) seen.set(name, { limit: l, users: [] });
      seen.get(name).users.push(user);
    }
  };
  for (const [prefix, r] of Object.entries(status.routes || {})) add(r.limits, prefix);
  for (const [name, c] of Object.entries(status.clients || {})) add(c.limits, "client " + name);
  return [...seen].map(([name, { limit: l, users }]) => {
    const k = "limit." + name + ".";
    return [
      cell(name, k + "name"), cell(users.join(", ")),
      cell(num(l.rate) + " / " + num(l.per) + " s", k + "rate", "n"),
      cell(num(l.burst), k + "burst", "n"), cell(fillBar(l.fill), k + "fill"),
      cell(l.waiting, k + "waiting", "n"), cell(l.rejected, k + "rejected", "n"),
      cell(num(l.max_wait) + " s", k + "max_wait", "n"),
    ];
  });
}

function one(status, label) {
  const part = document.createDocumentFragment();
  if (label) part.append(el("h3", null, label));
  const routes = Object.entries(status.routes || {});
  part.append(table("Routes", ["prefix", "upstream", "auth", "in flight", "retrying"],
    routes.map(([p, r]) => [
      cell(p, "route." + p + ".prefix"), cell(r.upstream, "route." + p + ".upstream"),
      cell(r.auth, "route." + p + ".auth"), cell(r.in_flight, "route." + p + ".in_flight", "n"),
      cell(r.retrying, null, "n"),
    ]), "No routes."));
  part.append(table("Auth tables",
    ["name", "type", "ready", "expires in", "last fetch", "last outcome", "failures", "retry in"],
    Object.entries(status.auth || {}).map(([n, a]) => {
      const k = "auth." + n + ".";
      return [
        cell(n, k + "name"), cell(a.type),
        cell(a.ready ? "yes" : "no", k + "ready", a.ready ? "ok" : "bad"),
        cell(secs(a.expires_in_s), k + "expires_in", "n"), cell(a.last_fetch, k + "last_fetch"),
        cell(a.last_outcome, k + "last_outcome", a.last_outcome === "ok" ? "ok" : "warn"),
        cell(a.consecutive_failures, k + "failures", "n"),
        cell(secs(a.retry_in_s), k + "retry_in", "n"),
      ];
    }), "No auth tables in use."));
  part.append(table("Limits",
    ["limit", "used by", "rate", "burst", "fill", "waiting", "refused", "max wait"],
    limitRows(status), "No rate limits."));
  part.append(table("Pauses and learned rates",
    ["route", "paused", "remaining", "paused in all", "learned rate", "throttles", "waiting"],
    routes.map(([p, r]) => {
      const c = r.cooldown || {}, a = r.learned_rate || {}, k = "pause." + p + ".";
      return [
        cell(p), cell(c.paused ? "paused" : "no", k + "paused", c.paused ? "bad" : "ok"),
        cell(secs(c.remaining_s), k + "remaining", "n"), cell(secs(c.paused_total_s), null, "n"),
        cell(a.active ? num(a.rate) + " /s" : "not pacing", k + "learned_rate"),
        cell(a.throttles, k + "throttles", "n"), cell(a.waiting, null, "n"),
      ];
    }), "No routes."));
  if (status.state) {
    part.append(table("State", ["backend", "up"], [[
      cell(status.state.backend, "state.backend"),
      cell(status.state.up ? "yes" : "no", "state.up", status.state.up ? "ok" : "bad"),
    ]], ""));
  }
  return part;
}

function errorRows(errors, withWorker) {
  return errors.map((e, i) => {
    const row = [
      cell(new Date(e.time * 1000).toLocaleTimeString(), "error." + i + ".time"),
      cell(e.route, "error." + i + ".route"), cell(e.status, "error." + i + ".status", "n"),
      cell(e.error, "error." + i + ".error", "bad"),
    ];
    if (withWorker) row.unshift(cell(e.worker, null, "n"));
    return row;
  });
}

function render(status) {
  const part = document.createDocumentFragment();
  if (!Array.isArray(status.workers)) {
    part.append(one(status, null));
    part.append(table("Recent errors", ["time", "route", "status", "error"],
      errorRows(status.errors || [], false), "None since start."));
    return part;
  }
  const workers = status.workers;
  part.append(table("Workers (supervisor pid " + show(status.supervisor_pid) + ")",
    ["worker", "pid", "up", "restarts", "last exit"],
    workers.map(w => [
      cell(w.index, "worker." + w.index + ".index", "n"), cell(w.pid, null, "n"),
      cell(w.up ? "yes" : "no", "worker." + w.index + ".up", w.up ? "ok" : "bad"),
      cell(w.restarts, "worker." + w.index + ".restarts", "n"), cell(w.last_exit),
    ]), "No workers."));
  const errors = [];
  for (const w of workers) {
    for (const e of (w.status && w.status.errors) || []) errors.push({ ...e, worker: w.index });
  }
  errors.sort((a, b) => b.time - a.time);
  part.append(table("Recent errors", ["worker", "time", "route", "status", "error"],
    errorRows(errors.slice(0, 50), true), "None since start."));
  for (const w of workers) {
    if (w.status) part.append(one(w.status, "Worker " + w.index + " (pid " + show(w.pid) + ")"));
    else part.append(el("h3", "bad", "Worker " + w.index + ": no answer"));
  }
  return part;
}

async function refresh() {
  try {
    const answer = await fetch("status", { cache: "no-store", credentials: "same-origin" });
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    view.replaceChildren(render(await answer.json()));
    stamp.textContent = "Updated " + new Date().toLocaleTimeString() + ", every "
      + REFRESH_MS / 1000 + " s.";
    stamp.className = "muted";
  } catch (error) {
    stamp.textContent = "Status unavailable (" + error.message + "); retrying.";
    stamp.className = "bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
"""

_HTML: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Proxy status</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<h1>Proxy status</h1>
<p id="updated" class="muted">Loading&hellip;</p>
<main id="view"></main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


# Hashes, not a nonce: the page never changes, so neither does its policy, and nothing is
# drawn per request. The script sets widths through the CSSOM, which style-src does not
# govern; 'unsafe-inline' is never needed.
CSP: Final = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_hash(_SCRIPT)}",
        f"style-src {_hash(_STYLE)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_HEADERS: Final = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_BODY: Final = _HTML.encode()


def page() -> Reply:
    """The status page; the same bytes every time."""
    return Reply(200, dict(_HEADERS), _BODY)
