// ocpp-replay web UI. Plain modern JavaScript, no build step, nothing loaded from elsewhere.
//
// Everything from traffic (charge point ids, actions, payloads, paths, values) reaches the page
// through text nodes only (never innerHTML), and invisible characters (controls, bidi overrides,
// separators) are shown as escapes, \x1b or \u202e, marked: a field value cannot run as script,
// reverse a line or hide. The server's Content-Security-Policy forbids inline script as well.

const $main = document.getElementById("main");
const $dialog = document.getElementById("dialog");
let cleanups = [];

// ------------------------------------------------------------------ escaping and elements

const INVISIBLE = /[\p{C}\p{Z}]/u;

function escapeChar(c) {
  const cp = c.codePointAt(0);
  const hex = (n, w) => n.toString(16).padStart(w, "0");
  if (cp < 0x100) return "\\x" + hex(cp, 2);
  if (cp < 0x10000) return "\\u" + hex(cp, 4);
  return "\\U" + hex(cp, 8);
}

function hidden(c, keepNewlines) {
  return c !== " " && !(keepNewlines && c === "\n") && INVISIBLE.test(c);
}

/** Text from traffic as a string with invisible characters escaped (for titles and values). */
function showText(value) {
  let out = "";
  for (const c of String(value ?? "")) out += hidden(c, false) ? escapeChar(c) : c;
  return out;
}

/** Text from traffic as nodes: plain text, with each invisible character an escape, marked. */
function show(value, keepNewlines = false) {
  const frag = document.createDocumentFragment();
  let buf = "";
  for (const c of String(value ?? "")) {
    if (hidden(c, keepNewlines)) {
      if (buf) frag.append(buf);
      buf = "";
      const mark = document.createElement("span");
      mark.className = "esc";
      mark.textContent = escapeChar(c);
      frag.append(mark);
    } else {
      buf += c;
    }
  }
  if (buf) frag.append(buf);
  return frag;
}

/** An element; string children are traffic text (see show), nodes are appended as they are. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "title") el.title = showText(v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : show(String(c)));
  }
  return el;
}

function link(href, ...children) {
  return h("a", { href }, ...children);
}

const enc = encodeURIComponent;
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// ------------------------------------------------------------------ the server

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

function live(path, handlers) {
  const source = new EventSource(path);
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  }
  const badge = document.getElementById("live");
  source.onopen = () => { badge.hidden = false; };
  source.onerror = () => { badge.hidden = true; };
  cleanups.push(() => { source.close(); badge.hidden = true; });
  return source;
}

function failure(err) {
  return h("div", { class: "error", role: "alert" }, err.message || String(err));
}

// ------------------------------------------------------------------ routing

function route() {
  const hash = location.hash || "#/sessions";
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, params: Object.fromEntries(new URLSearchParams(query)) };
}

async function render() {
  for (const fn of cleanups.splice(0)) fn();
  const { parts, params } = route();
  const [view, id, sub] = parts;
  for (const a of document.querySelectorAll("[data-nav]")) {
    const on = a.dataset.nav === view || (view === "session" && a.dataset.nav === "sessions")
      || (view === "run" && a.dataset.nav === "runs");
    a.classList.toggle("on", on);
  }
  $main.replaceChildren(h("p", { class: "mute" }, "Loading…"));
  try {
    if (view === "session" && id) await sessionView(Number(id), params);
    else if (view === "runs") await runsView();
    else if (view === "run" && id && sub === "diff") await diffView(Number(id), params);
    else if (view === "run" && id) await runView(Number(id), params);
    else if (view === "coverage") await coverageView(params);
    else if (view === "rules") await rulesView();
    else await sessionsView(params);
  } catch (err) {
    $main.replaceChildren(failure(err));
  }
}

function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return () => {
    const wait = last + ms - Date.now();
    if (timer) return;
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, Math.max(0, wait));
  };
}

/** FN now, or when the page is next shown if it is hidden (a tab in the background fetches
 * and lays out nothing). */
function whenShown(fn) {
  let pending = false;
  const shown = () => { if (!document.hidden && pending) { pending = false; fn(); } };
  document.addEventListener("visibilitychange", shown);
  cleanups.push(() => document.removeEventListener("visibilitychange", shown));
  return () => { if (document.hidden) pending = true; else fn(); };
}

// ------------------------------------------------------------------ sessions

/** Sessions on the list at first, and added by its "more" button. */
const PAGE = 50;

function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

function utcBound(local, end) {
  return local ? local + (end ? ":59.999999Z" : ":00.000000Z") : "";
}

async function sessionsView(params) {
  const input = (name, label, extra = {}) => h("label", {}, label,
    h("input", { name, value: params[name] || "", ...extra }));
  const form = h("form", { class: "filters", id: "filters" },
    input("cp", "charge point", { list: "cps", size: 16 }),
    input("since", "from (UTC)", { type: "datetime-local" }),
    input("until", "to (UTC)", { type: "datetime-local" }),
    input("action", "action", { list: "actions", size: 18 }),
    input("q", "frames matching", {
      class: "expr", placeholder: 'action=Authorize payload.idTag=ACE0177305   dir=csms type=error   "Faulted"',
    }),
    h("button", { class: "primary", type: "submit" }, "Apply"),
    h("button", { type: "button", onclick: () => { location.hash = "#/sessions"; } }, "Clear"),
    h("datalist", { id: "cps" }), h("datalist", { id: "actions" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = "#/sessions?" + q.toString();
  });
  const help = h("details", { class: "help" }, h("summary", {}, "filter expressions"),
    h("pre", {}, [
      "action=Authorize                 the action (answers carry their CALL's)",
      "dir=charger   dir=csms           who sent the frame",
      "type=call  type=result  type=error  type=invalid",
      "id=42                            the unique id",
      "payload.idTag=ACE0177305         a payload value;  != differs,  ~ contains",
      "Faulted   \"two words\"             text anywhere in the frame",
      "a b = both;  a or b;  -a / not a;  ( ) group",
    ].join("\n")));
  const status = h("p", { class: "mute", id: "count" });
  const table = h("table", { id: "sessions" }, h("thead", {}, h("tr", {},
    ["session", "charge point", "OCPP", "started (UTC)", "ended", "duration", "frames", "close", "closed by",
      "schema", "error"].map((c) => h("th", {}, c)))), h("tbody"));
  const problem = h("div");
  // A page of the newest sessions, and more on demand: a live capture's list is laid out again
  // every second, and each row on it costs the browser (and the CPU it shares with the proxy).
  let shown = PAGE;
  const more = h("button", { type: "button", id: "more", hidden: true,
    onclick: () => { shown += PAGE; load(); } }, `${PAGE} more`);
  $main.replaceChildren(h("h1", {}, "Sessions"), form, help, problem, status, table, more);

  api("/api/suggestions").then((s) => {
    document.getElementById("cps")?.replaceChildren(...s.charge_points.map((c) => h("option", { value: c })));
    document.getElementById("actions")?.replaceChildren(...s.actions.map((a) => h("option", { value: a })));
  }).catch(() => {});

  const query = new URLSearchParams();
  if (params.cp) query.set("cp", params.cp);
  if (params.since) query.set("since", utcBound(params.since, false));
  if (params.until) query.set("until", utcBound(params.until, true));
  if (params.action) query.set("action", params.action);
  if (params.q) query.set("q", params.q);

  const load = async () => {
    let data;
    query.set("limit", String(shown));
    try {
      data = await api("/api/sessions?" + query.toString());
    } catch (err) {
      problem.replaceChildren(failure(err));
      return;
    }
    problem.replaceChildren();
    status.textContent = `${data.sessions.length} of ${plural(data.total, "session")}` +
      (data.total > data.sessions.length ? " (newest first)" : "");
    more.hidden = data.total <= data.sessions.length;
    syncRows(table.tBodies[0], data.sessions.map((s) => {
      const dur = s.ended_at ? (Date.parse(s.ended_at) - Date.parse(s.started_at)) / 1000 : null;
      return h("tr", { "data-session": s.id },
        h("td", { class: "n" }, link(`#/session/${s.id}`, String(s.id))),
        h("td", {}, link(`#/session/${s.id}`, s.charge_point_id)),
        h("td", {}, s.ocpp || s.subprotocol || "—"),
        h("td", { class: "mono" }, s.started_at),
        h("td", { class: "mono" }, s.live ? h("span", { class: "badge live" }, "live") : s.ended_at),
        h("td", { class: "n" }, fmtDuration(dur)),
        h("td", { class: "n" }, String(s.frames)),
        h("td", { class: "n" }, s.close_code ?? ""),
        h("td", {}, s.closed_by ?? ""),
        h("td", { class: "n" }, s.violations === null ? h("span", { class: "mute", title: "being checked" }, "…")
          : s.violations ? h("span", { class: "badge warn" }, String(s.violations)) : ""),
        h("td", {}, s.error ?? ""));
    }));
  };
  await load();
  const refresh = whenShown(throttle(load, 1000));
  live("/api/live", { changed: refresh });
}

/**
 * Make TBODY show ROWS (each with a data-session key) changing only what changed: a live
 * capture refreshes the list every second and most rows differ by a count, so cells are
 * replaced one by one where they differ, and rows moved only when the order changed. The
 * browser then lays out a few cells instead of rebuilding the table: less of its CPU taken
 * from a proxy on the same machine.
 */
function syncRows(tbody, rows) {
  const old = new Map(Array.from(tbody.rows, (r) => [r.dataset.session, r]));
  rows.forEach((row, i) => {
    let kept = row;
    const prev = old.get(row.dataset.session);
    if (prev && prev.cells.length === row.cells.length) {
      old.delete(row.dataset.session);
      const fresh = Array.from(row.cells);
      Array.from(prev.cells).forEach((cell, c) => {
        const now = fresh[c];
        if (cell.isEqualNode(now)) return;
        const [a, b] = [cell.firstChild, now.firstChild];
        if (cell.childNodes.length === 1 && now.childNodes.length === 1 && a.nodeType === Node.TEXT_NODE
          && b.nodeType === Node.TEXT_NODE && cell.cloneNode(false).isEqualNode(now.cloneNode(false))) {
          a.data = b.data;  // a count: the same cell (attributes and all), its text changed
        } else cell.replaceWith(now);
      });
      kept = prev;
    }
    if (tbody.rows[i] !== kept) tbody.insertBefore(kept, tbody.rows[i] || null);
  });
  for (const r of old.values()) r.remove();
}

// ------------------------------------------------------------------ the sequence diagram

const TYPES = { 2: "CALL", 3: "RESULT", 4: "ERROR" };

function typeName(f) {
  return TYPES[f.type] || (f.binary ? "binary" : "invalid");
}

function fmtGap(g) {
  if (g === null || g === undefined) return "";
  return g < 1 ? `+${(g * 1000).toFixed(g < 0.01 ? 2 : 0)} ms` : `+${g.toFixed(2)} s`;
}

/** A sequence diagram: charger on the left, CSMS on the right, one arrow per frame. */
class Diagram {
  constructor({ onSelect, left = "charger", right = "CSMS" }) {
    this.rows = new Map();
    this.frames = new Map();
    this.onSelect = onSelect;
    this.body = h("div", { class: "rows" });
    this.el = h("div", { class: "seq", role: "list" },
      h("div", { class: "lanes" }, h("span", {}, "t (s)"), h("span", {}, "gap"),
        h("span", { class: "ends" }, h("span", {}, left), h("span", {}, right))),
      this.body);
    this.selected = null;
  }

  label(f) {
    const parts = [h("span", { class: "mute" }, `#${f.seq}`), h("span", {}, typeName(f))];
    if (f.action) parts.push(h("span", { class: "act" }, f.action));
    if (f.error_code) parts.push(h("span", { class: "bad" }, f.error_code));
    if (f.unique_id !== null && f.unique_id !== undefined) parts.push(h("span", { class: "mute" }, `id ${showText(f.unique_id)}`));
    if (f.rtt !== null && f.rtt !== undefined) {
      parts.push(h("span", { class: "rtt" }, f.type === 2 ? `answered in ${f.rtt.toFixed(1)} ms` : `↩ ${f.rtt.toFixed(1)} ms`));
    }
    if (f.violations && f.violations.length) parts.push(h("span", { class: "badge warn" }, plural(f.violations.length, "schema violation")));
    if (f.parse_error) parts.push(h("span", { class: "bad" }, "not OCPP-J"));
    if (f.recorded_seq !== undefined && f.recorded_seq !== null) parts.push(h("span", { class: "mute" }, `rec #${f.recorded_seq}`));
    return parts;
  }

  row(f) {
    const up = f.direction === "to_csms";
    const classes = ["arrow", up ? "up" : "down"];
    if (f.type === 3 || f.type === 4) classes.push("answer");
    if (f.type === 4 || f.type === null || f.parse_error) classes.push("err");
    if (f.violations && f.violations.length) classes.push("viol");
    const el = h("div", {
      class: "frame" + (f.match ? " match" : ""), role: "listitem", "data-seq": f.seq,
      "data-type": f.type ?? "", "data-uid": f.unique_id ?? "",
      "data-dir": f.direction, tabindex: 0,
      onclick: () => this.select(f.seq),
      onkeydown: (e) => { if (e.key === "Enter") this.select(f.seq); },
    },
    h("span", { class: "t" }, f.elapsed.toFixed(3)),
    h("span", { class: "gap" }, fmtGap(f.gap)),
    h("div", { class: classes.join(" ") }, h("div", { class: "label" }, this.label(f)), h("div", { class: "line" })));
    return el;
  }

  add(frames) {
    for (const f of frames) {
      if (this.rows.has(f.seq)) continue;
      const el = this.row(f);
      this.rows.set(f.seq, el);
      this.frames.set(f.seq, f);
      this.body.append(el);
      if (f.pair !== null && f.pair !== undefined && this.frames.has(f.pair)) {
        const call = this.frames.get(f.pair);
        if (call.type === 2 && call.rtt === null) {
          call.pair = f.seq;
          call.rtt = f.rtt;
          const fresh = this.row(call);
          if (this.selected === call.seq) fresh.classList.add("sel");
          this.rows.get(call.seq).replaceWith(fresh);
          this.rows.set(call.seq, fresh);
        }
      }
    }
  }

  get last() {
    let max = -1;
    for (const k of this.frames.keys()) max = Math.max(max, k);
    return max;
  }

  select(seq, scroll = false) {
    if (!this.rows.has(seq)) return;
    if (this.selected !== null) this.rows.get(this.selected)?.classList.remove("sel");
    this.selected = seq;
    const el = this.rows.get(seq);
    el.classList.add("sel");
    if (scroll) el.scrollIntoView({ block: "center" });
    this.onSelect?.(this.frames.get(seq));
  }

  follow() {
    this.el.scrollTop = this.el.scrollHeight;
  }
}

function frameDetail(d, { pairHref } = {}) {
  const meta = [
    ["seq", String(d.seq)],
    ["direction", d.direction === "to_csms" ? "charger → CSMS" : "CSMS → charger"],
    ["type", typeName(d)],
    ["action", d.action ?? ""],
    ["unique id", d.unique_id ?? ""],
    ["time (UTC)", d.timestamp],
    ["elapsed", `${d.elapsed.toFixed(6)} s`],
    ["size", `${d.size} bytes`],
  ];
  if (d.recorded_seq !== undefined) meta.push(["recorded seq", d.recorded_seq ?? "—"]);
  if (d.side) meta.push(["side", d.side]);
  if (d.error_code) meta.push(["error code", d.error_code]);
  if (d.parse_error) meta.push(["not OCPP-J", d.parse_error]);
  const rows = meta.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)));
  if (d.pair !== null && d.pair !== undefined) {
    rows.push(h("tr", {}, h("th", {}, d.type === 2 ? "answer" : "answers"),
      h("td", {}, pairHref ? link(pairHref(d.pair), `#${d.pair}`) : `#${d.pair}`,
        d.rtt !== null ? ` (round trip ${d.rtt.toFixed(2)} ms)` : "")));
  }
  const out = [h("table", {}, rows)];
  if (d.violations && d.violations.length) {
    out.push(h("h2", {}, "Schema violations"), h("ul", { class: "violations" },
      d.violations.map((v) => h("li", {}, h("code", {}, v.path || "(message)"), ": ", v.message))));
  }
  if (d.raw === null || d.raw === undefined) {
    out.push(h("h2", {}, "Binary frame (hex)"), h("pre", { class: "raw" }, d.raw_hex || ""));
  } else {
    out.push(h("h2", {}, d.pretty !== null ? "Message (laid out; every token as sent)" : "Message (not JSON: as sent)"),
      h("pre", { class: "pretty" }, show(d.pretty ?? d.raw, true)),
      h("details", {}, h("summary", {}, "exactly as received"), h("pre", { class: "raw" }, show(d.raw, true))));
  }
  return out;
}

async function sessionView(id, params) {
  const expr = params.q || "";
  const detail = h("div", { class: "detail", id: "detail" }, h("p", { class: "mute" }, "Click a frame for its exact text."));
  let diagram;
  const href = (seq) => `#/session/${id}?seq=${seq}` + (expr ? `&q=${enc(expr)}` : "");
  const showFrame = async (f) => {
    history.replaceState(null, "", href(f.seq));
    try {
      const d = await api(`/api/sessions/${id}/frames/${f.seq}` + (expr ? `?q=${enc(expr)}` : ""));
      detail.replaceChildren(h("h2", {}, `Frame #${d.seq}`), ...frameDetail(d, { pairHref: href }));
      for (const a of detail.querySelectorAll("a")) {
        a.addEventListener("click", (e) => { e.preventDefault(); diagram.select(Number(a.textContent.slice(1)), true); });
      }
    } catch (err) {
      detail.replaceChildren(failure(err));
    }
  };
  diagram = new Diagram({ onSelect: showFrame });
  const want = params.seq !== undefined ? Number(params.seq) : null;
  const q = expr ? `&q=${enc(expr)}` : "";
  let page;
  if (want !== null) page = await api(`/api/sessions/${id}/frames?after=${Math.max(-1, want - 200)}&limit=1000${q}`);
  else page = await api(`/api/sessions/${id}/frames?limit=1000${q}`);
  const s = page.session;
  if (s.live && want === null && page.more) page = await api(`/api/sessions/${id}/frames?tail=1000${q}`);
  diagram.add(page.frames);
  const meta = h("p", { class: "mute", id: "meta" });
  const setMeta = (s) => {
    meta.replaceChildren(
      `${s.subprotocol || "no subprotocol"} · from ${showText(s.remote_addr || "?")} · started ${s.started_at} · `,
      s.live ? h("span", { class: "badge live" }, "live") : `ended ${s.ended_at}`,
      s.close_code !== null && s.close_code !== undefined ? ` · close ${s.close_code}` : "",
      s.closed_by ? ` by ${s.closed_by}` : "", s.error ? h("span", { class: "bad" }, ` · ${showText(s.error)}`) : "");
  };
  setMeta(s);
  const follow = h("input", { type: "checkbox", id: "follow", checked: s.live && want === null });
  const more = h("button", { type: "button", id: "more", hidden: !page.more }, "load more");
  more.addEventListener("click", async () => {
    const next = await api(`/api/sessions/${id}/frames?after=${diagram.last}&limit=1000${q}`);
    diagram.add(next.frames);
    more.hidden = !next.more;
  });
  const highlight = h("form", { class: "filters" },
    h("input", { name: "q", class: "expr", value: expr, placeholder: "highlight frames matching an expression" }),
    h("button", { type: "submit" }, "Highlight"));
  highlight.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = new FormData(highlight).get("q");
    location.hash = `#/session/${id}` + (v ? `?q=${enc(v)}` : "");
  });
  $main.replaceChildren(
    h("h1", {}, `Session ${id} · `, s.charge_point_id),
    meta,
    h("div", { class: "tools" }, h("label", {}, follow, " follow live"), highlight, more,
      h("span", { class: "mute", id: "nframes" }, plural(s.frames, "frame"))),
    h("div", { class: "split" }, diagram.el, detail));
  if (want !== null) diagram.select(want, true);
  else if (follow.checked) diagram.follow();
  if (s.live) {
    live(`/api/live?session=${id}&after=${diagram.last}`, {
      frames: (p) => {
        diagram.add(p.frames);
        setMeta(p.session);
        document.getElementById("nframes").textContent = plural(diagram.frames.size, "frame") + " shown";
        if (follow.checked) diagram.follow();
      },
    });
  }
}

// ------------------------------------------------------------------ runs

async function runsView() {
  const runs = await api("/api/runs");
  const rows = runs.map((r) => h("tr", { "data-run": r.id },
    h("td", { class: "n" }, link(`#/run/${r.id}`, String(r.id))),
    h("td", {}, r.kind),
    h("td", { class: "mono" }, r.started_at),
    h("td", { class: "mono" }, r.kind === "compare" ? `${showText(r.baseline)} → ${showText(r.candidate || r.target)}` : r.target),
    h("td", { class: "n" }, String(r.sessions)),
    h("td", { class: "n" }, String(r.messages)),
    h("td", { class: "n" }, r.diffs ? h("span", { class: "bad" }, String(r.diffs)) : h("span", { class: "ok" }, "0")),
    h("td", { class: "n" }, String(r.exit_code))));
  $main.replaceChildren(h("h1", {}, "Runs"),
    runs.length ? h("table", { id: "runs" }, h("thead", {}, h("tr", {},
      ["run", "kind", "started (UTC)", "against", "sessions", "messages", "differences", "exit"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows)) : h("p", { class: "mute" }, "No runs in this capture yet: ocpp-replay replay or compare stores them."));
}

function pct(a, b) {
  return b ? `${a} of ${b} (${((100 * a) / b).toFixed(a === b ? 0 : 1)} %)` : `${a}`;
}

function coverageTable(runId, cov) {
  const head = h("tr", {}, h("th", {}, "direction"), h("th", {}, "action"), cov.versions.map((v) => h("th", { class: "n" }, `OCPP ${v}`)));
  const rows = cov.rows.map((r) => h("tr", {}, h("td", {}, r.direction), h("td", {}, r.action), r.cells.map((c) => {
    if (!c.known) return h("td", { class: "n none" });
    if (c.differences) {
      return h("td", { class: "n badc" }, link(`#/run/${runId}?action=${enc(r.action)}`,
        `${plural(c.exchanges, "exchange")} · ${plural(c.differences, "difference")}`));
    }
    if (c.exchanges) return h("td", { class: "n hit" }, link(`#/sessions?action=${enc(r.action)}`, plural(c.exchanges, "exchange")));
    return h("td", { class: "n none" }, "—");
  })));
  return h("table", { class: "cov", id: "coverage" }, h("thead", {}, head), h("tbody", {}, rows));
}

async function runView(id, params) {
  const data = await api(`/api/runs/${id}`);
  const run = data.run;
  const groups = params.action ? data.groups.filter((g) => g.action === params.action) : data.groups;
  const groupRows = groups.map((g) => {
    let triage;
    if (g.in_rules) triage = h("span", { class: "badge" }, "in the rules file");
    else if (!g.ruleable) triage = h("span", { class: "mute", title: "only differences at a payload path can be ignored by a rule" }, "no path rule");
    else triage = h("button", { type: "button", class: "noise", onclick: () => openTriage(id, g, data) }, "mark as expected noise");
    const shown = g.examples.slice(0, 8);
    return h("tr", { class: "group", "data-key": showText(g.key) },
      h("td", {}, g.action || "(connection)"),
      h("td", {}, g.message),
      h("td", {}, h("code", {}, g.path || "(message)")),
      h("td", {}, h("span", { class: "badge" + (g.kind === "schema" || g.kind === "timeout" ? " bad" : "") }, g.kind)),
      h("td", { class: "n" }, String(g.count)),
      h("td", { class: "n" }, pct(g.messages, g.compared)),
      h("td", {}, plural(g.sessions.length, "session"), h("br"), h("span", { class: "mute" }, g.charge_points.slice(0, 6).join(", "),
        g.charge_points.length > 6 ? ` +${g.charge_points.length - 6}` : "")),
      h("td", { class: "examples" }, shown.map((x, i) => [i ? " " : "",
        link(`#/run/${id}/diff?session=${x.session_id}&seq=${x.seq ?? ""}`, `s${x.session_id} #${x.seq ?? "–"}`)]),
      g.examples.length > shown.length ? ` +${g.count - shown.length}` : "",
      h("div", { class: "mute" }, "expected ", h("code", {}, shown[0]?.expected ?? ""), " · actual ", h("code", {}, shown[0]?.actual ?? ""))),
      h("td", {}, triage));
  });
  const against = run.kind === "compare" ? `${showText(run.baseline)} (baseline) → ${showText(run.target)} (candidate)` : `replay against ${showText(run.target)}`;
  $main.replaceChildren(
    h("h1", {}, `Run ${id} · ${run.kind}`),
    h("p", { class: "mute" }, against, ` · ${run.started_at} → ${run.ended_at} · ${plural(run.sessions, "session")} · ${plural(run.messages, "message")}`),
    h("p", {}, run.differences ? h("b", { class: "bad" }, plural(run.differences, "difference")) : h("b", { class: "ok" }, "no differences"),
      ` in ${plural(data.groups.length, "group")}. Rules file: `, h("code", {}, data.rules)),
    h("h2", {}, "Differences by action, path and kind"),
    params.action ? h("p", {}, `Only ${showText(params.action)} · `, link(`#/run/${id}`, "all groups")) : "",
    groups.length ? h("table", { id: "groups" }, h("thead", {}, h("tr", {},
      ["action", "message", "path", "kind", "count", "rate (differed / compared)", "affected", "differences (recording | replay)", "triage"]
        .map((c) => h("th", {}, c)))), h("tbody", {}, groupRows)) : h("p", { class: "ok" }, "Nothing differed."),
    h("h2", {}, "Coverage"),
    h("p", { class: "mute" }, "Exchanges per action and OCPP version; a cell links to its sessions or its differences."),
    coverageTable(id, data.coverage));
}

function diffLines(text) {
  return text.replace(/\n$/, "").split("\n").map((line) => {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    return h("span", { class: cls }, line, document.createTextNode("\n"));
  });
}

async function openTriage(runId, group, data) {
  let preview;
  try {
    preview = await api("/api/triage/preview", { run: runId, key: group.key });
  } catch (err) {
    $dialog.replaceChildren(failure(err), h("button", { onclick: () => $dialog.close() }, "Close"));
    $dialog.showModal();
    return;
  }
  const save = h("button", { class: "primary", id: "save-rule", type: "button" }, "Save to the rules file");
  const status = h("div");
  save.addEventListener("click", async () => {
    try {
      const saved = await api("/api/triage/save", { run: runId, key: group.key, base: preview.base });
      const target = data.run.kind === "compare" ? `--baseline ${data.run.baseline} --candidate ${data.run.target}` : `--target ${data.run.target}`;
      const cmd = `ocpp-replay ${data.run.kind === "compare" ? "compare" : "replay"} --db ${data.db} ${target} --rules ${saved.path}`;
      status.replaceChildren(h("p", { class: "ok", id: "saved" }, "Written. A re-run with this file no longer reports it:"),
        h("pre", {}, cmd));
      save.remove();
    } catch (err) {
      status.replaceChildren(failure(err));
    }
  });
  $dialog.replaceChildren(
    h("h2", {}, "Mark as expected noise"),
    h("p", {}, `${showText(group.action)} ${group.message}, `, h("code", {}, group.path), `: ${group.kind}, ${pct(group.messages, group.compared)}.`),
    h("p", {}, "This change to ", h("code", {}, preview.path), " ignores the path from now on:"),
    h("pre", { class: "diff", id: "rule-diff" }, diffLines(preview.diff)),
    status,
    h("div", { class: "tools" }, save, h("button", { type: "button", onclick: () => { $dialog.close(); render(); } }, "Close")));
  $dialog.showModal();
}

function sidePane(label, sub) {
  return h("div", { class: "side" }, h("h2", {}, label), sub ? h("p", { class: "mute" }, sub) : "");
}

async function diffView(runId, params) {
  const sid = Number(params.session);
  const seq = params.seq === "" || params.seq === undefined ? null : Number(params.seq);
  const [data, diffs] = await Promise.all([
    api(`/api/runs/${runId}`),
    api(`/api/runs/${runId}/differences?session=${sid}&seq=${seq ?? ""}`),
  ]);
  const run = data.run;
  const panes = [];
  for (const [i, side] of run.sides.entries()) {
    const role = i === 0 ? "expected" : "actual";
    const detail = h("div", { class: "detail" }, h("p", { class: "mute" }, "Click a frame for its exact text."));
    let frames;
    let fetchOne;
    let sub;
    if (side === "recording") {
      frames = (await api(`/api/sessions/${sid}/frames?after=${Math.max(-1, (seq ?? 0) - 200)}&limit=1000`)).frames;
      fetchOne = (f) => api(`/api/sessions/${sid}/frames/${f.seq}`);
      sub = `the capture, session ${sid}`;
    } else {
      frames = (await api(`/api/runs/${runId}/sessions/${sid}/frames?side=${side}`)).frames;
      fetchOne = (f) => api(`/api/runs/${runId}/sessions/${sid}/frames/${f.seq}?side=${side}`);
      sub = side === "baseline" ? run.baseline : run.target;
    }
    const diagram = new Diagram({
      onSelect: async (f) => {
        try {
          const d = await fetchOne(f);
          detail.replaceChildren(h("h2", {}, `Frame #${d.seq}`), ...frameDetail(d));
        } catch (err) {
          detail.replaceChildren(failure(err));
        }
      },
    });
    diagram.add(frames);
    diagram.el.dataset.side = side;
    let target = null;
    if (seq !== null) {
      if (side === "recording") target = seq;
      else {
        const hit = frames.find((f) => f.recorded_seq === seq && f.direction === "to_cp")
          || frames.find((f) => f.recorded_seq === seq);
        target = hit ? hit.seq : null;
      }
    }
    const pane = sidePane(`${role}: ${side}`, sub);
    pane.append(diagram.el, detail);
    panes.push([pane, diagram, target]);
  }
  const list = h("table", { id: "diffs-here" }, h("thead", {}, h("tr", {}, ["action", "kind", "path", "expected", "actual"].map((c) => h("th", {}, c)))),
    h("tbody", {}, diffs.map((d) => h("tr", {}, h("td", {}, d.action ?? ""), h("td", {}, d.kind), h("td", {}, h("code", {}, d.path || "(message)")),
      h("td", { class: "exp" }, h("pre", {}, show(d.expected, true))), h("td", { class: "act" }, h("pre", {}, show(d.actual, true)))))));
  $main.replaceChildren(
    h("h1", {}, `Run ${runId} · session ${sid} · recorded frame #${seq ?? "–"}`),
    h("p", {}, link(`#/run/${runId}`, "← the run's differences"), " · ", link(`#/session/${sid}${seq !== null ? `?seq=${seq}` : ""}`, "the session in the capture")),
    list,
    h("div", { class: "split two" }, panes.map(([p]) => p)));
  for (const [, diagram, target] of panes) if (target !== null) diagram.select(target, true);
}

async function coverageView(params) {
  const runs = await api("/api/runs");
  if (!runs.length) {
    $main.replaceChildren(h("h1", {}, "Coverage"), h("p", { class: "mute" }, "No runs yet: coverage is per replay or compare run."));
    return;
  }
  const id = params.run ? Number(params.run) : runs[0].id;
  const data = await api(`/api/runs/${id}`);
  const pick = h("select", { onchange: (e) => { location.hash = `#/coverage?run=${e.target.value}`; } },
    runs.map((r) => h("option", { value: r.id, selected: r.id === id }, `run ${r.id} · ${r.kind} · ${showText(r.started_at)}`)));
  $main.replaceChildren(h("h1", {}, "Coverage"), h("p", {}, pick, " ", link(`#/run/${id}`, `run ${id}'s differences`)),
    coverageTable(id, data.coverage));
}

async function rulesView() {
  const r = await api("/api/rules");
  $main.replaceChildren(h("h1", {}, "Rules"), h("p", {}, "Rules file: ", h("code", {}, r.path),
    r.text ? "" : h("span", { class: "mute" }, " (not written yet)")),
    r.error ? h("div", { class: "error" }, r.error) : "",
    r.text ? h("pre", { id: "rules-text" }, show(r.text, true)) : "");
}

// ------------------------------------------------------------------ start

api("/api/info").then((info) => {
  document.getElementById("capture").replaceChildren(show(`${info.db} · read-only`));
}).catch(() => {});
window.addEventListener("hashchange", render);
render();
