// dicomproxy status page: polls /api/status and renders it (no build step).
// A bearer token, when the console needs one, is given in the address: /#token=TOKEN
"use strict";
(function () {
  const POLL_MS = 2000;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  let chart = null;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells, attrs) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
    return tr;
  }
  function fill(id, rows) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(...rows);
  }
  function mb(bytes) { return (bytes / 1e6).toFixed(1); }
  function keys(job) { return job.keys ? Object.entries(job.keys).map(([k, v]) => k + "=" + v).join(" ") : ""; }
  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + h + "h " + m + "m";
  }

  function render(st) {
    document.body.classList.toggle("noident", !st.show_identifiers);
    document.getElementById("ae").textContent = st.ae_title + (st.hospital ? " · " + st.hospital : "");
    document.getElementById("version").textContent = st.version;
    document.getElementById("uptime").textContent = duration(st.uptime);
    const ready = document.getElementById("ready");
    ready.textContent = st.ready ? "是 yes" : "否 no";
    ready.className = st.ready ? "ok" : "bad";

    fill("running", st.running.map(j => {
      const done = j.completed + j.warning + j.failed;
      const p = el("progress"); p.max = Math.max(j.expected || 0, done, 1); p.value = done;
      const td = el("td"); td.appendChild(p); td.appendChild(el("span", " " + done + "/" + (j.expected || "?")));
      return row([j.id, j.kind, j.calling_ae, j.destination, td, j.failed, mb(j.bytes), el("td", keys(j), "ident")],
                 { "data-job-id": j.id, "data-outcome": "running" });
    }));
    document.getElementById("running-empty").hidden = st.running.length > 0;

    fill("recent", st.recent.map(j => row(
      [j.id, j.kind, j.calling_ae, j.destination, el("td", j.outcome, j.outcome), j.completed + j.warning,
       j.failed, j.seconds, j.mb_per_s === null ? "" : j.mb_per_s, (j.ended || "").slice(0, 19).replace("T", " "),
       el("td", keys(j), "ident")],
      { "data-job-id": j.id, "data-outcome": j.outcome })));

    document.getElementById("push-section").hidden = !st.push;
    if (st.push) fill("push", st.push.map(p => row(
      [p.destination, p.queued, p.running, p.waiting, p.committing, p.done, p.recheck, el("td", p.failed, p.failed ? "bad" : ""), p.dropped,
       el("td", p.held ? "是 yes" : "", p.held ? "bad" : ""), corrections(p.corrections)],
      { "data-destination": p.destination })));

    function corrections(c) {  // corrections after delivery by state (docs/identity.md)
      const text = c ? Object.entries(c).filter(([, n]) => n).map(([s, n]) => s + " " + n).join(", ") : "";
      return el("td", text, c && (c.warned || c.failed) ? "bad" : "");
    }

    const cs = st.corrections || [];  // a node without push: corrections after delivery of their own
    document.getElementById("corrections-section").hidden = cs.length === 0;
    fill("corrections", cs.map(c => row(
      [c.destination, el("td", c.warned, c.warned ? "bad" : ""), c.due, c.running, c.done,
       el("td", c.failed, c.failed ? "bad" : "")], { "data-destination": c.destination })));

    const bf = st.backfill;
    document.getElementById("backfill-section").hidden = !(bf && (bf.left || bf.done));
    if (bf) fill("backfill", [row(
      [bf.queued, bf.running, bf.done, el("td", bf.failed, bf.failed ? "bad" : ""), bf.left, bf.last_hour,
       bf.eta_seconds === null ? "?" : (bf.eta_seconds / 3600).toFixed(1) + " h",
       el("td", bf.paused ? "是 yes" : "", bf.paused ? "bad" : "")], { "data-lane": "backfill" })]);

    const bw = st.bandwidth || [];
    const cap = v => v === null ? "不限 no cap" : String(v);
    document.getElementById("bandwidth-section").hidden = bw.length === 0;
    fill("bandwidth", bw.map(b => row(
      [b.destination, cap(b.mbps), b.rule, b.nodes, cap(b.node_mbps),
       b.next_change ? b.next_change.at.replace("T", " ") : "—", b.next_change ? cap(b.next_change.mbps) : ""],
      { "data-destination": b.destination })));

    const commits = st.commitment || [];
    document.getElementById("commitment-section").hidden = commits.length === 0;
    fill("commitment", commits.map(c => row(
      [c.destination, c.pending, c.committed, el("td", c.failed, c.failed ? "bad" : ""),
       el("td", c.unanswered, c.unanswered ? "bad" : "")], { "data-destination": c.destination })));

    const runs = st.reconcile || [];
    document.getElementById("reconcile-section").hidden = runs.length === 0;
    fill("reconcile", runs.map(r => row(
      [r.destination, (r.ended || "").slice(0, 19).replace("T", " "), r.studies, r.complete,
       el("td", r.missing_studies, r.missing_studies ? "bad" : ""), el("td", r.missing_instances, r.missing_instances ? "bad" : ""),
       r.extra_studies, r.not_in_pacs, r.uncommitted, r.unknown, r.queued], { "data-destination": r.destination })));

    fill("assocs", st.associations.map(a => row([a.calling_ae, a.address, a.via])));
    fill("checks", st.checks.map(c => row([c.name, el("td", c.ok ? "正常 OK" : "失败 FAIL", c.ok ? "ok" : "bad"), c.detail],
                                          { "data-check": c.name, "data-ok": c.ok })));
    fill("errors", st.errors.map(e => row([e.time.slice(0, 19).replace("T", " "), e.where, e.message])));

    const xs = st.throughput.map(p => Date.parse(p.minute) / 1000);
    const data = [xs, st.throughput.map(p => p.instances), st.throughput.map(p => p.bytes / 1e6)];
    if (window.uPlot) {
      if (!chart) {
        chart = new uPlot({
          width: Math.min(document.getElementById("chart").clientWidth || 900, 1100), height: 200,
          series: [{}, { label: "实例 instances/min", stroke: "#1f6feb" },
                   { label: "MB/min", stroke: "#17803d", scale: "mb" }],
          axes: [{}, {}, { side: 1, scale: "mb", grid: { show: false } }],
        }, data, document.getElementById("chart"));
      } else {
        chart.setData(data);
      }
    }
  }

  async function poll() {
    const conn = document.getElementById("conn");
    try {
      const r = await fetch("api/status", { headers, cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
      conn.textContent = "已连接 Live"; conn.className = "ok";
    } catch (e) {
      conn.textContent = "未连接 Offline (" + e.message + ")"; conn.className = "bad";
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
