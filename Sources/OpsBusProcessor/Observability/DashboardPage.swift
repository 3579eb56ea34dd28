/// The live dashboard: one self-contained page (inline CSS and JS, no CDN, no build step). It renders
/// `/api/summary` and follows `/events/stream` (server-sent events), falling back to polling when the stream fails.
/// All data goes into the DOM as text (`textContent`), never as HTML.
enum DashboardPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>opsbus dashboard</title>
<style>
  :root { --bg:#0f1419; --card:#182028; --fg:#e6e6e6; --dim:#8a96a3; --ok:#3fb950; --warn:#d29922; --bad:#f85149; --acc:#58a6ff; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--fg); }
  header { display:flex; align-items:center; gap:16px; padding:12px 20px; border-bottom:1px solid #263040; }
  header h1 { font-size:18px; margin:0; }
  #verdict { padding:2px 10px; border-radius:10px; font-weight:600; text-transform:uppercase; font-size:12px; }
  .healthy { background:#1f3d2a; color:var(--ok); } .degraded { background:#3d321a; color:var(--warn); }
  .unhealthy, .error { background:#3d1f1f; color:var(--bad); }
  #conn, #updated { color:var(--dim); font-size:12px; }
  main { display:grid; grid-template-columns:repeat(auto-fill, minmax(380px, 1fr)); gap:14px; padding:14px 20px; }
  section { background:var(--card); border-radius:8px; padding:12px 14px; overflow:auto; max-height:420px; }
  section.wide { grid-column:1 / -1; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.05em; color:var(--dim); margin:0 0 8px; }
  table { width:100%; border-collapse:collapse; font-size:13px; }
  th, td { text-align:left; padding:3px 6px; border-bottom:1px solid #263040; white-space:nowrap; }
  th { color:var(--dim); font-weight:500; }
  td.num { text-align:right; font-variant-numeric:tabular-nums; }
  .tiles { display:flex; flex-wrap:wrap; gap:10px; }
  .tile { background:#1f2a35; border-radius:6px; padding:6px 12px; min-width:90px; }
  .tile b { display:block; font-size:20px; }
  .tile span { color:var(--dim); font-size:12px; }
  .s-completed, .s-online, .s-idle { color:var(--ok); } .s-failed, .s-dead_lettered, .s-offline { color:var(--bad); }
  .s-processing, .s-busy { color:var(--acc); } .s-retry_scheduled, .s-unreachable, .s-degraded { color:var(--warn); }
  .empty { color:var(--dim); font-style:italic; }
  .sev-critical { color:var(--bad); font-weight:600; } .sev-warning { color:var(--warn); } .sev-info { color:var(--acc); }
  .note { text-transform:none; letter-spacing:0; font-weight:400; }
  ul.reasons { margin:4px 0 0; padding-left:18px; color:var(--warn); }
</style>
</head>
<body>
<header>
  <h1>opsbus</h1>
  <span id="verdict" class="error">loading</span>
  <span id="conn">connecting…</span>
  <span id="updated"></span>
</header>
<main>
  <section class="wide"><h2>Overview</h2><div class="tiles" id="tiles"></div><ul class="reasons" id="reasons"></ul></section>
  <section><h2>Jobs by status</h2><table id="jobs-by-status"></table></section>
  <section><h2>Events per second by type</h2><table id="event-rates"></table></section>
  <section class="wide"><h2>Recommendations <span id="analysed" class="note"></span></h2><table id="recommendations"></table></section>
  <section class="wide"><h2>Recent jobs</h2><table id="recent-jobs"></table></section>
  <section class="wide"><h2>Recent failures</h2><table id="failures"></table></section>
  <section><h2>Failure types</h2><table id="failure-types"></table></section>
  <section class="wide"><h2>Workers</h2><table id="workers"></table></section>
  <section><h2>Queue depths</h2><table id="depths"></table></section>
  <section><h2>Queues</h2><table id="queues"></table></section>
  <section class="wide"><h2>Models</h2><table id="models"></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return String(v);
}
function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
// columns: [header, (row) => value, className?]
function table(id, columns, rows, emptyText) {
  const t = $(id);
  t.replaceChildren();
  if (!rows || rows.length === 0) { const tr = el("tr"); tr.append(el("td", emptyText || "none yet", "empty")); t.append(tr); return; }
  const head = el("tr");
  for (const c of columns) head.append(el("th", c[0]));
  t.append(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const c of columns) {
      const value = c[1](row);
      const cls = typeof value === "number" ? "num" : (c[2] ? c[2](row) : "");
      const td = el("td", fmt(value), cls);
      if (c[3]) td.setAttribute(c[3], String(value));
      tr.append(td);
    }
    t.append(tr);
  }
}
function pairs(object) { return Object.entries(object || {}).map(([k, v]) => ({ k, v })); }
function render(s) {
  if (s.error) { $("verdict").textContent = "error"; $("verdict").className = "error"; $("conn").textContent = s.error; return; }
  $("verdict").textContent = s.verdict; $("verdict").className = s.verdict;
  $("updated").textContent = "updated " + new Date(s.generated_at).toLocaleTimeString();
  const reasons = $("reasons"); reasons.replaceChildren(); for (const r of s.reasons || []) reasons.append(el("li", r));
  const tiles = $("tiles"); tiles.replaceChildren();
  const tile = (label, value) => { const d = el("div", null, "tile"); d.append(el("b", fmt(value)), el("span", label)); tiles.append(d); };
  tile("events total", s.events.total); tile("events last minute", s.events.last_minute);
  tile("retries scheduled", s.retries.scheduled_jobs); tile("retries pending", s.retries.pending);
  tile("dead-lettered jobs", s.dead_letters.dead_lettered_jobs); tile("dead-letter events", s.dead_letters.events);
  tile("actions ok / failed", s.actions ? s.actions.succeeded + " / " + s.actions.failed : "–");
  tile("webhooks delivered", s.webhooks ? s.webhooks.delivered : "–");
  tile("precache triggers", s.precache_triggers);
  const analysis = s.recommendations;
  $("analysed").textContent = analysis ? "· analysed " + ago(analysis.generated_at) + ", hours " + analysis.window : "";
  table("recommendations", [["severity", (r) => r.severity, (r) => "sev-" + r.severity],
    ["recommendation", (r) => r.summary], ["subject", (r) => r.subject, null, "data-subject"]],
    analysis ? analysis.recommendations : [], analysis ? "nothing to recommend" : "no pattern analysis yet");
  table("jobs-by-status", [["status", (r) => r.k, (r) => "s-" + r.k], ["jobs", (r) => r.v]], pairs(s.jobs_by_status));
  table("event-rates", [["type", (r) => r.k], ["events/s", (r) => r.v]], pairs(s.events.per_second_by_type), "no events in the last 10 s");
  const jobCols = [["job", (j) => j.job_id, null, "data-job-id"], ["status", (j) => j.status, (j) => "s-" + j.status],
    ["worker", (j) => j.worker_id], ["attempt", (j) => j.attempt], ["progress", (j) => j.progress],
    ["updated", (j) => ago(j.updated_at)]];
  table("recent-jobs", jobCols, s.recent_jobs);
  table("failures", [["job", (j) => j.job_id, null, "data-job-id"], ["status", (j) => j.status, (j) => "s-" + j.status],
    ["error type", (j) => j.error_type], ["error", (j) => j.error_message], ["worker", (j) => j.worker_id],
    ["updated", (j) => ago(j.updated_at)]], s.recent_failures, "no failures");
  table("failure-types", [["error type", (r) => r.k], ["jobs", (r) => r.v]], pairs(s.failure_types), "no failures");
  table("workers", [["worker", (w) => w.worker_id], ["status", (w) => w.stale ? w.status + " (stale)" : w.status, (w) => "s-" + w.status],
    ["current job", (w) => w.current_job], ["last heartbeat", (w) => ago(w.last_seen)], ["machine", (w) => w.machine_id],
    ["last outage", (w) => w.last_outage]], s.workers, "no workers registered");
  table("depths", [["queue", (r) => r.k], ["entries", (r) => r.v]], pairs(s.depths));
  const queueCols = [["queue", (q) => q.queue]];
  const extra = new Set(); for (const q of s.queues) for (const k of Object.keys(q)) if (k !== "queue" && k !== "updated_at") extra.add(k);
  for (const k of [...extra].slice(0, 5)) queueCols.push([k, (q) => q[k]]);
  table("queues", queueCols, s.queues, "no queue.state events yet");
  table("models", [["model", (m) => m.model], ["loads", (m) => m.loads], ["cache hit rate", (m) => m.cache_hit_rate === null ? null : Math.round(m.cache_hit_rate * 100) + " %"],
    ["avg load ms", (m) => m.average_load_ms], ["jobs completed", (m) => m.jobs_completed],
    ["precache", (m) => m.precache_triggered_at ? "triggered " + ago(m.precache_triggered_at) : "–"]], s.models, "no model usage yet");
}
let polling = null;
function poll() {
  fetch("/api/summary", { cache: "no-store" }).then((r) => r.json()).then(render)
    .catch((e) => { $("conn").textContent = "cannot reach the processor: " + e; });
}
function startPolling() {
  if (polling) return;
  $("conn").textContent = "polling every 2 s";
  poll(); polling = setInterval(poll, 2000);
}
function connect() {
  // ?transport=poll: polling only (headless browsers with virtual time cannot wait for a stream that stays open).
  if (!window.EventSource || new URLSearchParams(location.search).get("transport") === "poll") { startPolling(); return; }
  const source = new EventSource("/events/stream");
  let opened = false;
  source.addEventListener("summary", (e) => { render(JSON.parse(e.data)); });
  source.onopen = () => { opened = true; $("conn").textContent = "live"; if (polling) { clearInterval(polling); polling = null; } };
  source.onerror = () => { if (!opened) { source.close(); startPolling(); } else { $("conn").textContent = "reconnecting…"; } };
}
poll();
connect();
</script>
</body>
</html>
"""#
}
