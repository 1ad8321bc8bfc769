r"""The status page: one self-contained HTML document (stations have no internet: no CDN, no
library, no font download).  The chart is SVG drawn by the page's own script.

The page builds every element with DOM calls and puts data in as text, never as markup: a
frame's payload comes from the CSMS and must not be able to run script here.  The script and
the style are allowed by their hashes in the Content-Security-Policy, nothing else is.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = r"""
:root { --bg:#f4f6f8; --card:#fff; --ink:#1f2328; --muted:#59636e; --line:#d9dee3;
  --accent:#0969da; --power:#0969da; --current:#d1242f; --offered:#8c959f; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header.top { background:#1f2328; color:#fff; padding:12px 24px; display:flex;
  align-items:center; gap:16px; flex-wrap:wrap; }
header.top h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.2px; }
header.top .station { font-weight:700; }
header.top .spacer { flex:1; }
.live { font-size:13px; display:flex; align-items:center; gap:6px; color:#d0d7de; }
.live .dot { width:9px; height:9px; border-radius:50%; background:#8c959f; }
.live.on .dot { background:#2da44e; box-shadow:0 0 0 3px rgba(45,164,78,.25); }
main { max-width:1240px; margin:0 auto; padding:20px 24px 40px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:16px 20px; margin-bottom:18px; }
.card h2 { font-size:17px; margin:0; }
.card-head { display:flex; align-items:center; gap:12px; flex-wrap:wrap; margin-bottom:12px; }
.card-head .sub { color:var(--muted); font-size:13px; }
.link-grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(190px,1fr));
  gap:10px 24px; }
.link-grid .wide { grid-column:span 2; }
dl { margin:0; }
.kv dt, .facts dt { color:var(--muted); font-size:12px; text-transform:uppercase;
  letter-spacing:.5px; }
.kv dd, .facts dd { margin:0 0 2px; font-weight:600; overflow-wrap:anywhere; }
.kv dd.small { font-weight:500; font-size:13px; }
.pill { display:inline-block; padding:2px 12px; border-radius:999px; font-weight:650;
  font-size:14px; background:#eaeef2; color:#424a53; }
.pill.s-Available { background:#dafbe1; color:#116329; }
.pill.s-Preparing, .pill.s-Occupied, .pill.s-Finishing { background:#ddf4ff; color:#0550ae; }
.pill.s-Charging { background:#1a7f37; color:#fff; }
.pill.s-SuspendedEV, .pill.s-SuspendedEVSE { background:#fff1c2; color:#7d4e00; }
.pill.s-Reserved { background:#fbefff; color:#6639ba; }
.pill.s-Faulted { background:#ffebe9; color:#a40e26; }
.pill.l-connected { background:#dafbe1; color:#116329; }
.pill.l-connecting { background:#fff1c2; color:#7d4e00; }
.pill.l-disconnected { background:#ffebe9; color:#a40e26; }
.evse-body { display:grid; grid-template-columns:minmax(260px,330px) 1fr; gap:20px; }
@media (max-width: 820px) { .evse-body { grid-template-columns:1fr; } }
.facts { display:grid; grid-template-columns:1fr 1fr; gap:8px 18px; align-content:start; }
.facts .wide { grid-column:1 / -1; }
.facts dd.big { font-size:22px; font-weight:650; }
.fault-list { color:#a40e26; }
figure.chart { margin:0; }
figure.chart svg { width:100%; height:auto; display:block; }
.chart .grid { stroke:#eaeef2; stroke-width:1; }
.chart .axis { stroke:#8c959f; stroke-width:1; }
.chart text { font-size:11px; fill:#59636e; }
.chart text.empty { font-size:14px; }
.chart text.unit { font-weight:600; }
.chart .line-power { fill:none; stroke:var(--power); stroke-width:2.2; }
.chart .line-current { fill:none; stroke:var(--current); stroke-width:1.8; }
.chart .line-offered { fill:none; stroke:var(--offered); stroke-width:1.5;
  stroke-dasharray:5 4; }
.chart .area-power { fill:rgba(9,105,218,.09); stroke:none; }
figcaption { display:flex; gap:18px; font-size:12px; color:var(--muted); margin-top:4px;
  flex-wrap:wrap; }
.key { display:inline-block; width:18px; height:3px; vertical-align:middle; margin-right:5px; }
.key.power { background:var(--power); }
.key.current { background:var(--current); }
.key.offered { background:repeating-linear-gradient(90deg,var(--offered) 0 5px,
  transparent 5px 9px); }
.key.schedule { background:#8250df; }
.bench { margin-top:14px; padding-top:12px; border-top:1px dashed var(--line); display:flex;
  flex-wrap:wrap; gap:8px 10px; align-items:center; }
.bench .label { font-size:12px; color:var(--muted); text-transform:uppercase;
  letter-spacing:.5px; margin-right:4px; }
.bench .group { display:flex; gap:6px; align-items:center; margin-right:12px; }
button { font:inherit; font-size:14px; padding:5px 12px; border-radius:6px; cursor:pointer;
  border:1px solid #c4ccd4; background:#f6f8fa; color:var(--ink); }
button:hover { background:#eef1f4; }
button.primary { background:#1f883d; border-color:#1a7f37; color:#fff; }
button.primary:hover { background:#1a7f37; }
button.danger { color:#a40e26; }
button:disabled { opacity:.45; cursor:default; }
button.busy { opacity:.6; cursor:progress; }
input, select { font:inherit; font-size:14px; padding:4px 8px; border-radius:6px;
  border:1px solid #c4ccd4; background:#fff; }
input.tag { width:150px; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
.toast { font-size:13px; color:var(--muted); min-height:1em; }
.toast.err { color:#a40e26; }
table { width:100%; border-collapse:collapse; font-size:13px; table-layout:fixed; }
th { text-align:left; color:var(--muted); font-weight:600; font-size:12px;
  text-transform:uppercase; letter-spacing:.5px; border-bottom:1px solid var(--line);
  padding:4px 8px; }
td { padding:3px 8px; border-bottom:1px solid #f0f2f4; vertical-align:top;
  white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
th.c-time { width:112px; } th.c-dir { width:96px; } th.c-kind { width:104px; }
th.c-action { width:180px; }
td.payload { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
  font-size:12px; color:#424a53; }
td.dir-out { color:#0550ae; font-weight:600; }
td.dir-in { color:#6639ba; font-weight:600; }
.frames-box { max-height:360px; overflow:auto; }
pre.config { margin:8px 0 0; font-size:12px; background:#f6f8fa; border-radius:6px;
  padding:10px; max-height:420px; overflow:auto; }
summary { cursor:pointer; font-weight:600; }
footer { color:var(--muted); font-size:12px; text-align:center; padding-bottom:24px; }
footer a { color:var(--accent); }
.sc { margin-top:14px; padding-top:12px; border-top:1px solid var(--line); display:grid;
  grid-template-columns:minmax(200px,260px) 1fr; gap:8px 20px; }
@media (max-width: 820px) { .sc { grid-template-columns:1fr; } }
.sc h3 { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.5px;
  margin:0 0 6px; font-weight:600; }
.sc .wide { grid-column:1 / -1; }
ul.limits { list-style:none; margin:0; padding:0; }
ul.limits li { display:flex; justify-content:space-between; gap:10px; padding:2px 8px;
  border-radius:6px; }
ul.limits li.binding { background:#ddf4ff; font-weight:650; }
ul.limits .tag { font-size:11px; color:#0550ae; text-transform:uppercase; letter-spacing:.5px; }
.chart .line-schedule { fill:none; stroke:#8250df; stroke-width:2.2; }
.chart .area-schedule { fill:rgba(130,80,223,.08); stroke:none; }
.chart .now { stroke:#8250df; stroke-width:1; stroke-dasharray:2 3; }
table.profiles td { white-space:normal; }
.muted { color:var(--muted); font-size:13px; margin:4px 0 0; }
.hidden { display:none !important; }
pre.lcd { display:inline-block; margin:0; padding:10px 14px; border-radius:6px;
  background:#23331f; color:#c6f7a8; font:15px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;
  white-space:pre; border:3px solid #3c4a38; }
"""

SCRIPT = r"""
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const tokenQuery = token ? "?token=" + encodeURIComponent(token) : "";
  const authHeaders = token ? { Authorization: "Bearer " + token } : {};
  const SVGNS = "http://www.w3.org/2000/svg";
  const PILOT = { A: "no EV", B: "EV connected", C: "EV charging", D: "charging, ventilated",
    E: "error: short", F: "error / not available" };
  const MAX_FRAMES = 100;
  const MAX_POINTS = 1440;
  const TIME_STEPS = [2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const series = {};
  const cards = {};
  let view = null;

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  function s(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(e, text) { if (e.textContent !== text) e.textContent = text; }
  const dash = "\u2013";
  function fmtPower(w) {
    if (w === null || w === undefined) return dash;
    return Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : Math.round(w) + " W";
  }
  function fmtEnergy(wh) {
    if (wh === null || wh === undefined) return dash;
    return wh >= 1000 ? (wh / 1000).toFixed(3) + " kWh" : wh.toFixed(1) + " Wh";
  }
  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return dash;
    sec = Math.max(0, Math.floor(sec));
    const hh = Math.floor(sec / 3600), mm = Math.floor(sec / 60) % 60, ss = sec % 60;
    return hh ? hh + ":" + two(mm) + ":" + two(ss) : mm + ":" + two(ss);
  }
  function two(n) { return String(n).padStart(2, "0"); }
  function fmtWhen(iso) {
    if (!iso) return dash;
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
      two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }
  function fmtClock(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return iso || "";
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
  }
  function niceMax(v, floor) {
    v = Math.max(v, floor);
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // ------------------------------------------------------------------ header and link
  function renderLink(v) {
    const l = v.link;
    setText(document.getElementById("station"), v.station);
    document.title = "cp-agent \u00b7 " + v.station;
    const pill = document.getElementById("link-state");
    pill.className = "pill l-" + l.state;
    setText(pill, l.state);
    const facts = {
      "link-url": l.url, "link-version": l.version ? "OCPP " + l.version :
        "offered " + l.offered_versions.join(", "),
      "link-profile": String(l.security_profile) + [" (no auth)", " (basic auth)",
        " (TLS + basic auth)"][l.security_profile],
      "link-since": l.connected_since ? fmtWhen(l.connected_since) : dash,
      "link-registration": l.registration || dash,
      "link-outbox": l.outbox + (l.outbox === 1 ? " message" : " messages"),
      "link-error": l.last_error || "none",
      "station-faults": v.station_faults.length ? v.station_faults.join(", ") : "none",
    };
    for (const [id, text] of Object.entries(facts)) setText(document.getElementById(id), text);
    setText(document.getElementById("agent-version"), "cp-agent " + v.agent_version);
  }

  // ------------------------------------------------------------------ EVSE cards
  async function control(id, cmd, args, button) {
    const toast = cards[id].toast;
    const label = button ? button.textContent : cmd;
    if (button) button.classList.add("busy");
    toast.className = "toast";
    setText(toast, label + "\u2026");
    try {
      const r = await fetch("api/control", { method: "POST", headers: Object.assign(
        { "Content-Type": "application/json" }, authHeaders),
        body: JSON.stringify({ cmd: cmd, args: args }) });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        toast.className = "toast err";
        setText(toast, body.error || ("HTTP " + r.status));
      } else {
        let text = label + ": done";
        if (body.tap) {  // what became of the card: accepted, rejected (why), ignored, ...
          text = label + ": " + body.tap.result + (body.tap.reason ? " (" + body.tap.reason +
            ")" : "");
          if (body.tap.result === "rejected") toast.className = "toast err";
        }
        if (body.warning) text += " \u2013 " + body.warning;
        if (body.settled === false) text += " (the agent is still reacting)";
        setText(toast, text);
      }
    } catch (err) {
      toast.className = "toast err";
      setText(toast, String(err));
    } finally {
      if (button) button.classList.remove("busy");
    }
  }

  function fact(label, key, extra) {
    const dd = h("dd", { "data-role": key, class: (extra && extra.dd) || "" }, dash);
    const wrap = h("div", { class: (extra && extra.wrap) || "" }, h("dt", {}, label), dd);
    return [wrap, dd];
  }

  function makeCard(e, kinds) {
    const id = e.evse;
    const f = {};
    const facts = h("dl", { class: "facts" });
    for (const [label, key, extra] of [
      ["Power", "power", { dd: "big" }], ["Session energy", "energy", { dd: "big" }],
      ["Pilot", "pilot"], ["Contactor", "contactor"],
      ["Offered current", "offered", { wrap: "wide" }],
      ["Duration", "duration"], ["Token", "token"],
      ["Meter register", "meter"], ["Transaction", "tx"],
      ["Faults", "faults", { wrap: "wide" }]]) {
      const [wrap, dd] = fact(label, key, extra);
      facts.append(wrap);
      f[key] = dd;
    }
    const svg = s("svg", { id: "chart-" + id, viewBox: "0 0 600 240", "data-points": "0",
      role: "img", "aria-label": "power and current over the session" });
    const caption = h("figcaption", {},
      h("span", {}, h("span", { class: "key power" }), "power (kW)"),
      h("span", {}, h("span", { class: "key current" }), "current (A, highest phase)"),
      h("span", {}, h("span", { class: "key offered" }), "offered (A)"),
      f.chartNote = h("span", { "data-role": "chart-note" }, ""));
    const status = h("span", { class: "pill", id: "status-" + id, "data-role": "status" },
      dash);
    const sub = h("span", { class: "sub", "data-role": "status-detail" }, "");
    const tag = h("input", { class: "tag", id: "tag-" + id, value: "04A2B3C4D5E680",
      "aria-label": "card UID" });
    const fault = h("select", { id: "fault-" + id, "aria-label": "fault kind" },
      ...kinds.map((k) => h("option", { value: k }, k)));
    const btn = (bid, text, cls, fn) => {
      const b = h("button", { id: bid + "-" + id, class: cls || "", type: "button" }, text);
      b.addEventListener("click", () => fn(b));
      return b;
    };
    const toast = h("span", { class: "toast", "aria-live": "polite" }, "");
    const bench = h("div", { class: "bench hidden", "data-role": "bench" },
      h("span", { class: "label" }, "Bench"),
      h("span", { class: "group" },
        btn("btn-plug", "Plug in", "primary", (b) => control(id, "plug", { evse: id }, b)),
        btn("btn-pause", "EV pause (B)", "", (b) =>
          control(id, "ev", { evse: id, state: "B" }, b)),
        btn("btn-resume", "EV resume (C)", "", (b) =>
          control(id, "ev", { evse: id, state: "C" }, b)),
        btn("btn-unplug", "Unplug", "", (b) => control(id, "unplug", { evse: id }, b))),
      h("span", { class: "group" }, tag,
        btn("btn-tap", "Tap card", "primary", (b) =>
          control(id, "tap", { token: tag.value.trim(), evse: id }, b))),
      h("span", { class: "group" }, fault,
        btn("btn-fault", "Inject fault", "danger", (b) =>
          control(id, "fault", { evse: id, kind: fault.value }, b)),
        btn("btn-clear", "Clear", "", (b) =>
          control(id, "clear-fault", { evse: id, kind: fault.value }, b))),
      toast);
    const limits = h("ul", { class: "limits", id: "limits-" + id, "data-role": "limits" });
    const sched = s("svg", { id: "schedule-" + id, viewBox: "0 0 600 170", "data-periods": "0",
      role: "img", "aria-label": "smart charging schedule of the next hours" });
    const schedNote = h("span", { "data-role": "schedule-note" }, "");
    const profBody = h("tbody", {});
    const profTable = h("table", { class: "profiles", id: "profiles-" + id },
      h("thead", {}, h("tr", {}, ...["Id", "Purpose", "Stack level", "Kind", "Valid",
        "Periods"].map((t) => h("th", {}, t)))), profBody);
    const profEmpty = h("p", { class: "muted" }, "No charging profile installed.");
    const smart = h("div", { class: "sc", "data-role": "smart-charging" },
      h("div", {}, h("h3", {}, "Limit sources now"), limits),
      h("figure", { class: "chart" }, h("h3", {}, "Smart charging schedule (composite)"),
        sched, h("figcaption", {}, h("span", {}, h("span", { class: "key schedule" }),
          "limit (A) the pilot follows: the CSMS's profiles, capped by the external limits " +
          "(site, MQTT) in force now"), schedNote)),
      h("div", { class: "wide" }, h("h3", {}, "Charging profiles"), profTable, profEmpty));
    const root = h("section", { class: "card evse", id: "evse-" + id },
      h("div", { class: "card-head" }, h("h2", {}, "EVSE " + id), status, sub),
      h("div", { class: "evse-body" }, facts, h("figure", { class: "chart" }, svg, caption)),
      smart, bench);
    document.getElementById("evses").append(root);
    const buttons = {};
    for (const b of bench.querySelectorAll("button")) buttons[b.id.replace(/-\d+$/, "")] = b;
    cards[id] = { root, f, svg, status, sub, bench, toast, buttons, limits, sched, schedNote,
      profBody, profTable, profEmpty, profKey: null, schedKey: null };
    return cards[id];
  }

  // ------------------------------------------------------------------ smart charging
  function fmtAmps(a) {
    if (a === null || a === undefined) return dash;
    return (Math.round(a * 10) / 10) + " A";
  }
  function fmtSpan(sec) {
    if (sec >= 3600 && sec % 3600 === 0) return sec / 3600 + " h";
    if (sec >= 60 && sec % 60 === 0) return sec / 60 + " min";
    return sec + " s";
  }

  function renderLimits(c, e) {
    const ul = c.limits;
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    for (const l of e.limits || []) {
      ul.append(h("li", { class: l.binding ? "binding" : "", "data-source": l.source,
        "data-binding": l.binding ? "1" : "0" },
        h("span", {}, l.source, l.binding ? h("span", { class: "tag" }, " \u00b7 binding") :
          null), h("span", {}, fmtAmps(l.limit_a))));
    }
  }

  function drawSchedule(c, sch) {
    const key = JSON.stringify(sch);
    if (key === c.schedKey) return;
    c.schedKey = key;
    const svg = c.sched;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const periods = (sch && sch.periods) || [];
    const W = 600, H = 170, L = 46, R = 16, T = 24, B = 24;
    const pw = W - L - R, ph = H - T - B;
    const dur = (sch && sch.duration_s) || 1;
    const start = sch ? new Date(sch.start) : new Date();
    let top = 0;
    for (const p of periods) top = Math.max(top, p.limit_a);
    const amps = niceMax(top, 10);
    const x = (t) => L + (Math.min(t, dur) / dur) * pw;
    const y = (v) => T + ph - (v / amps) * ph;
    for (let i = 0; i <= 4; i++) {
      const yy = T + ph - (i / 4) * ph;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: yy, y2: yy }));
      svg.append(s("text", { x: L - 6, y: yy + 4, "text-anchor": "end" },
        +(amps * i / 4).toFixed(1) + ""));
    }
    const hours = Math.max(1, Math.round(dur / 3600));
    for (let i = 0; i <= hours; i++) {
      const t = i * 3600;
      const d = new Date(start.getTime() + t * 1000);
      svg.append(s("text", { x: x(t), y: H - 6, "text-anchor": "middle" },
        two(d.getHours()) + ":" + two(d.getMinutes())));
    }
    svg.append(s("text", { class: "unit", x: L - 6, y: T - 12, "text-anchor": "end" }, "A"));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
    if (!periods.length) {
      svg.append(s("text", { class: "empty", x: L + pw / 2, y: T + ph / 2,
        "text-anchor": "middle" }, sch && sch.error ? sch.error : "no schedule"));
    } else {
      let d = "";
      periods.forEach((p, i) => {
        const x0 = x(p.start_s).toFixed(1), yy = y(p.limit_a).toFixed(1);
        d += (i ? " L" + x0 + "," + yy : "M" + x0 + "," + yy);
        const next = i + 1 < periods.length ? periods[i + 1].start_s : dur;
        d += " L" + x(next).toFixed(1) + "," + yy;
        if (x(next) - x(p.start_s) > 34) {
          svg.append(s("text", { x: +x0 + 4, y: +yy - 5 }, fmtAmps(p.limit_a)));
        }
      });
      svg.append(s("path", { class: "area-schedule", d: d + " L" + x(dur).toFixed(1) + "," +
        (T + ph) + " L" + x(periods[0].start_s).toFixed(1) + "," + (T + ph) + " Z" }));
      svg.append(s("path", { class: "line-schedule", d: d }));
    }
    svg.append(s("line", { class: "now", x1: L, x2: L, y1: T, y2: T + ph }));
    svg.setAttribute("data-periods", String(periods.length));
    setText(c.schedNote, sch ? "from " + fmtWhen(sch.start) + ", the next " +
      fmtSpan(dur) : "");
  }

  function renderProfiles(c, e) {
    const profiles = e.profiles || [];
    const key = JSON.stringify(profiles);
    if (key === c.profKey) return;
    c.profKey = key;
    const body = c.profBody;
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const p of profiles) {
      const sch = p.schedules[0] || { periods: [], rate_unit: "A" };
      const periods = sch.periods.map((q) => fmtSpan(q.start_s).replace(/^0 s$/, "0") +
        ": " + q.limit + " " + sch.rate_unit + (q.number_phases ? " (" + q.number_phases +
        " ph)" : "")).join(" \u00b7 ");
      const valid = (p.valid_from || p.valid_to) ? (p.valid_from ? fmtWhen(p.valid_from) :
        "\u2026") + " \u2013 " + (p.valid_to ? fmtWhen(p.valid_to) : "\u2026") : "always";
      const kind = p.kind + (p.recurrency ? " (" + p.recurrency + ")" : "") +
        (sch.start ? ", from " + fmtWhen(sch.start) : "") +
        (sch.duration_s ? ", " + fmtSpan(sch.duration_s) : "");
      body.append(h("tr", { "data-profile-id": String(p.id) },
        h("td", {}, String(p.id)),
        h("td", {}, p.purpose + (p.evse_id === 0 ? " (station)" : "") +
          (p.transaction_id !== null && p.transaction_id !== undefined ?
            ", transaction " + p.transaction_id : "")),
        h("td", {}, String(p.stack_level)), h("td", {}, kind),
        h("td", {}, valid + (p.valid_now ? "" : " (not now)")),
        h("td", {}, periods + (p.schedules.length > 1 ? " (+" + (p.schedules.length - 1) +
          " more)" : ""))));
    }
    c.profTable.classList.toggle("hidden", !profiles.length);
    c.profEmpty.classList.toggle("hidden", !!profiles.length);
  }

  // ------------------------------------------------------------------ the driver's display
  function renderScreen(v) {
    const card = document.getElementById("screen");
    const d = v.display;
    card.classList.toggle("hidden", !d);
    if (!d) return;
    const lines = d.lines.map((l) => String(l).padEnd(d.columns, " ").slice(0, d.columns));
    setText(document.getElementById("screen-lines"), lines.join("\n"));
    setText(document.getElementById("screen-note"), d.columns + " \u00d7 " + d.rows +
      " characters" + (d.messages ? " \u00b7 " + d.messages + " CSMS message" +
        (d.messages === 1 ? "" : "s") : "") + (d.ok ? "" : " \u00b7 not answering: " +
        (d.error || "?")));
  }

  function renderSite(v) {
    const card = document.getElementById("site");
    const site = v.site;
    card.classList.toggle("hidden", !site);
    if (!site) return;
    const mode = document.getElementById("site-mode");
    mode.className = "pill " + (site.fallback ? "s-Faulted" : "s-Available");
    setText(mode, site.mode);
    const grid = site.grid_current_a;
    const shares = Object.entries(site.shares || {}).map(([k, a]) => "EVSE " + k + ": " +
      fmtAmps(a));
    const facts = {
      "site-limit": fmtAmps(site.max_current_a) + " per phase",
      "site-grid": grid ? grid.map(fmtAmps).join(" / ") : (site.grid_meter ?
        "no reading yet" : "no grid meter"),
      "site-headroom": fmtAmps(site.headroom_a),
      "site-fallback": site.fallback ? "ACTIVE: sharing " + fmtAmps(site.fallback_current_a) +
        " (grid meter silent)" : (site.grid_meter ? "standby (" + fmtAmps(
          site.fallback_current_a) + " after " + site.silent_samples + " failed reads; " +
          site.failed_reads + " now)" : "not used (no grid meter)"),
      "site-shares": shares.length ? shares.join(", ") : dash,
    };
    for (const [id, text] of Object.entries(facts)) setText(document.getElementById(id), text);
  }

  function renderEvse(e, v) {
    const c = cards[e.evse] || makeCard(e, v.fault_kinds);
    const f = c.f;
    c.root.setAttribute("data-status", e.connector_status);
    c.status.className = "pill s-" + e.connector_status;
    setText(c.status, e.connector_status);
    const words = v.link.version || v.link.offered_versions[0] || "1.6";
    setText(c.sub, (e.status !== e.connector_status ? "detail: " + e.status + " \u00b7 " : "") +
      "OCPP " + words + " status" + (e.operative ? "" : " \u00b7 inoperative"));
    setText(f.pilot, e.pilot + " \u00b7 " + (PILOT[e.pilot] || "?"));
    setText(f.contactor, e.contactor);
    setText(f.offered, (e.current_limit_a ? e.current_limit_a.toFixed(0) + " A" : "0 A") +
      " on the pilot \u00b7 limit " + e.max_current_a.toFixed(0) + " A by " + e.limit_source);
    setText(f.power, fmtPower(e.power_w));
    const sess = e.session;
    const running = sess && sess.active;
    setText(f.energy, fmtEnergy(running ? e.energy_wh : (sess ? sess.energy_wh : null)));
    setText(f.duration, sess ? fmtDuration(sess.duration_s) + (running ? "" : " (ended)")
      : dash);
    setText(f.token, e.token || (sess && !running && sess.token ? sess.token + " (last)" :
      dash));
    // A bidirectional power stage (V2X): the export register, the EV's battery, the setpoint.
    const x = e.v2x, soc = x && x.ev ? x.ev.soc_percent : null;
    setText(f.meter, fmtEnergy(e.meter_wh) + (x ? " in \u00b7 " + fmtEnergy(e.export_wh) +
      " out \u00b7 EV " + (soc !== null ? soc.toFixed(1) + " %" : dash) + " \u00b7 setpoint " +
      (x.setpoint_w !== null ? fmtPower(x.setpoint_w) : "none") +
      (x.bidirectional ? "" : " (no discharge)") +
      // Reactive power (DER): injected / absorbed vars and cos phi, where the stage says.
      (e.reactive_var !== null && e.reactive_var !== undefined ? " \u00b7 Q " +
        Math.abs(e.reactive_var).toFixed(0) + " var " + (e.reactive_var > 0 ? "absorbed" :
        e.reactive_var < 0 ? "injected" : "") + " \u00b7 PF " + (e.power_factor !== null ?
        e.power_factor.toFixed(3) : dash) : "") : ""));
    setText(f.tx, e.transaction_id !== null && e.transaction_id !== undefined ?
      String(e.transaction_id) : dash);
    setText(f.faults, e.faults.length ? e.faults.join(", ") : "none");
    f.faults.className = e.faults.length ? "fault-list" : "";
    c.bench.classList.toggle("hidden", !v.bench);
    const b = c.buttons;  // what the simulated EV can do from the state it is in
    b["btn-plug"].disabled = e.pilot !== "A";
    b["btn-unplug"].disabled = e.pilot === "A";
    b["btn-pause"].disabled = e.pilot !== "C" && e.pilot !== "D";
    b["btn-resume"].disabled = e.pilot !== "B";
    if (sess && sess.samples) series[e.evse] = { session: sess.id, points: sess.samples };
    else if (!sess) delete series[e.evse];
    else if (!series[e.evse] || series[e.evse].session !== sess.id)
      series[e.evse] = { session: sess.id, points: [] };
    setText(f.chartNote, sess ? (running ? "session running" : "last session (ended)") +
      " \u00b7 every " + sess.interval_s + " s" : "");
    draw(e.evse);
    renderLimits(c, e);
    drawSchedule(c, e.schedule);
    renderProfiles(c, e);
  }

  // ------------------------------------------------------------------ chart
  function draw(id) {
    const svg = cards[id].svg;
    const pts = (series[id] && series[id].points) || [];
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 240, L = 46, R = 40, T = 24, B = 28;
    const pw = W - L - R, ph = H - T - B;
    const tEnd = pts.length ? pts[pts.length - 1][0] : 0;
    const step = TIME_STEPS.find((st) => tEnd <= 5 * st) || 3600 * Math.ceil(tEnd / 18000);
    const ticks = Math.max(4, Math.ceil(tEnd / step));
    const tmax = ticks * step;
    let pMax = 0, aMax = 0;
    for (const p of pts) {
      pMax = Math.max(pMax, p[1] / 1000);
      aMax = Math.max(aMax, p[2], p[3]);
    }
    const kw = niceMax(pMax, 1), amps = niceMax(aMax, 10);
    const x = (t) => L + (t / tmax) * pw;
    const yk = (v) => T + ph - (v / kw) * ph;
    const ya = (v) => T + ph - (v / amps) * ph;
    for (let i = 0; i <= 4; i++) {
      const y = T + ph - (i / 4) * ph;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      svg.append(s("text", { x: L - 6, y: y + 4, "text-anchor": "end" },
        +(kw * i / 4).toFixed(2) + ""));
      svg.append(s("text", { x: W - R + 6, y: y + 4 }, +(amps * i / 4).toFixed(1) + ""));
    }
    for (let i = 0; i <= ticks; i++) {
      const t = step * i;
      svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, fmtDuration(t)));
    }
    svg.append(s("text", { class: "unit", x: L - 6, y: T - 12, "text-anchor": "end" }, "kW"));
    svg.append(s("text", { class: "unit", x: W - R + 6, y: T - 12 }, "A"));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
    if (!pts.length) {
      svg.append(s("text", { class: "empty", x: L + pw / 2, y: T + ph / 2,
        "text-anchor": "middle" }, "No session yet: plug in and tap a card"));
    } else {
      const power = pts.map((p) => x(p[0]).toFixed(1) + "," + yk(p[1] / 1000).toFixed(1));
      const area = "M" + x(pts[0][0]).toFixed(1) + "," + (T + ph) + " L" + power.join(" L") +
        " L" + x(tEnd).toFixed(1) + "," + (T + ph) + " Z";
      svg.append(s("path", { class: "area-power", d: area }));
      const offered = [];
      pts.forEach((p, i) => {
        if (i) offered.push(x(p[0]).toFixed(1) + "," + ya(pts[i - 1][3]).toFixed(1));
        offered.push(x(p[0]).toFixed(1) + "," + ya(p[3]).toFixed(1));
      });
      svg.append(s("polyline", { class: "line-offered", points: offered.join(" ") }));
      svg.append(s("polyline", { class: "line-current", points: pts.map((p) =>
        x(p[0]).toFixed(1) + "," + ya(p[2]).toFixed(1)).join(" ") }));
      svg.append(s("polyline", { class: "line-power", points: power.join(" ") }));
    }
    svg.setAttribute("data-points", String(pts.length));
  }

  function addSample(d) {
    let ser = series[d.evse];
    if (!ser || ser.session !== d.session) ser = series[d.evse] = { session: d.session,
      points: [] };
    ser.points.push(d.point);
    if (ser.points.length > MAX_POINTS) ser.points = ser.points.filter((_, i) => i % 2 === 0);
    if (cards[d.evse]) draw(d.evse);
  }

  // ------------------------------------------------------------------ frames
  function addFrames(d) {
    const body = document.getElementById("frames");
    if (d.reset) while (body.firstChild) body.removeChild(body.firstChild);
    for (const fr of d.frames) {
      const out = fr.direction === "cs->csms";
      const text = JSON.stringify(fr.payload);
      const row = h("tr", {},
        h("td", {}, fmtClock(fr.at)),
        h("td", { class: out ? "dir-out" : "dir-in" }, out ? "\u2192 CSMS" : "\u2190 CSMS"),
        h("td", {}, fr.kind), h("td", {}, fr.action || ""),
        h("td", { class: "payload", title: text }, text));
      body.insertBefore(row, body.firstChild);
    }
    while (body.childNodes.length > MAX_FRAMES) body.removeChild(body.lastChild);
    setText(document.getElementById("frame-count"), body.childNodes.length +
      " most recent, newest first");
  }

  // ------------------------------------------------------------------ stream
  function render(v) {
    view = v;
    renderLink(v);
    renderScreen(v);
    renderSite(v);
    for (const e of v.evses) renderEvse(e, v);
  }

  function connect() {
    const live = document.getElementById("live");
    const es = new EventSource("events" + tokenQuery);
    es.addEventListener("open", () => { live.classList.add("on");
      setText(live.lastChild, "live"); });
    es.addEventListener("error", () => { live.classList.remove("on");
      setText(live.lastChild, "reconnecting\u2026"); });
    es.addEventListener("view", (m) => render(JSON.parse(m.data)));
    es.addEventListener("frames", (m) => addFrames(JSON.parse(m.data)));
    es.addEventListener("sample", (m) => addSample(JSON.parse(m.data)));
  }

  async function loadConfig() {
    try {
      const r = await fetch("config", { headers: authHeaders });
      setText(document.getElementById("config"), r.ok ?
        JSON.stringify(await r.json(), null, 2) : "HTTP " + r.status);
    } catch (err) { setText(document.getElementById("config"), String(err)); }
  }

  for (const a of document.querySelectorAll("a[data-api]")) a.href = a.dataset.api + tokenQuery;
  connect();
  loadConfig();
})();
"""

BODY = r"""
<header class="top">
  <h1>cp-agent &middot; <span class="station" id="station">station</span></h1>
  <span class="pill l-disconnected" id="link-state">&ndash;</span>
  <span class="spacer"></span>
  <span class="live" id="live"><span class="dot"></span><span>connecting&hellip;</span></span>
</header>
<main>
  <section class="card" id="link">
    <div class="card-head"><h2>CSMS link</h2></div>
    <dl class="kv link-grid">
      <div class="wide"><dt>URL</dt><dd class="small" id="link-url">&ndash;</dd></div>
      <div><dt>OCPP version</dt><dd id="link-version">&ndash;</dd></div>
      <div><dt>Security profile</dt><dd id="link-profile">&ndash;</dd></div>
      <div><dt>Connected since</dt><dd id="link-since">&ndash;</dd></div>
      <div><dt>Registration</dt><dd id="link-registration">&ndash;</dd></div>
      <div><dt>Outbox</dt><dd id="link-outbox">&ndash;</dd></div>
      <div><dt>Last error</dt><dd class="small" id="link-error">&ndash;</dd></div>
      <div><dt>Station faults</dt><dd id="station-faults">&ndash;</dd></div>
    </dl>
  </section>
  <section class="card hidden" id="screen">
    <div class="card-head"><h2>Driver's display</h2><span class="sub" id="screen-note"></span>
    </div>
    <pre class="lcd" id="screen-lines" aria-label="what the driver's display shows"></pre>
  </section>
  <section class="card hidden" id="site">
    <div class="card-head"><h2>Site load management</h2>
      <span class="pill" id="site-mode">&ndash;</span></div>
    <dl class="kv link-grid">
      <div><dt>Connection limit</dt><dd id="site-limit">&ndash;</dd></div>
      <div><dt>Grid current</dt><dd id="site-grid">&ndash;</dd></div>
      <div><dt>Headroom</dt><dd id="site-headroom">&ndash;</dd></div>
      <div class="wide"><dt>Fallback</dt><dd class="small" id="site-fallback">&ndash;</dd></div>
      <div class="wide"><dt>Shares</dt><dd id="site-shares">&ndash;</dd></div>
    </dl>
  </section>
  <div id="evses"></div>
  <section class="card">
    <div class="card-head"><h2>OCPP frames</h2><span class="sub" id="frame-count"></span></div>
    <div class="frames-box">
      <table>
        <thead><tr><th class="c-time">Time</th><th class="c-dir">Direction</th>
          <th class="c-kind">Kind</th><th class="c-action">Action</th><th>Payload</th></tr>
        </thead>
        <tbody id="frames"></tbody>
      </table>
    </div>
  </section>
  <section class="card">
    <details><summary>Configuration (secrets removed)</summary>
      <pre class="config" id="config">loading&hellip;</pre></details>
  </section>
</main>
<footer><span id="agent-version">cp-agent</span> &middot;
  <a data-api="api/status" href="api/status">/api/status</a> &middot;
  <a data-api="metrics" href="metrics">/metrics</a></footer>
"""


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>cp-agent</title>
"""

PAGE = (HEAD + "<style>" + STYLE + "</style></head>\n<body>" + BODY
        + "<script>" + SCRIPT + "</script>\n</body></html>\n")

# Only this page's own script and style run; it talks to its own origin and nothing else.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")
