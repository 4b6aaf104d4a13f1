// lungwatch ward view. Plain JavaScript, no libraries, nothing fetched from elsewhere.
// The server (wardview/server.py) sends the ward over Server-Sent Events: one
// "snapshot" (everything) when the stream opens, then "update" messages with what changed,
// and a "heartbeat" every heartbeat_s: when nothing arrives for HEARTBEATS_MISSED of them the
// page says so, greys the ward (what it shows may be old) and opens a new stream.
// Every text from the broker goes into the page with textContent (never as HTML). No inline
// script or style: the server's Content-Security-Policy allows only these files.
"use strict";

(function () {
  const PRIORITY = { high: 0, medium: 1, low: 2 };
  // the sound classes (the snapshot's, from lungwatch/labels.py): {colour, named} by name
  let CLASSES = {};
  const QUALITY_COLOUR = "#616161";
  const TREND_POINTS = 720;  // as the server's RATE_TREND_POINTS
  // a bed's trend: its series and the reading's key of each
  const TREND_SERIES = { rates: "rate_bpm", wheeze: "wheeze_rate_pct", crackle: "crackle_rate_pct" };
  const FINDING_COLOURS = { wheeze: "rgba(230, 145, 0, 0.75)", crackle: "rgba(123, 31, 162, 0.6)" };
  const HEARTBEATS_MISSED = 3;  // as the server's HEARTBEATS_MISSED

  const ward = { user: null, site: "", devices: new Map(), beds: new Map(), alarms: [],
    trendSeq: 0 };
  // For people and for the tests: when each event's row and each alarm first reached the
  // screen (Date.now(), after the frame that shows it), and whether the snapshot is shown.
  window.lwRendered = {};
  window.lwAlarmShown = {};
  window.lwReady = false;
  window.lwReadyMs = null;
  window.lwMessages = 0;
  window.lwHeartbeats = 0;

  const $ = (selector) => document.querySelector(selector);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // One formatter for every time on the page: toLocaleTimeString builds a new one per call,
  // and a snapshot of 200 beds formats thousands of times (most of the page's first paint).
  const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23" });
  const DATE = new Intl.DateTimeFormat([]);
  function clock(iso) {
    if (!iso) return "";
    const when = new Date(iso);
    return isNaN(when) ? String(iso) : TIME.format(when);
  }

  function age(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (!isFinite(seconds)) return "";
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor(seconds / 60) % 60} min`;
  }

  // Stamp the ids once the frame that shows them has been drawn.
  function stampAfterPaint(table, ids) {
    if (!ids.length) return;
    afterPaint(() => {
      const now = Date.now();
      for (const id of ids) if (!(id in table)) table[id] = now;
    });
  }

  // Run `task` once the browser has painted what was just changed.
  function afterPaint(task) {
    requestAnimationFrame(() => setTimeout(task, 0));
  }

  // A text that counts seconds up from `seconds` ago: "<prefix>N s", kept current by tick().
  function counting(node, prefix, seconds) {
    node.dataset.prefix = prefix;
    node.dataset.quietAt = String(Date.now() - (seconds || 0) * 1000);
    node.textContent = `${prefix}${Math.round(seconds || 0)} s`;
  }

  function stopCounting(node, text) {
    delete node.dataset.quietAt;
    node.textContent = text;
  }

  // -- header ---------------------------------------------------------------------------
  let streamLive = false;

  function setConnection(state, text) {
    streamLive = state === "live";
    const badge = $("#connection");
    stopCounting(badge, text || (state === "live" ? "live" : "reconnecting…"));
    badge.className = "badge " + (state === "live" ? "on" : "off");
    document.body.classList.toggle("stream-down", state !== "live");
    if (state !== "live") {  // what the server's broker link is, is not known meanwhile
      const broker = $("#broker");
      stopCounting(broker, "broker ?");
      broker.className = "badge off";
      broker.dataset.state = "unknown";
    }
  }

  function renderBroker(broker) {
    const badge = $("#broker");
    const state = broker.state || (broker.connected ? "connected" : "disconnected");
    badge.dataset.state = state;
    if (state === "stale") {
      counting(badge, "broker stale: nothing heard for ", broker.quiet_s);
      badge.className = "badge warn";
    } else if (state === "refused") {  // connected, but a subscription was refused (ACL)
      stopCounting(badge, `broker refused: ${broker.refused}`);
      badge.className = "badge off";
    } else {
      stopCounting(badge, `broker ${state}`);
      badge.className = "badge " + (state === "connected" ? "on" : "off");
    }
  }

  // The view's own technical alarms (a thread of it stopped): shown above everything and
  // sounded with the alarms, medium while nothing took the thread's place, low once it was
  // started again.
  let viewFaults = {};
  function faultAlarms() {
    return Object.entries(viewFaults).map(([name, text]) => ({
      state: "alarming", priority: text.endsWith("started again") ? "low" : "medium",
      device_id: "ward view", stream_id: name, condition: "thread", text,
    }));
  }
  let feedFaults = {};
  function feedAlarms() {  // a hospital feed that is down, sets aside or falls behind
    return Object.entries(feedFaults).map(([name, text]) => ({
      state: "alarming", priority: "medium", device_id: "hospital feed", stream_id: name,
      condition: "feed", text,
    }));
  }
  function soundedAlarms() {
    return (ward.alarms || []).concat(faultAlarms(), feedAlarms());
  }

  function renderBanner(selector, title, alarms) {  // a technical alarm's red banner
    const node = $(selector);
    const lines = Object.values(alarms);
    node.hidden = lines.length === 0;
    node.textContent = lines.length ? title + lines.join("; ") : "";
    sound.update(soundedAlarms());
  }
  function renderFeeds(feeds) {
    feedFaults = feeds;
    renderBanner("#feeds", "Technical alarm: ", feeds);
  }
  function renderFaults(faults) {
    viewFaults = faults;
    renderBanner("#faults", "Technical alarm (ward view): ", faults);
  }

  function renderHeader(message) {
    if (message.broker) renderBroker(message.broker);
    if (message.faults) renderFaults(message.faults);
    if (message.feeds) renderFeeds(message.feeds);
    if (message.counts && message.counts.rejected) {
      const reasons = Object.entries(message.rejected_reasons || {})
        .map(([reason, n]) => `${reason} ${n}`).join(", ");
      const node = $("#rejected");
      node.textContent = `${message.counts.rejected} message(s) rejected (${reasons})` +
        (message.last_rejected ? `; last: ${message.last_rejected}` : "");
      node.title = message.last_rejected || "";
    }
  }

  // -- devices and beds -----------------------------------------------------------------
  function deviceNode(id) {
    let device = ward.devices.get(id);
    if (device) return device;
    const section = el("section", "device");
    section.dataset.device = id;
    const head = el("div", "device-head");
    const title = el("h3", null, `device ${id}`);
    const online = el("span", "badge off online", "status unknown");
    const since = el("span", "since");
    const served = el("span", "served");
    const spool = el("span", "spool");
    const wait = el("span", "read-wait");
    const silent = el("span", "badge warn silent");
    silent.hidden = true;
    head.append(title, online, silent, since, served, spool, wait);
    const beds = el("div", "beds");
    section.append(head, beds);
    const container = $("#devices");
    const after = [...container.children].find((s) => s.dataset.device > id);
    container.insertBefore(section, after || null);
    device = { section, online, silent, since, served, spool, wait, beds, view: null };
    ward.devices.set(id, device);
    $("#empty").hidden = true;
    return device;
  }

  function renderDevice(view) {
    const device = deviceNode(view.device_id);
    device.view = view;
    const known = view.online !== null && view.online !== undefined;
    device.online.textContent = !known ? "status unknown" :
      view.online ? "online" : `offline (${view.reason || "?"})`;
    device.online.className = "badge online " + (view.online ? "on" : "off");
    device.section.classList.toggle("is-offline", view.online === false);
    // not offline, yet nothing from it for stale_after_s: what its beds show may be old
    const silent = view.silent_s !== null && view.silent_s !== undefined;
    device.silent.hidden = !silent;
    if (silent) counting(device.silent, "no messages for ", view.silent_s);
    else stopCounting(device.silent, "");
    device.since.textContent = view.status_utc ? `since ${clock(view.status_utc)}` : "";
    const beds = view.beds.filter((b) => b !== "device").length;
    device.served.textContent = `beds served: ${beds}`;
    device.spool.textContent = `spool depth: ${view.spooled === null ? "?" : view.spooled}`;
    // how long audio waits for the device's loop (its worst bed, p99): behind = alarms late
    const waitMs = view.read_wait_ms;
    device.wait.textContent = waitMs === null || waitMs === undefined ? "" : view.behind
      ? `behind: audio waits up to ${Math.round(waitMs)} ms (${view.read_wait_bed}), alarms late`
      : `read wait: ${Math.round(waitMs)} ms`;
    device.wait.classList.toggle("behind", Boolean(view.behind));
    view.beds.forEach((stream) => bedNode(view.device_id, stream));
  }

  function bedNode(deviceId, streamId) {
    const key = `${deviceId}/${streamId}`;
    let bed = ward.beds.get(key);
    if (bed) return bed;
    const card = el("article", "bed s-normal");
    card.dataset.device = deviceId;
    card.dataset.stream = streamId;
    const head = el("div", "bed-head");
    const state = el("span", "state s-normal", "breathing normal");
    const verdict = el("span", "verdict", "");
    verdict.title = "rolling verdict: the record-level decision over the bed's last stretch";
    // its display name (from the device's summary; the stream id until one comes): a button
    // that opens the bed's history
    const name = el("button", "bed-name", streamId);
    name.type = "button";
    name.title = `bed ${streamId} on ${deviceId}: its history`;
    name.addEventListener("click", () => openHistory(deviceId, streamId));
    head.append(name, state, verdict);
    const where = el("div", "location", "");
    const canvas = el("canvas", "strip");
    canvas.width = 240;
    canvas.height = 44;
    canvas.setAttribute("aria-hidden", "true");
    const live = el("div", "live", "live: waiting for the first point");
    // breathing: the rate now (or why there is none) and its trend
    const rate = el("div", "rate", "");
    rate.title = "respiratory rate over the last 30 s, breaths per minute";
    // findings: the share of breathing time with wheeze and with crackle (the device's window)
    const frate = el("div", "finding-rate", "");
    frate.title = "share of the bed's breathing time with wheeze and with crackle, " +
      "over the device's last minutes";
    const trend = el("canvas", "trend");
    trend.width = 240;
    trend.height = 28;
    trend.setAttribute("aria-hidden", "true");
    const events = el("ol", "events");
    card.append(head, where, rate, frate, trend, canvas, live, events);
    const device = deviceNode(deviceId);
    const last = device.beds.lastElementChild;  // a snapshot lists beds in order: append
    const after = !last || naturalLess(last.dataset.stream, streamId) ? null
      : [...device.beds.children].find((c) => naturalLess(streamId, c.dataset.stream));
    device.beds.insertBefore(card, after || null);
    bed = { card, name, where, state, verdict, canvas, live, events, rate, frate, trend, points: [],
      rates: [], wheeze: [], crackle: [], near: false, stale: false };
    card.lwBed = bed;
    nearScreen.observe(card);
    ward.beds.set(key, bed);
    return bed;
  }

  const COLLATOR = new Intl.Collator(undefined, { numeric: true });
  function naturalLess(a, b) {
    return COLLATOR.compare(a, b) < 0;
  }

  // A bed's two charts are drawn while its card is on the screen or near it (the cards far
  // below are not rendered either: style.css, content-visibility); one that changed while
  // away is drawn when it comes near. A ward of 200 beds then pays for the dozens in view.
  const nearScreen = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const bed = entry.target.lwBed;
      bed.near = entry.isIntersecting;
      if (bed.near && bed.stale) drawCharts(bed);
    }
  }, { rootMargin: "400px 0px" });

  function drawCharts(bed) {
    bed.stale = false;
    drawTrend(bed);
    drawStrip(bed);
  }

  function chartsChanged(bed) {
    liveText(bed);
    if (bed.near) drawCharts(bed); else bed.stale = true;
  }

  function renderBed(view) {
    const bed = bedNode(view.device_id, view.stream_id);
    for (const node of [bed.card, bed.state]) {  // the last state's class (s-<key>)
      node.classList.remove(...[...node.classList].filter((c) => c.startsWith("s-")));
    }
    bed.card.classList.add(`s-${view.state.key}`);
    bed.state.classList.add(`s-${view.state.key}`);
    bed.state.textContent = view.state.text;
    bed.card.dataset.state = view.state.key;
    const v = view.verdict;
    bed.verdict.textContent = v ? `verdict: ${v.label}` : "";
    bed.card.dataset.verdict = v ? v.label : "";
    bed.name.textContent = bedLabel(view);
    bed.where.textContent = view.location || "";
    bed.card.dataset.name = view.name || "";
    renderRate(bed, view);
    const rows = view.events.map((e) => eventRow(e, bedLabel(view)));
    bed.events.replaceChildren(...rows);
    stampAfterPaint(window.lwRendered, view.events.map((e) => e.id));
    if (view.live) {
      bed.points = view.live.slice();
      chartsChanged(bed);
    }
  }

  // -- breathing ------------------------------------------------------------------------
  function renderRate(bed, view) {
    const r = view.respiration;
    if (view.rate_trend) {  // a snapshot: the readings, oldest first
      for (const [name, key] of Object.entries(TREND_SERIES)) {
        bed[name] = view.rate_trend[key].slice();
      }
    }  // an update's readings come one by one in its trend (addTrend)
    bed.card.dataset.respiration = r ? r.state : "";
    const pct = (v) => (typeof v === "number" ? `${v < 10 ? v.toFixed(1) : Math.round(v)} %` : "--");
    const wheeze = r ? r.wheeze_rate_pct : null, crackle = r ? r.crackle_rate_pct : null;
    bed.frate.textContent = wheeze == null && crackle == null ? ""
      : `wheeze ${pct(wheeze)} · crackle ${pct(crackle)} of breathing`;
    bed.rate.dataset.rate = r && r.rate_bpm !== null ? String(r.rate_bpm) : "";
    if (!r) bed.rate.textContent = "";
    else if (r.state === "ok") {
      const out = r.rate_bpm < r.low_bpm || r.rate_bpm > r.high_bpm;
      bed.rate.textContent = `RR ${Math.round(r.rate_bpm)}/min` +
        ` (normal ${r.low_bpm}-${r.high_bpm}, ${r.age_band})`;
      bed.rate.classList.toggle("out", out);
    } else {
      bed.rate.classList.remove("out");
      const why = { assessing: "assessing", not_assessable: "not assessable",
        apnoea: "APNOEA: no breath heard", signal_lost: "breath signal lost" }[r.state];
      bed.rate.textContent = `RR -- ${why}${r.reason ? ` (${r.reason})` : ""}`;
    }
    chartsChanged(bed);
  }

  function drawTrend(bed) {
    const ctx = bed.trend.getContext("2d");
    const w = bed.trend.width, h = bed.trend.height;
    ctx.clearRect(0, 0, w, h);
    const values = bed.rates;
    const step = values.length > 1 ? w / (values.length - 1) : w;
    // the finding rates, full height 100 %: wheeze from the bottom edge, crackle from the top
    for (const [shares, colour, fromTop] of [[bed.wheeze, FINDING_COLOURS.wheeze, false],
      [bed.crackle, FINDING_COLOURS.crackle, true]]) {
      ctx.fillStyle = colour;
      shares.forEach((v, i) => {
        if (typeof v !== "number" || v <= 0) return;
        const bar = Math.max(1, (Math.min(v, 100) / 100) * h);
        ctx.fillRect(i * step - Math.max(1, step / 2), fromTop ? 0 : h - bar,
          Math.max(2, step), bar);
      });
    }
    const known = values.filter((v) => v !== null && v !== undefined);
    if (!known.length) return;
    const top = Math.max(40, ...known) * 1.1;
    ctx.beginPath();
    ctx.strokeStyle = "#263238";
    ctx.fillStyle = "#263238";
    let drawing = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) { drawing = false; return; }
      const y = h - 2 - (v / top) * (h - 4);
      if (drawing) ctx.lineTo(i * step, y); else ctx.moveTo(i * step, y);
      ctx.fillRect(i * step - 1, y - 1, 2, 2);  // every reading, a lone one included
      drawing = true;
    });
    ctx.stroke();
  }

  // A bed as people call it: its name, else its stream id.
  function bedLabel(view) {
    return view.bed_name || view.name || view.stream_id;
  }

  function eventRow(e, bed) {
    const li = el("li");
    li.dataset.eventId = e.id;
    li.dataset.episode = e.episode_id;
    li.dataset.state = e.state;
    const when = e.state === "ended" ? e.end_utc : e.start_utc;
    li.append(el("span", "t", clock(when)));
    const conf = e.confidence === null ? "" : ` ${e.confidence.toFixed(2)}`;
    li.append(document.createTextNode(`${e.type} ${e.state} [${e.priority}]${conf}`));
    if (e.latched && e.state !== "ended") li.append(el("span", "latched", " latched"));
    if (e.ended_by === "acknowledge") {
      li.append(el("span", "acked", ` acknowledged ${clock(e.acknowledged_utc)}`));
    } else if (e.ended_by) {
      li.append(document.createTextNode(` (${e.ended_by})`));
    }
    if (e.evidence) li.append(listenButton(e.episode_id, `${e.type}, ${bed}`));
    return li;
  }

  // -- live strip -----------------------------------------------------------------------
  // one breathing reading of an update, appended to its bed's trend (not one the snapshot
  // already held: an update taken after it may hand it again)
  function addTrend(item) {
    const bed = bedNode(item.device_id, item.stream_id);
    if (item.seq <= ward.trendSeq) return;  // numbered by the server, whatever the clocks
    for (const [name, key] of Object.entries(TREND_SERIES)) {
      const v = item.point[key];
      bed[name].push(typeof v === "number" ? v : null);
      if (bed[name].length > TREND_POINTS) bed[name].splice(0, bed[name].length - TREND_POINTS);
    }
    chartsChanged(bed);
  }

  function addLive(item, limit) {
    const bed = bedNode(item.device_id, item.stream_id);
    bed.points.push(item.point);
    if (bed.points.length > limit) bed.points.splice(0, bed.points.length - limit);
    chartsChanged(bed);
  }

  function drawStrip(bed) {
    const points = bed.points;
    const ctx = bed.canvas.getContext("2d");
    const w = bed.canvas.width, h = bed.canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (!points.length) return;
    const step = points.length > 1 ? w / (points.length - 1) : w;
    const y = (v) => h - 2 - v * (h - 4);
    const line = (colour, value, dashed) => {
      ctx.beginPath();
      ctx.strokeStyle = colour;
      ctx.setLineDash(dashed ? [3, 3] : []);
      points.forEach((p, i) => {
        const v = value(p);
        if (v === null || v === undefined) return;
        if (i === 0) ctx.moveTo(0, y(v)); else ctx.lineTo(i * step, y(v));
      });
      ctx.stroke();
    };
    for (const [name, { colour }] of Object.entries(CLASSES)) {
      if (name in points[points.length - 1].classes) line(colour, (p) => p.classes[name], false);
    }
    line(QUALITY_COLOUR, (p) => p.quality_score, true);
  }

  // The strip's last point in words (kept current on every bed, near the screen or not).
  function liveText(bed) {
    const points = bed.points;
    if (!points.length) return;
    const last = points[points.length - 1];
    const top = Object.keys(CLASSES).filter((n) => n in last.classes)
      .sort((a, b) => last.classes[b] - last.classes[a]).slice(0, 3);
    const quality = last.quality_score === null ? "?" : last.quality_score.toFixed(2);
    bed.live.textContent = top.map((n) => `${n} ${last.classes[n].toFixed(2)}`).join(" · ") +
      ` · quality ${quality} (${clock(last.utc)})`;
    bed.live.title = Object.entries(last.classes).map(([n, v]) => `${n} ${v}`).join(", ");
  }

  // -- alarms ---------------------------------------------------------------------------
  // One row per bed and alarm condition (lungwatch/alarms.py), grouped by bed: the bed's worst
  // condition first (the server's ward order: alarming, then priority, apnoea first, then the
  // latest to start alarming),
  // its other conditions under it. Rows are kept while what they show is unchanged, so a
  // button being clicked is never swapped for a new one by an update about another alarm.
  const alarmRows = new Map();  // device/bed/condition -> { signature, tr }

  function conditionId(a) { return `${a.device_id}/${a.stream_id}/${a.condition}`; }

  // Updates come up to ten times a second; the list is drawn at most every ALARM_DRAW_MS
  // (the newest list wins), so a busy ward does not spend the page's time on one table.
  const ALARM_DRAW_MS = 300;
  const ACK_CONFIRM_S = 15;
  // the worst beds' rows are listed first, about this many; the rest behind a button (a busy
  // ward of 200 beds lists hundreds of conditions, more than a page can redraw or a nurse read)
  const ALARM_ROWS_SHOWN = 50;
  let showAllAlarms = false;  // a device confirms an acknowledge within a second or two
  let alarmsPending = null, alarmsTimer = null, alarmsDrawnAt = 0;

  function renderAlarms(alarms) {
    alarmsPending = alarms;
    if (alarmsTimer !== null) return;
    const wait = Math.max(0, alarmsDrawnAt + ALARM_DRAW_MS - Date.now());
    alarmsTimer = setTimeout(() => {
      alarmsTimer = null;
      alarmsDrawnAt = Date.now();
      drawAlarms(alarmsPending);
    }, wait);
  }

  function drawAlarms(alarms) {
    ward.alarms = alarms;
    const canAck = Boolean(ward.user && ward.user.can_acknowledge);
    const beds = new Map();  // in the order of each bed's worst condition
    for (const a of alarms) {
      const bed = `${a.device_id}/${a.stream_id}`;
      if (!beds.has(bed)) beds.set(bed, []);
      beds.get(bed).push(a);
    }
    const kept = new Map();
    const rows = [];
    let listed = 0;
    for (const group of beds.values()) {
      if (!showAllAlarms && listed >= ALARM_ROWS_SHOWN) break;  // the worst beds first
      listed += group.length;
      group.forEach((a, i) => {
        const signature = JSON.stringify([a, canAck, i === 0, Boolean(ward.user && ward.user.can_listen)]);
        const old = alarmRows.get(conditionId(a));
        const tr = old && old.signature === signature ? old.tr : alarmRow(a, canAck, i === 0);
        kept.set(conditionId(a), { signature, tr });
        rows.push(tr);
      });
    }
    alarmRows.clear();
    kept.forEach((value, key) => alarmRows.set(key, value));
    placeRows($("#alarms tbody"), rows);
    $("#alarm-count").textContent = `(${alarms.length} on ${beds.size} bed(s))`;
    const more = $("#alarms-more");
    more.hidden = showAllAlarms ? alarms.length <= ALARM_ROWS_SHOWN : rows.length >= alarms.length;
    more.textContent = showAllAlarms ? "Show the first beds only" :
      `Show all ${alarms.length} (${alarms.length - rows.length} not drawn)`;
    stampAfterPaint(window.lwAlarmShown, alarms.flatMap((a) => a.open_episodes || []));
    afterPaint(countBelow);
    sound.update(alarms.concat(faultAlarms()));
  }

  // How many conditions are not in view: rows below the list's visible part (or below the
  // window) and rows not drawn; said under the list, so nothing waits unseen below it.
  function countBelow() {
    const box = $("#alarms-scroll");
    const bottom = Math.min(box.getBoundingClientRect().bottom, window.innerHeight);
    let hidden = (ward.alarms || []).length - $("#alarms tbody").children.length;
    for (const tr of $("#alarms tbody").children) {
      if (tr.getBoundingClientRect().bottom > bottom + 1) hidden += 1;
    }
    const below = $("#alarms-below");
    below.hidden = hidden <= 0;
    below.dataset.count = String(Math.max(0, hidden));
    below.textContent = hidden > 0 ? `▼ ${hidden} more alarm condition(s) below: scroll the list` : "";
    fitPanel();  // the list's height changed with its rows
  }

  // Put ``rows`` into ``body`` in order, moving or replacing only what differs (a busy
  // ward changes a few rows per update; rebuilding the whole table costs the page its time).
  function placeRows(body, rows) {
    const wanted = new Set(rows);
    for (const node of [...body.children]) if (!wanted.has(node)) node.remove();
    rows.forEach((tr, i) => {
      const here = body.children[i];
      if (here !== tr) body.insertBefore(tr, here || null);
    });
  }

  function stateText(a) {
    if (a.state === "verdict") return "verdict (nothing to acknowledge)";
    let text = a.state === "acknowledged" ? `acknowledged${a.acknowledged_by ? ` by ${a.acknowledged_by}` : ""}`
      : a.state === "ended" ? "over" : "ALARM";
    if (a.escalated) text += ` (raised from ${a.base_priority}: not acknowledged)`;
    if (a.latched) {  // where the condition ended, when the device said (a summary does not)
      text += a.condition_end_utc ? ` · latched (condition ended ${clock(a.condition_end_utc)})`
        : " · latched";
    }
    if (a.ack_sent && a.ack_waiting_s !== null && a.ack_waiting_s > ACK_CONFIRM_S) {
      text += ` · the device has not confirmed the acknowledge for ${Math.round(a.ack_waiting_s)} s:` +
        " it refuses commands it cannot verify (its commands.key_file, docs/security.md) or is unreachable";
    } else if (a.ack_sent) {
      text += " · acknowledge sent, waiting for the device";
    }
    return text;
  }

  function alarmRow(a, canAck, head) {
    const tr = el("tr", `prio-${a.priority} st-${a.state} ${head ? "bed-first" : "bed-more"}`);
    tr.dataset.condition = a.condition;
    tr.dataset.type = a.condition;
    tr.dataset.episode = a.episode_id || "";
    tr.dataset.episodes = (a.open_episodes || []).join(" ");
    tr.dataset.clip = a.clip_episode_id || "";
    tr.dataset.device = a.device_id;
    tr.dataset.stream = a.stream_id;
    tr.dataset.state = a.state;
    tr.dataset.raised = a.raised_utc || "";
    tr.dataset.latched = a.latched ? "true" : "false";
    tr.append(el("td", `prio ${a.priority}`, a.priority));
    const bed = el("td", "bed-name", head ? bedLabel(a) : "↳");
    if (head && a.bed_location) bed.append(el("span", "location", ` · ${a.bed_location}`));
    bed.title = `${bedLabel(a)}, stream ${a.stream_id}`;
    tr.append(bed);
    tr.append(el("td", null, head ? a.device_id + (a.device_online ? "" : " (offline)") : ""));
    // a family's row says when its newest episode was a sound of its own (stridor, rhonchi)
    const own = (CLASSES[a.last_type] || {}).named;
    const named = own ? ` · ${own}` : "";
    const what = el("td", "condition", a.kind === "technical" ? `${a.text} (technical)` : a.text + named);
    if (a.episodes > 1) what.append(el("span", "episodes", ` · ${a.episodes} episodes`));
    tr.append(what);
    const since = el("td", "since", `${clock(a.first_onset_utc)} `);
    const ageNode = el("span", "age", `(${age(a.first_onset_utc)})`);
    ageNode.dataset.start = a.first_onset_utc;
    since.append(ageNode);
    if (a.episodes > 1) since.append(el("span", "last", `, last ${clock(a.last_episode_utc)}`));
    tr.append(since);
    tr.append(el("td", "alarm-state", stateText(a)));
    const evidence = el("td", "evidence");
    if (a.evidence && a.clip_episode_id) {
      evidence.append(listenButton(a.clip_episode_id, `${a.text}, ${bedLabel(a)}`));
    }
    tr.append(evidence);
    const action = el("td", "action");
    const needed = a.state === "alarming" || a.state === "ended" || (a.latched && !a.ack_sent);
    if (canAck && a.kind !== "verdict" && needed) {
      const button = el("button", "ack", "Acknowledge");
      button.type = "button";
      button.addEventListener("click", () => acknowledge(button, a));
      action.append(button);
    }
    tr.append(action);
    return tr;
  }

  // -- alarm signals: IEC 60601-1-8 priority patterns, sounded with the Web Audio API ------
  // high: two bursts of five pulses, again every 10 s; medium: one burst of three pulses,
  // every 20 s; low: one burst of two pulses, once when a low condition starts alarming.
  // One pattern sounds at a time, the highest alarming condition's: a pattern of the same
  // priority is never started over one still sounding, and a higher one cuts a lower one
  // short. Browsers let a page sound only after a gesture: the "Enable alarm sound" button
  // (shown at login until pressed) makes the AudioContext. "Pause audio" silences for the
  // view's audio_pause_s (shown, counting down, ending by itself); a new high-priority
  // condition ends the pause at once and sounds. Technical conditions come with their own
  // (lower) priority from the device. The title and, where allowed, a notification say so too.
  // Every pulse goes through one gain node and an AnalyserNode to the speakers: what the
  // page sounds can be measured where it leaves the page.
  const PATTERNS = {
    high: { hz: 880, bursts: [5, 5], every_ms: 10000, repeat: true },
    medium: { hz: 660, bursts: [3], every_ms: 20000, repeat: true },
    low: { hz: 523, bursts: [2], every_ms: 0, repeat: false },
  };
  let pauseMs = 120000;  // the snapshot's audio_pause_s
  const TITLE = document.title;
  const sound = {
    context: null, master: null, analyser: null, pausedUntil: 0, worst: null, lastAt: 0,
    announced: new Set(), playing: null, live: 0, wasPaused: false,
    // for people and the tests: every pattern started {priority, pulses, at}
    log: [],
    enable() {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) { $("#sound").textContent = "no audio in this browser"; return; }
      if (!this.context) {
        this.context = new Context();
        this.master = this.context.createGain();
        this.analyser = this.context.createAnalyser();
        this.analyser.fftSize = 1024;
        this.master.connect(this.analyser).connect(this.context.destination);
      }
      this.context.resume();
      $("#sound").textContent = "Alarm sound on";
      $("#sound").classList.add("on");
      if (window.Notification && Notification.permission === "default") {
        Notification.requestPermission().catch(() => {});
      }
      this.update(soundedAlarms());
    },
    pause() {
      this.pausedUntil = Date.now() + pauseMs;
      this.stopPlaying();
      this.tick();
    },
    alarming(alarms) {
      return (alarms || []).filter((a) => a.state === "alarming");
    },
    update(alarms) {
      const live = this.alarming(alarms);
      this.live = live.length;
      const worst = live.length ? live.reduce((w, a) => (PRIORITY[a.priority] < PRIORITY[w] ? a.priority : w), "low") : null;
      document.title = live.length ? `(${live.length}) ALARM ${worst.toUpperCase()} · ${TITLE}` : TITLE;
      // a condition anew (its raise, or a new apnoea in it) or at a new priority sounds at once
      const instance = (a) => `${conditionId(a)}|${a.alarm_utc || a.raised_utc || ""}|${a.priority}`;
      const fresh = live.filter((a) => !this.announced.has(instance(a)));
      for (const a of live) this.announced.add(instance(a));
      if (fresh.length && window.Notification && Notification.permission === "granted" && document.hidden) {
        const a = fresh[0];
        try { new Notification(`${a.priority} alarm: ${a.text}`, { body: bedLabel(a), tag: conditionId(a) }); } catch (e) { /* none */ }
      }
      // a new high-priority condition ends audio pause (IEC 60601-1-8 lets it; a new apnoea
      // must be heard whoever paused the sound for the ward's other alarms)
      if (fresh.some((a) => a.priority === "high")) this.pausedUntil = 0;
      const rises = worst !== null && (this.worst === null || PRIORITY[worst] < PRIORITY[this.worst]);
      this.worst = worst;
      // what sounds is for the worst alarming condition: acknowledged, it stops at once
      if (this.playing && (worst === null || PRIORITY[worst] > PRIORITY[this.playing.priority])) {
        this.stopPlaying();
      }
      if (rises || fresh.length) this.lastAt = 0;  // a new or higher alarm sounds at once
      this.tick();
    },
    tick() {
      const pause = $("#sound-pause");
      const paused = Date.now() < this.pausedUntil;
      const length = pauseMs % 60000 === 0 ? `${pauseMs / 60000} min` : `${Math.round(pauseMs / 1000)} s`;
      pause.textContent = paused ? `Audio paused ${Math.ceil((this.pausedUntil - Date.now()) / 1000)} s`
        : `Pause audio ${length}`;
      pause.classList.toggle("paused", paused);
      pause.hidden = !this.context || (!paused && this.live === 0);  // nothing to pause
      if (this.wasPaused && !paused) this.lastAt = 0;  // the pause is over: sound at once
      this.wasPaused = paused;
      if (!this.context || paused || this.worst === null) return;
      const pattern = PATTERNS[this.worst];
      const due = this.lastAt === 0 || (pattern.repeat && Date.now() - this.lastAt >= pattern.every_ms);
      if (!due) return;
      const sounding = this.playing !== null && this.context.currentTime < this.playing.until;
      if (sounding && PRIORITY[this.playing.priority] <= PRIORITY[this.worst]) {
        this.lastAt = this.playing.startedAt;  // this very pattern is sounding: it counts
        return;
      }
      this.stopPlaying();  // a lower pattern gives way to a higher one
      this.lastAt = Date.now();
      this.play(this.worst, pattern);
    },
    stopPlaying() {
      if (this.playing === null) return;
      const now = this.context.currentTime;
      for (const { osc, gain } of this.playing.nodes) {
        gain.gain.cancelScheduledValues(now);
        gain.gain.setValueAtTime(0, now);
        try { osc.stop(now); } catch (e) { /* already stopped */ }
      }
      this.playing = null;
    },
    play(priority, pattern) {
      const ctx = this.context;
      let t = ctx.currentTime + 0.05;
      const nodes = [];
      pattern.bursts.forEach((count, burst) => {
        for (let i = 0; i < count; i++) {
          const osc = ctx.createOscillator(), gain = ctx.createGain();
          osc.type = "triangle";
          osc.frequency.value = pattern.hz;
          gain.gain.setValueAtTime(0, t);
          gain.gain.linearRampToValueAtTime(0.3, t + 0.02);
          gain.gain.setValueAtTime(0.3, t + 0.13);
          gain.gain.linearRampToValueAtTime(0, t + 0.15);
          osc.connect(gain).connect(this.master);
          osc.start(t);
          osc.stop(t + 0.16);
          nodes.push({ osc, gain });
          t += 0.2;
        }
        if (burst < pattern.bursts.length - 1) t += 0.8;
      });
      this.playing = { priority, until: t, startedAt: Date.now(), nodes };
      this.log.push({ priority, pulses: nodes.length, at: Date.now() });
    },
  };
  window.lwSound = sound;
  $("#alarms-more").addEventListener("click", () => {
    showAllAlarms = !showAllAlarms;
    drawAlarms(ward.alarms);
  });
  $("#sound").addEventListener("click", () => sound.enable());
  $("#alarms-scroll").addEventListener("scroll", countBelow);
  window.addEventListener("resize", countBelow);
  $("#sound-pause").addEventListener("click", () => sound.pause());
  setInterval(() => sound.tick(), 1000);

  async function acknowledge(button, alarm) {
    button.disabled = true;
    button.textContent = "sending…";
    $("#ack-error").textContent = "";
    try {
      const reply = await fetch("/api/acknowledge", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({  // raised_utc: the alarm as shown (a newer one is not covered)
          device_id: alarm.device_id, stream_id: alarm.stream_id, target: alarm.condition,
          raised_utc: alarm.raised_utc || "",
        }),
      });
      const body = await reply.json().catch(() => ({}));
      if (reply.status !== 202) throw new Error(body.error || `HTTP ${reply.status}`);
      button.textContent = "acknowledge sent";
    } catch (error) {
      $("#ack-error").textContent = `Acknowledge of ${alarm.text} on ${bedLabel(alarm)} failed: ${error.message}`;
      button.disabled = false;
      button.textContent = "Acknowledge";
    }
  }

  // -- evidence: an event's clip, heard and seen ----------------------------------------
  // For the tests and for people: what the panel shows and when each part of it was ready.
  window.lwEvidence = null;
  window.lwTrend = null;

  function listenButton(episode, label) {
    const button = el("button", "listen", "▶ Listen");
    button.type = "button";
    button.dataset.episode = episode;
    const allowed = Boolean(ward.user && ward.user.can_listen);
    button.disabled = !allowed;
    button.title = allowed ? `play and see the clip of ${label}` :
      "listening to patient audio needs a named user (view or ack)";
    button.addEventListener("click", () => openEvidence(episode, label));
    return button;
  }

  function showPanel(which, title) {
    $("#panel").hidden = false;
    $("#panel-title").textContent = title;
    $("#evidence").hidden = which !== "evidence";
    $("#history").hidden = which !== "history";
    if (which !== "evidence") $("#evidence-audio").pause();
    fitPanel();
  }

  // The panel sits over the ward's bottom right, below the alarm list: it never covers a
  // row or its Acknowledge button while the list is in view (its content scrolls instead).
  const PANEL_MIN_PX = 240;
  function fitPanel() {
    const panel = $("#panel");
    if (panel.hidden) return;
    const list = $("#alarms-section").getBoundingClientRect().bottom;
    const room = window.innerHeight - Math.max(0, list) - 24;
    panel.style.maxHeight = `${Math.max(PANEL_MIN_PX, Math.min(room, window.innerHeight * 0.8))}px`;
  }
  window.addEventListener("scroll", fitPanel, { passive: true });  // on resize: countBelow

  function closePanel() {
    $("#evidence-audio").pause();
    $("#panel").hidden = true;
  }

  async function openEvidence(episode, label) {
    const state = { episode, clickedAt: Date.now(), audioAt: null, pictureAt: null,
      duration: null, playing: false, error: null };
    window.lwEvidence = state;
    showPanel("evidence", `Evidence: ${label}`);
    const audio = $("#evidence-audio"), picture = $("#evidence-picture");
    $("#evidence-error").textContent = "";
    $("#evidence-about").textContent = "loading…";
    audio.onloadedmetadata = () => {
      if (window.lwEvidence !== state) return;
      state.audioAt = Date.now();
      state.duration = audio.duration;
    };
    audio.onplaying = () => { if (window.lwEvidence === state) state.playing = true; };
    audio.onerror = () => failed(state, "the clip's audio did not load");
    picture.onload = () => {
      if (window.lwEvidence === state) state.pictureAt = Date.now();
    };
    picture.onerror = () => failed(state, "the clip's picture did not load");
    audio.src = `/api/evidence/${encodeURIComponent(episode)}.flac`;
    picture.src = `/api/evidence/${encodeURIComponent(episode)}.png`;
    audio.play().catch(() => {});  // the click allows it; a failure shows through onerror
    try {
      const reply = await fetch(`/api/evidence/${encodeURIComponent(episode)}`);
      const about = await reply.json();
      if (!reply.ok) throw new Error(about.error || `HTTP ${reply.status}`);
      if (window.lwEvidence !== state) return;
      $("#evidence-about").textContent = `${about.event_type} on ${about.stream_id} ` +
        `(${about.device_id}): ${about.duration_s.toFixed(1)} s from ${clock(about.start_utc)}, ` +
        `the event from ${about.event_offset_s.toFixed(1)} s; outputs: ` +
        about.outputs.join(", ");
    } catch (error) {
      failed(state, error.message);
    }
  }

  function failed(state, why) {
    if (window.lwEvidence !== state) return;
    state.error = why;
    $("#evidence-about").textContent = "";
    $("#evidence-error").textContent = `No evidence shown: ${why}`;
  }

  // -- a bed's history: hour by hour ----------------------------------------------------
  let historyBed = null;

  function openHistory(deviceId, streamId) {
    historyBed = { deviceId, streamId };
    const view = ward.beds.get(`${deviceId}/${streamId}`);
    const name = view ? view.name.textContent : streamId;
    showPanel("history", `History: ${name} (${deviceId})`);
    loadHistory();
  }

  async function loadHistory() {
    if (!historyBed) return;
    const asked = { ...historyBed, hours: Number($("#history-hours").value) };
    $("#history-error").textContent = "";
    try {
      const reply = await fetch(`/api/trend/${encodeURIComponent(asked.deviceId)}/` +
        `${encodeURIComponent(asked.streamId)}?hours=${asked.hours}`);
      const trend = await reply.json();
      if (!reply.ok) throw new Error(trend.error || `HTTP ${reply.status}`);
      if (historyBed.deviceId !== asked.deviceId || historyBed.streamId !== asked.streamId) return;
      drawHistory(trend);
      historyTable(trend);
      afterPaint(() => {
        window.lwTrend = { device: asked.deviceId, stream: asked.streamId, hours: asked.hours,
          drawnAt: Date.now(), onsets: trend.onsets, poor: trend.poor_signal_min };
      });
    } catch (error) {
      $("#history-error").textContent = `No history shown: ${error.message}`;
    }
  }

  const FAMILY_COLOUR = { CAS: "#1565c0", DAS: "#e65100", breathing: "#b71c1c" };

  function drawHistory(trend) {
    const canvas = $("#history-chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, left = 34, right = 34, bottom = 18, top = 6;
    const plotW = w - left - right, plotH = h - top - bottom;
    ctx.clearRect(0, 0, w, h);
    const n = trend.hours.length;
    const slot = plotW / n;
    const totals = trend.hours.map((_, i) =>
      Object.keys(FAMILY_COLOUR).reduce((sum, f) => sum + trend.onsets[f][i], 0));
    const most = Math.max(4, ...totals);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#555";
    ctx.fillText(String(most), 2, top + 10);
    ctx.fillText("0", 2, top + plotH);
    trend.hours.forEach((hour, i) => {
      const x = left + i * slot;
      // minutes of poor signal: a grey bar behind, 60 min = full height
      const poor = Math.min(60, trend.poor_signal_min[i]) / 60 * plotH;
      ctx.fillStyle = "#cfd8dc";
      ctx.fillRect(x + 1, top + plotH - poor, slot - 2, poor);
      let y = top + plotH;
      for (const [family, colour] of Object.entries(FAMILY_COLOUR)) {
        const height = trend.onsets[family][i] / most * plotH;
        ctx.fillStyle = colour;
        ctx.fillRect(x + slot * 0.25, y - height, slot * 0.5, height);
        y -= height;
      }
      const every = Math.ceil(n / 12);
      if (i % every === 0) {
        ctx.fillStyle = "#555";
        ctx.fillText(clock(hour).slice(0, 5), x + 2, h - 4);
      }
    });
    const rates = trend.rate_bpm;
    const known = rates.filter((r) => r !== null);
    if (known.length) {
      const topRate = Math.max(40, ...known) * 1.1;
      ctx.fillStyle = "#5d4037";
      ctx.fillText(`${Math.round(topRate)}/min`, w - right + 2, top + 10);
      ctx.strokeStyle = "#5d4037";
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      rates.forEach((r, i) => {
        if (r === null) { drawing = false; return; }
        const x = left + (i + 0.5) * slot, y = top + plotH - r / topRate * plotH;
        if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        ctx.fillRect(x - 2, y - 2, 4, 4);
        drawing = true;
      });
      ctx.stroke();
      ctx.lineWidth = 1;
    }
    ctx.strokeStyle = "#90a4ae";
    ctx.strokeRect(left, top, plotW, plotH);
  }

  function historyTable(trend) {
    const rows = trend.hours.map((hour, i) => {
      const tr = el("tr");
      const when = new Date(hour);
      tr.append(el("td", null, `${DATE.format(when)} ${clock(hour).slice(0, 5)}`));
      for (const f of ["CAS", "DAS", "breathing"]) tr.append(el("td", null, trend.onsets[f][i]));
      tr.append(el("td", null, trend.poor_signal_min[i]));
      tr.append(el("td", null, trend.rate_bpm[i] === null ? "–" : trend.rate_bpm[i]));
      return tr;
    }).reverse();  // the latest hour first
    $("#history-table tbody").replaceChildren(...rows);
  }

  $("#panel-close").addEventListener("click", closePanel);
  $("#history-hours").addEventListener("change", loadHistory);

  setInterval(() => {
    document.querySelectorAll("#alarms .age").forEach((node) => {
      node.textContent = `(${age(node.dataset.start)})`;
    });
    document.querySelectorAll("[data-quiet-at]").forEach((node) => {
      const seconds = Math.round((Date.now() - Number(node.dataset.quietAt)) / 1000);
      node.textContent = `${node.dataset.prefix}${seconds} s`;
    });
  }, 1000);

  // -- the stream -----------------------------------------------------------------------
  let liveLimit = 60;

  function applySnapshot(snapshot) {
    heartbeatMs = (snapshot.heartbeat_s || heartbeatMs / 1000) * 1000;
    pauseMs = (snapshot.audio_pause_s || pauseMs / 1000) * 1000;
    CLASSES = snapshot.classes || {};
    ward.user = snapshot.user;
    ward.site = snapshot.site;
    ward.trendSeq = snapshot.trend_seq || 0;
    ward.devices.clear();
    ward.beds.clear();
    alarmRows.clear();
    $("#devices").replaceChildren();
    $("#empty").hidden = false;
    $("#site").textContent = `· ${snapshot.site}`;
    $("#user").textContent = `${snapshot.user.name}: ` +
      (snapshot.user.can_acknowledge ? "may view and acknowledge" : "view only") +
      (snapshot.user.can_listen ? "" : " (no audio: no named user)");
    snapshot.devices.forEach(renderDevice);
    snapshot.beds.forEach(renderBed);
    const longest = Math.max(0, ...snapshot.beds.map((b) => (b.live || []).length));
    liveLimit = Math.max(liveLimit, longest);
    renderAlarms(snapshot.alarms);
    renderHeader(snapshot);
    window.lwReady = true;
    // when the first snapshot was on the screen (ms since the page's navigation started)
    afterPaint(() => {
      if (window.lwReadyMs === null) window.lwReadyMs = performance.now();
    });
  }

  function applyUpdate(update) {
    window.lwMessages += 1;
    update.devices.forEach(renderDevice);
    update.beds.forEach(renderBed);
    update.live.forEach((item) => addLive(item, liveLimit));
    (update.trend || []).forEach(addTrend);
    if (update.alarms) renderAlarms(update.alarms);
    renderHeader(update);
  }

  // The stream is live while something arrives (a snapshot, an update or a heartbeat) at
  // least every HEARTBEATS_MISSED heartbeats; else it is closed and a new one opened (once
  // per that time), and the page says since when nothing came.
  let heartbeatMs = 5000;  // until the snapshot says
  let source = null;
  let lastBeat = Date.now();
  let openedAt = Date.now();

  function beat() {
    lastBeat = Date.now();
    if (!streamLive) setConnection("live");
  }

  function watchStream() {
    const limitMs = heartbeatMs * HEARTBEATS_MISSED;
    const quietMs = Date.now() - lastBeat;
    if (quietMs <= limitMs) return;
    const badge = $("#connection");
    if (!badge.dataset.quietAt) {
      setConnection("stalled");  // the broker's state is not known meanwhile: "broker ?"
      counting(badge, "no heartbeat from the server for ", quietMs / 1000);
    }
    if (Date.now() - openedAt > limitMs) connect();
  }

  function connect() {
    if (source) source.close();
    openedAt = Date.now();
    source = new EventSource("/events");
    source.addEventListener("snapshot", (e) => { beat(); applySnapshot(JSON.parse(e.data)); });
    source.addEventListener("update", (e) => { beat(); applyUpdate(JSON.parse(e.data)); });
    source.addEventListener("heartbeat", () => { window.lwHeartbeats += 1; beat(); });
    source.onerror = () => setConnection("reconnecting");  // EventSource reconnects by itself
  }

  connect();
  setInterval(watchStream, 500);
})();
