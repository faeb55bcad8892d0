// Nabz nurse station: live tiles over server-sent events, acknowledge and silence.
// Plain JavaScript, no build step. Data is only ever put into the page as text (textContent),
// never as HTML, so nothing a message carries can run as code.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const tz = body.dataset.tz || "UTC";
  const csrfMeta = document.querySelector('meta[name="csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  let staleAfter = parseFloat(body.dataset.stale || "15");
  let offset = 0; // server clock minus this browser's clock, seconds
  let lastMessage = Date.now();
  let connected = false;
  const tiles = new Map(); // patient -> tile data

  const clock = new Intl.DateTimeFormat("en-GB", {
    timeZone: tz, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const serverNow = () => Date.now() / 1000 + offset;
  const hhmmss = (t) => clock.format(new Date(t * 1000));

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function ago(s) {
    s = Math.max(0, s);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " days ago";
  }

  function toast(text, bad) {
    const t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.className = "toast" + (bad ? " bad" : "");
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  async function post(url, payload) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload || {}),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { /* empty answer */ }
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    return { status: r.status, data: data };
  }

  function isStale(t) {
    return t.last_seen === null || t.last_seen === undefined || serverNow() - t.last_seen > staleAfter;
  }

  function value(kind, label, v, unit, extra) {
    const box = el("div", "v " + kind);
    box.append(el("span", "k", label));
    box.append(el("span", "n", v === null ? "–" : v));
    box.append(el("span", "u", unit));
    if (extra) box.append(extra);
    return box;
  }

  function ackButton(a) {
    const b = el("button", "btn ack", "Acknowledge");
    b.type = "button";
    b.dataset.alarm = a.alarm_id;
    b.addEventListener("click", async (ev) => {
      ev.preventDefault();
      b.disabled = true;
      b.textContent = "Sending…";
      // the priority shown: an alarm that has worsened since is not acknowledged unseen
      const r = await post("/api/alarms/" + encodeURIComponent(a.alarm_id) + "/ack", { priority: a.priority });
      if (r.status === 200 && r.data.state === "cleared") toast("Cleared before the acknowledgement: " + a.message);
      else if (r.status === 200) toast("Acknowledged: " + a.message);
      else if (r.status === 202) {  // not confirmed: not acknowledged until the alarm shows it
        toast("Not confirmed yet: watch the alarm, or acknowledge by SMS", true);
        b.disabled = false; b.textContent = "Acknowledge";
      }
      else { toast(r.data.error || "Could not acknowledge", true); b.disabled = false; b.textContent = "Acknowledge"; }
    });
    return b;
  }

  function renderTile(t) {
    const stale = isStale(t);
    const prio = t.alarm_priority;
    const art = el("article", "tile");
    art.dataset.patient = t.patient;
    if (prio) art.classList.add("prio-" + prio);
    if (t.unacknowledged > 0) art.classList.add("unacked");
    if (stale) art.classList.add("stale");

    const head = el("a", "tile-head");
    head.href = "/patient/" + encodeURIComponent(t.patient);
    head.append(el("span", "label", t.label));
    if (t.label !== t.patient) head.append(el("span", "pid", t.patient));
    art.append(head);

    if (stale) {
      const banner = el("div", "stale-banner");
      banner.append(el("strong", null, "NO DATA"));
      banner.append(el("span", "since", t.last_seen ? "last " + hhmmss(t.last_seen) + " (" + ago(serverNow() - t.last_seen) + ")" : "never received"));
      art.append(banner);
    }

    const vals = el("div", "vals");
    vals.append(value("hr", "HR", t.hr ? t.hr.value : null, "/min", t.hr ? el("span", "src", t.hr.source) : null));
    let cal = null;
    if (t.spo2) cal = el("span", "cal " + (t.spo2.calibrated ? "yes" : "no"), t.spo2.calibrated ? "calibrated" : "uncalibrated");
    vals.append(value("spo2", "SpO2", t.spo2 ? t.spo2.value : null, "%", cal));
    art.append(vals);

    const meta = el("div", "meta");
    const q = [];
    for (const s of ["ecg", "ppg"]) {
      if (t.sqi && t.sqi[s] !== undefined) q.push(s.toUpperCase() + " " + t.sqi[s].toFixed(2) + (t.sqi[s] < 0.5 ? " poor" : ""));
    }
    meta.append(el("span", "sqi", "signal " + (q.length ? q.join(" · ") : "–")));
    if (t.battery) meta.append(el("span", "bat" + (t.battery.value < 20 ? " low" : ""), "battery " + t.battery.value + " %"));
    meta.append(el("span", "seen", t.last_seen ? "seen " + ago(serverNow() - t.last_seen) : "no data yet"));
    art.append(meta);

    if (t.flags && t.flags.length) art.append(el("div", "flags", t.flags.join(", ").replaceAll("_", " ")));

    if (t.alarms && t.alarms.length) {
      const ul = el("ul", "alarms");
      for (const a of t.alarms) {
        const li = el("li", "alarm prio-" + a.priority + " " + a.state);
        li.dataset.alarm = a.alarm_id;
        li.append(el("span", "p", a.priority.toUpperCase()));
        li.append(el("span", "msg", a.message));
        li.append(el("span", "when", "since " + hhmmss(a.raised_at)));
        if (a.state === "acknowledged") li.append(el("span", "ackd", "ACK " + (a.acknowledged_by || "") + " " + hhmmss(a.acknowledged_at)));
        else if (page !== "strip") li.append(ackButton(a));
        ul.append(li);
      }
      art.append(ul);
    }
    return art;
  }

  function draw(t) {
    tiles.set(t.patient, t);
    const box = document.getElementById("tiles");
    if (!box) return;
    const fresh = renderTile(t);
    const old = box.querySelector('article[data-patient="' + CSS.escape(t.patient) + '"]');
    if (old) old.replaceWith(fresh);
    else box.append(fresh);
  }

  function summary(s) {
    const box = document.getElementById("summary");
    if (!box) return;
    box.textContent = "";
    const a = s.open_alarms || {};
    for (const p of ["high", "medium", "low"]) {
      if (a[p]) box.append(el("span", "chip prio-" + p, a[p] + " " + p));
    }
    if (!a.high && !a.medium && !a.low) box.append(el("span", "chip ok", "no open alarms"));
    if (s.stale) box.append(el("span", "chip stale", s.stale + " without data"));
    box.append(el("span", "count", s.patients + " patients"));
  }

  function setConnected(ok) {
    connected = ok;
    const c = document.getElementById("conn");
    if (c) c.hidden = ok;
    body.classList.toggle("offline", !ok);
  }

  function connect(patient) {
    const url = "/events" + (patient ? "?patient=" + encodeURIComponent(patient) : "");
    const es = new EventSource(url);
    const seen = () => { lastMessage = Date.now(); setConnected(true); };
    es.addEventListener("hello", (e) => {
      const d = JSON.parse(e.data);
      offset = d.now - Date.now() / 1000;
      staleAfter = d.stale_after_s;
      seen();
    });
    es.addEventListener("gone", (e) => {  // a site alarm's tile, once the alarm is over
      const patient = JSON.parse(e.data).patient;
      tiles.delete(patient);
      const old = document.querySelector('article[data-patient="' + CSS.escape(patient) + '"]');
      if (old) old.remove();
      seen();
    });
    es.addEventListener("tiles", (e) => {  // many changed at once: one event
      JSON.parse(e.data).forEach(draw);
      seen();
    });
    es.addEventListener("snapshot", (e) => {
      const d = JSON.parse(e.data);
      offset = d.now - Date.now() / 1000;
      const box = document.getElementById("tiles");
      if (box) box.textContent = "";
      tiles.clear();
      d.tiles.forEach(draw);
      summary(d.summary);
      seen();
    });
    es.addEventListener("tile", (e) => { draw(JSON.parse(e.data)); seen(); });
    es.addEventListener("summary", (e) => { summary(JSON.parse(e.data)); seen(); });
    es.addEventListener("ping", (e) => {
      const d = JSON.parse(e.data);
      offset = d.now - Date.now() / 1000;
      seen();
      if (!d.mqtt) toast("The station has lost the message broker: values may be old", true);
    });
    es.addEventListener("logout", (e) => {
      es.close();
      const d = JSON.parse(e.data);
      location.href = "/login?why=" + encodeURIComponent(d.reason) + "&next=" + encodeURIComponent(location.pathname);
    });
    es.onerror = () => setConnected(false);
  }

  // Once a second: ages, and tiles that went stale while no message came (the server also says so).
  function tick() {
    if (Date.now() - lastMessage > 12000) setConnected(false);
    for (const t of tiles.values()) {
      const shown = document.querySelector('article[data-patient="' + CSS.escape(t.patient) + '"]');
      if (!shown) continue;
      if (shown.classList.contains("stale") !== isStale(t)) { draw(t); continue; }
      const seen = shown.querySelector(".seen");
      if (seen && t.last_seen) seen.textContent = "seen " + ago(serverNow() - t.last_seen);
      const since = shown.querySelector(".stale-banner .since");
      if (since && t.last_seen) since.textContent = "last " + hhmmss(t.last_seen) + " (" + ago(serverNow() - t.last_seen) + ")";
    }
  }

  function wireForms() {
    const logout = document.getElementById("logout");
    if (logout) logout.addEventListener("click", async () => {
      await post("/logout");
      location.href = "/login";
    });
    const form = document.getElementById("silence-form");
    if (form) form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const r = await post("/api/silences", {
        patient: form.dataset.patient, kind: f.get("kind"),
        duration_s: parseInt(f.get("duration_s"), 10), reason: f.get("reason") || "",
      });
      if (r.status < 300) { toast("Silence sent"); setTimeout(() => location.reload(), 1200); }
      else toast(r.data.error || "Could not silence", true);
    });
    for (const b of document.querySelectorAll("button.unsilence")) {
      b.addEventListener("click", async () => {
        const r = await post("/api/silences/" + encodeURIComponent(b.dataset.silence) + "/end");
        if (r.status < 300) { toast("Silence ended"); setTimeout(() => location.reload(), 1200); }
        else toast(r.data.error || "Could not end the silence", true);
      });
    }
  }

  wireForms();
  if (page === "ward") connect(null);
  if (page === "patient") connect(document.getElementById("tiles").dataset.patient);
  if (page === "ward" || page === "patient") setInterval(tick, 1000);
})();
