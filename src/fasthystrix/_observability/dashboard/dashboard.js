/* fasthystrix dashboard: reads a Hystrix metrics stream (SSE) and draws one card per command and per
 * thread pool, as the Netflix Hystrix dashboard does. Plain browser JavaScript, no dependencies, works offline.
 *
 * Every string that comes from the stream (command names above all) is written with textContent,
 * setAttribute or dataset, never parsed as HTML: a command name is user data.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var DEFAULT_STREAM = "hystrix.stream";
  var SPARK_WINDOW_MS = 2 * 60 * 1000; // the Netflix dashboard's two minutes of history
  var SPARK_MIN_SPAN_MS = 10 * 1000; // the narrowest time span the sparkline stretches over
  var SPARK_MAX_POINTS = 200;
  var RESORT_MS = 5000; // re-sort in the background, but not so often that cards jump under the pointer
  var STALE_MS = 10000; // Turbine's read timeout: a card not updated for this long is dimmed
  var RETRY_MIN_MS = 500;
  var RETRY_MAX_MS = 30000;

  // Circle geometry (viewBox units of the chart): radius grows with the square root of req/s per host.
  var CHART_W = 150;
  var CHART_H = 84;
  var CIRCLE_MIN_R = 5;
  var CIRCLE_MAX_R = 38;
  var COMMAND_RATE_DOMAIN = 400; // req/s per host at which the command circle is largest (Netflix)
  var POOL_RATE_DOMAIN = 2000; // executions/s per host for the pool circle (Netflix)

  // Health colours: green up to 10 % errors, then yellow (25 %), orange (40 %) and red from 50 % (Netflix).
  var HEALTH_STOPS = [
    [10, [44, 160, 44]],
    [25, [255, 204, 0]],
    [40, [255, 153, 0]],
    [50, [214, 39, 40]],
  ];
  // Pool circles: hystrix-go has no queue, so colour by how full the pool is (active / max, percent).
  var POOL_STOPS = [
    [50, [44, 160, 44]],
    [70, [255, 204, 0]],
    [85, [255, 153, 0]],
    [100, [214, 39, 40]],
  ];

  // The error percentage's own colour from 10 % up (below, the theme's text colour): amber, orange, red.
  var ERROR_TEXT_STOPS = [
    [10, [222, 165, 0]],
    [35, [255, 140, 0]],
    [50, [224, 49, 49]],
  ];

  var COMMAND_COUNTS = [
    // [class suffix, title, column]
    ["success", "Successful request count", 0],
    ["short-circuited", "Short-circuited request count", 0],
    ["bad-request", "Bad request count", 0],
    ["timeout", "Timed-out request count", 1],
    ["rejected", "Rejected request count (thread pool or semaphore)", 1],
    ["failure", "Failure request count", 1],
  ];

  var state = {
    source: null,
    streamUrl: "",
    retryDelay: RETRY_MIN_MS,
    retryTimer: 0,
    commands: new Map(), // name -> card
    pools: new Map(), // name -> card
    rejected: new Map(), // command name -> rejected count, shown on the pool of the same name
    sortKey: "error",
    sortDesc: true,
    filter: "",
    lastUpdate: 0,
  };

  var $ = function (id) {
    return document.getElementById(id);
  };
  var dom = {
    commands: $("commands"),
    pools: $("pools"),
    commandsEmpty: $("commands-empty"),
    poolsEmpty: $("pools-empty"),
    commandCount: $("command-count"),
    poolCount: $("pool-count"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    form: $("stream-form"),
    url: $("stream-url"),
    filter: $("filter"),
    streamShown: $("stream-shown"),
    lastUpdate: $("last-update"),
  };

  /* ---------- small helpers ---------- */

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, String(attrs[key]));
    });
    return node;
  }

  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }

  // Numbers may arrive as strings (Turbine 2 turns propertyValue_* into strings); anything else counts as 0.
  function num(value) {
    var n = typeof value === "number" ? value : parseFloat(value);
    return isFinite(n) ? n : 0;
  }

  function truthy(value) {
    return value === true || value === "true" || value === 1;
  }

  function commas(n) {
    return Math.round(n).toLocaleString("en-US");
  }

  function oneDecimal(n) {
    return (Math.round(n * 10) / 10).toFixed(1);
  }

  function interpolate(stops, value) {
    if (value <= stops[0][0]) return rgb(stops[0][1]);
    for (var i = 1; i < stops.length; i++) {
      if (value <= stops[i][0]) {
        var lo = stops[i - 1];
        var hi = stops[i];
        var f = (value - lo[0]) / (hi[0] - lo[0]);
        return rgb(
          lo[1].map(function (c, k) {
            return c + (hi[1][k] - c) * f;
          })
        );
      }
    }
    return rgb(stops[stops.length - 1][1]);
  }

  function rgb(c) {
    return "rgb(" + c.map(Math.round).join(", ") + ")";
  }

  function circleRadius(ratePerHost, domain) {
    var f = Math.sqrt(Math.min(Math.max(ratePerHost, 0), domain) / domain);
    return CIRCLE_MIN_R + (CIRCLE_MAX_R - CIRCLE_MIN_R) * f;
  }

  // Averages over hosts: the stream sums across hosts (Turbine) and reports how many it summed.
  function perHost(value, hosts, decimal) {
    var v = num(value) / hosts;
    return decimal ? Math.round(v * 10) / 10 : Math.floor(v);
  }

  function windowSeconds(data) {
    var ms = num(data.propertyValue_metricsRollingStatisticalWindowInMilliseconds);
    return ms > 0 ? ms / 1000 : 10;
  }

  /* ---------- card construction (once per name) ---------- */

  function buildChart(card) {
    var chart = svg("svg", {
      class: "chart",
      viewBox: "0 0 " + CHART_W + " " + CHART_H,
      preserveAspectRatio: "xMidYMid meet",
      "aria-hidden": "true",
    });
    card.circle = svg("circle", { class: "health", cx: 46, cy: CHART_H / 2, r: CIRCLE_MIN_R });
    card.area = svg("path", { class: "sparkline-area", d: "" });
    card.line = svg("path", { class: "sparkline", d: "" });
    chart.appendChild(card.circle);
    chart.appendChild(card.area);
    chart.appendChild(card.line);
    card.spark = [];
    return chart;
  }

  function buildHead(card, name, withStatus) {
    var head = el("div", "card-head");
    var title = el("h3", "name", name);
    title.setAttribute("title", name);
    head.appendChild(title);
    if (withStatus) {
      card.status = el("span", "status", "Closed");
      card.forcedClosed = el("span", "forced-closed", "Forced closed");
      card.forcedClosed.hidden = true;
      head.appendChild(card.forcedClosed);
      head.appendChild(card.status);
    }
    return head;
  }

  function stat(parent, label, className, unit) {
    var row = el("div", "stat");
    row.appendChild(el("span", "stat-label", label));
    var value = el("span", "stat-value " + className, "-");
    row.appendChild(value);
    if (unit) row.appendChild(el("span", "stat-unit", unit));
    parent.appendChild(row);
    return value;
  }

  function buildRates(card) {
    var rates = el("div", "rates");
    var host = el("span", "rate-line");
    host.setAttribute("title", "Request rate per second per reporting host");
    host.appendChild(el("span", "rate-label", "Host"));
    card.rateHost = el("span", "rate-host", "0.0");
    host.appendChild(card.rateHost);
    host.appendChild(el("span", "rate-unit", "/s"));
    var cluster = el("span", "rate-line");
    cluster.setAttribute("title", "Request rate per second for the cluster");
    cluster.appendChild(el("span", "rate-label", "Cluster"));
    card.rate = el("span", "rate", "0.0");
    cluster.appendChild(card.rate);
    cluster.appendChild(el("span", "rate-unit", "/s"));
    rates.appendChild(host);
    rates.appendChild(cluster);
    return rates;
  }

  function newCommandCard(name) {
    var card = { name: name, kind: "command", lastSeen: 0, rateValue: 0, errorValue: 0 };
    var root = el("div", "card command");
    root.dataset.name = name;
    root.dataset.status = "closed";
    card.el = root;
    root.appendChild(buildHead(card, name, true));

    var body = el("div", "card-body");
    body.appendChild(buildChart(card));
    var side = el("div", "side");
    var err = el("div", "error-block");
    card.errorBlock = err;
    err.setAttribute("title", "Error percentage [timed-out + rejected + failure + short-circuited / total]");
    card.errorPercent = el("span", "error-percent", "0.0");
    err.appendChild(card.errorPercent);
    err.appendChild(el("span", "error-unit", "%"));
    side.appendChild(err);
    var counts = el("div", "counts");
    var cols = [el("div", "count-col"), el("div", "count-col")];
    card.counts = {};
    COMMAND_COUNTS.forEach(function (spec) {
      var c = el("span", "count count-" + spec[0], "0");
      c.setAttribute("title", spec[1]);
      c.dataset.value = "0";
      card.counts[spec[0]] = c;
      cols[spec[2]].appendChild(c);
    });
    counts.appendChild(cols[1]);
    counts.appendChild(cols[0]);
    side.appendChild(counts);
    body.appendChild(side);
    root.appendChild(body);

    root.appendChild(buildRates(card));

    var table = el("div", "latency");
    table.setAttribute("title", "Execution latency (ms) over the last minute, averaged over hosts");
    card.hosts = stat(table, "Hosts", "hosts");
    card.latency90 = stat(table, "90th", "latency-90", "ms");
    card.latency50 = stat(table, "Median", "latency-50", "ms");
    card.latency99 = stat(table, "99th", "latency-99", "ms");
    card.latencyMean = stat(table, "Mean", "latency-mean", "ms");
    card.latency995 = stat(table, "99.5th", "latency-99-5", "ms");
    root.appendChild(table);

    var fallback = el("div", "fallback");
    fallback.setAttribute("title", "Fallbacks that succeeded / failed");
    fallback.appendChild(el("span", "stat-label", "Fallback"));
    card.fallbackSuccess = el("span", "count-fallback-success", "0");
    card.fallbackFailure = el("span", "count-fallback-failure", "0");
    fallback.appendChild(card.fallbackSuccess);
    fallback.appendChild(el("span", "stat-unit", "ok"));
    fallback.appendChild(card.fallbackFailure);
    fallback.appendChild(el("span", "stat-unit", "failed"));
    card.concurrent = el("span", "concurrent", "0");
    fallback.appendChild(el("span", "stat-label sep", "In flight"));
    fallback.appendChild(card.concurrent);
    root.appendChild(fallback);
    return card;
  }

  function newPoolCard(name) {
    var card = { name: name, kind: "pool", lastSeen: 0, rateValue: 0, errorValue: 0 };
    var root = el("div", "card pool");
    root.dataset.name = name;
    card.el = root;
    root.appendChild(buildHead(card, name, false));

    var body = el("div", "card-body");
    body.appendChild(buildChart(card));
    var side = el("div", "side");
    var usage = el("div", "usage");
    usage.setAttribute("title", "Active / maximum concurrent executions");
    card.active = el("span", "active", "0");
    card.max = el("span", "max", "0");
    usage.appendChild(card.active);
    usage.appendChild(el("span", "usage-sep", "/"));
    usage.appendChild(card.max);
    usage.appendChild(el("span", "usage-label", "active"));
    side.appendChild(usage);
    var bar = el("div", "bar");
    card.barFill = el("div", "bar-fill");
    bar.appendChild(card.barFill);
    side.appendChild(bar);
    var stats = el("div", "pool-stats");
    card.maxActive = stat(stats, "Max active", "max-active");
    card.executed = stat(stats, "Executed", "executed");
    card.rejected = stat(stats, "Rejected", "rejected");
    card.queued = stat(stats, "Queued", "queued");
    side.appendChild(stats);
    body.appendChild(side);
    root.appendChild(body);
    root.appendChild(buildRates(card));
    return card;
  }

  /* ---------- updates ---------- */

  function updateSparkline(card, value, now) {
    var points = card.spark;
    var last = points[points.length - 1];
    // At most SPARK_MAX_POINTS over the two minutes, however short the stream's interval.
    if (last && now - last.t < SPARK_WINDOW_MS / SPARK_MAX_POINTS) last.v = value;
    else points.push({ t: now, v: value });
    while (points.length > SPARK_MAX_POINTS || (points.length && points[0].t < now - SPARK_WINDOW_MS)) {
      points.shift();
    }
    if (points.length < 2) {
      card.line.setAttribute("d", "");
      card.area.setAttribute("d", "");
      return;
    }
    var max = 0;
    points.forEach(function (p) {
      if (p.v > max) max = p.v;
    });
    // Until two minutes of history exist the line spans what there is (at least 10 s), so a fresh
    // card shows a readable line instead of a sliver at the right edge.
    var span = Math.min(Math.max(now - points[0].t, SPARK_MIN_SPAN_MS), SPARK_WINDOW_MS);
    var top = 8;
    var bottom = CHART_H - 4;
    var scaleY = max > 0 ? (bottom - top) / (max * 1.1) : 0;
    var xOf = function (t) {
      return (CHART_W * (t - (now - span))) / span;
    };
    var d = "";
    points.forEach(function (p, i) {
      d += (i ? " L" : "M") + xOf(p.t).toFixed(1) + " " + (bottom - p.v * scaleY).toFixed(1);
    });
    var x0 = xOf(points[0].t).toFixed(1);
    var x1 = xOf(points[points.length - 1].t).toFixed(1);
    card.line.setAttribute("d", d);
    card.area.setAttribute("d", d + " L" + x1 + " " + bottom + " L" + x0 + " " + bottom + " Z");
  }

  function updateCircle(card, radius, colour) {
    card.circle.setAttribute("r", radius.toFixed(1));
    card.circle.setAttribute("fill", colour);
  }

  function circuitStatus(data) {
    if (truthy(data.propertyValue_circuitBreakerForceOpen)) return ["forced-open", "Forced open"];
    var open = data.isCircuitBreakerOpen;
    var hosts = data.reportingHosts;
    if (open === true || open === "true" || (typeof open === "number" && open > 0 && open === hosts)) {
      return ["open", "Open"];
    }
    if (open === false || open === "false" || open === 0 || open === undefined || open === null) {
      return ["closed", "Closed"];
    }
    // Turbine: some hosts open, some closed, as a {"true": n, "false": m} map or its JSON string.
    var counts = open;
    if (typeof open === "string") {
      try {
        counts = JSON.parse(open);
      } catch (e) {
        counts = null;
      }
    }
    if (counts && typeof counts === "object") {
      return ["partial", "Open " + num(counts["true"]) + " \u00b7 Closed " + num(counts["false"])];
    }
    return ["partial", String(open).replace("true", "Open").replace("false", "Closed")];
  }

  function rejectedCount(data) {
    // hystrix-go reports its rejections as thread-pool rejections; a semaphore-isolated port may use the
    // semaphore counter. Only one of the two is ever non-zero for a command.
    return Math.max(num(data.rollingCountThreadPoolRejected), num(data.rollingCountSemaphoreRejected));
  }

  function updateCommand(data, now) {
    var name = String(data.name);
    var card = state.commands.get(name);
    var added = false;
    if (!card) {
      card = newCommandCard(name);
      state.commands.set(name, card);
      dom.commands.appendChild(card.el);
      added = true;
    }
    var hosts = data.reportingHosts;
    var seconds = windowSeconds(data);
    var requests = Math.max(num(data.requestCount), 0);
    var rate = Math.round((requests / seconds) * 10) / 10;
    var rateHost = Math.round((requests / seconds / hosts) * 10) / 10;
    var error = perHost(data.errorPercentage, hosts, true);
    var rejected = rejectedCount(data);
    state.rejected.set(name, rejected);
    card.lastSeen = now;
    card.rateValue = rate;
    card.errorValue = error;

    var values = {
      success: num(data.rollingCountSuccess),
      "short-circuited": num(data.rollingCountShortCircuited),
      "bad-request": num(data.rollingCountBadRequests),
      timeout: num(data.rollingCountTimeout),
      rejected: rejected,
      failure: num(data.rollingCountFailure),
    };
    Object.keys(values).forEach(function (key) {
      var node = card.counts[key];
      node.dataset.value = String(values[key]);
      setText(node, commas(values[key]));
    });
    setText(card.errorPercent, oneDecimal(error));
    // Below 10 % the theme's text colours apply (muted at 0); above, amber to orange to red (Netflix).
    card.errorBlock.dataset.level = error <= 0 ? "zero" : error < 10 ? "low" : "high";
    card.errorBlock.style.color = error < 10 ? "" : interpolate(ERROR_TEXT_STOPS, error);
    setText(card.rate, oneDecimal(rate));
    setText(card.rateHost, oneDecimal(rateHost));

    var status = circuitStatus(data);
    card.el.dataset.status = status[0];
    card.status.dataset.status = status[0];
    setText(card.status, status[1]);
    card.forcedClosed.hidden = !truthy(data.propertyValue_circuitBreakerForceClosed);

    var latency = data.latencyExecute && typeof data.latencyExecute === "object" ? data.latencyExecute : {};
    setText(card.hosts, hosts);
    setText(card.latency50, perHost(latency["50"], hosts, false));
    setText(card.latency90, perHost(latency["90"], hosts, false));
    setText(card.latency99, perHost(latency["99"], hosts, false));
    setText(card.latency995, perHost(latency["99.5"], hosts, false));
    setText(card.latencyMean, perHost(data.latencyExecute_mean, hosts, false));
    setText(card.fallbackSuccess, commas(num(data.rollingCountFallbackSuccess)));
    setText(card.fallbackFailure, commas(num(data.rollingCountFallbackFailure)));
    setText(card.concurrent, commas(num(data.currentConcurrentExecutionCount)));

    card.el.dataset.rate = String(rate);
    card.el.dataset.errorPercent = String(error);
    card.el.removeAttribute("data-stale");
    updateCircle(card, circleRadius(rateHost, COMMAND_RATE_DOMAIN), interpolate(HEALTH_STOPS, error));
    updateSparkline(card, rate, now);

    var pool = state.pools.get(name);
    if (pool) setText(pool.rejected, commas(rejected));
    if (added) cardsChanged("command");
  }

  function updatePool(data, now) {
    var name = String(data.name);
    var card = state.pools.get(name);
    var added = false;
    if (!card) {
      card = newPoolCard(name);
      state.pools.set(name, card);
      dom.pools.appendChild(card.el);
      added = true;
    }
    var hosts = data.reportingHosts;
    var seconds = windowSeconds(data);
    var executed = Math.max(num(data.rollingCountThreadsExecuted), 0);
    var rate = Math.round((executed / seconds) * 10) / 10;
    var rateHost = Math.round((executed / seconds / hosts) * 10) / 10;
    var active = num(data.currentActiveCount);
    var max = num(data.currentMaximumPoolSize);
    var used = max > 0 ? Math.min((active / max) * 100, 100) : active > 0 ? 100 : 0;
    card.lastSeen = now;
    card.rateValue = rate;

    setText(card.active, commas(active));
    setText(card.max, commas(max));
    setText(card.maxActive, commas(num(data.rollingMaxActiveThreads)));
    setText(card.executed, commas(executed));
    setText(card.queued, commas(num(data.currentQueueSize)));
    setText(card.rejected, commas(state.rejected.get(name) || 0));
    setText(card.rate, oneDecimal(rate));
    setText(card.rateHost, oneDecimal(rateHost));
    card.barFill.style.width = used.toFixed(1) + "%";
    card.barFill.style.backgroundColor = interpolate(POOL_STOPS, used);
    card.el.dataset.rate = String(rate);
    card.el.removeAttribute("data-stale");
    updateCircle(card, circleRadius(rateHost, POOL_RATE_DOMAIN), interpolate(POOL_STOPS, used));
    updateSparkline(card, rate, now);
    if (added) cardsChanged("pool");
  }

  function removeCard(map, name) {
    var card = map.get(name);
    if (card) {
      card.el.remove();
      map.delete(name);
      cardsChanged();
    }
  }

  function handleMessage(raw) {
    var data;
    try {
      data = JSON.parse(raw);
    } catch (e) {
      return; // not JSON: a foreign stream; nothing to show
    }
    if (!data || typeof data !== "object" || data.name === undefined || data.name === null) return;
    data.reportingHosts = num(data.reportingHosts) || 1;
    var now = Date.now();
    var deleted = data.deleteData === true || data.deleteData === "true";
    if (data.type === "HystrixCommand") {
      if (deleted) removeCard(state.commands, String(data.name));
      else updateCommand(data, now);
    } else if (data.type === "HystrixThreadPool") {
      if (deleted) removeCard(state.pools, String(data.name));
      else updatePool(data, now);
    } else {
      return; // "meta", collapsers, ...: not shown, as in the Netflix dashboard
    }
    state.lastUpdate = now;
  }

  /* ---------- sorting and filtering ---------- */

  function compareCards(a, b) {
    var byName = a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    var order; // ascending
    if (state.sortKey === "name") {
      order = byName;
    } else if (state.sortKey === "volume" || a.kind === "pool") {
      order = a.rateValue - b.rateValue;
    } else {
      order = a.errorValue - b.errorValue || a.rateValue - b.rateValue;
    }
    if (state.sortDesc) order = -order;
    return order || byName;
  }

  function sortContainer(container, map) {
    var cards = Array.from(map.values()).sort(compareCards);
    var current = Array.from(container.querySelectorAll(":scope > .card"));
    var same =
      current.length === cards.length &&
      cards.every(function (card, i) {
        return current[i] === card.el;
      });
    if (same) return;
    cards.forEach(function (card) {
      container.appendChild(card.el);
    });
  }

  function sortAll() {
    sortContainer(dom.commands, state.commands);
    sortContainer(dom.pools, state.pools);
  }

  function applyFilter() {
    var needle = state.filter.toLowerCase();
    [
      [state.commands, dom.commandCount],
      [state.pools, dom.poolCount],
    ].forEach(function (pair) {
      var shown = 0;
      pair[0].forEach(function (card) {
        var match = !needle || card.name.toLowerCase().indexOf(needle) !== -1;
        card.el.hidden = !match;
        if (match) shown++;
      });
      setText(pair[1], needle ? shown + " / " + pair[0].size : pair[0].size);
    });
  }

  function cardsChanged() {
    dom.commandsEmpty.hidden = state.commands.size > 0;
    dom.poolsEmpty.hidden = state.pools.size > 0;
    sortAll();
    applyFilter();
  }

  function setSort(key) {
    if (state.sortKey === key) {
      state.sortDesc = !state.sortDesc;
    } else {
      state.sortKey = key;
      state.sortDesc = key !== "name";
    }
    document.querySelectorAll("[data-sort]").forEach(function (button) {
      var active = button.dataset.sort === state.sortKey;
      button.setAttribute("aria-pressed", active ? "true" : "false");
      button.dataset.direction = active ? (state.sortDesc ? "desc" : "asc") : "";
    });
    document.body.dataset.sort = state.sortKey;
    document.body.dataset.sortDirection = state.sortDesc ? "desc" : "asc";
    sortAll();
  }

  /* ---------- connection ---------- */

  function setConnection(status, text) {
    dom.connection.dataset.state = status;
    dom.connection.setAttribute("title", state.streamUrl);
    setText(dom.connectionText, text);
    var waiting = status === "connected" ? "Connected: no command has reported yet." : "Waiting for the stream\u2026";
    setText(dom.commandsEmpty, waiting);
    setText(dom.poolsEmpty, waiting);
  }

  function clearCards() {
    state.commands.forEach(function (card) {
      card.el.remove();
    });
    state.pools.forEach(function (card) {
      card.el.remove();
    });
    state.commands.clear();
    state.pools.clear();
    state.rejected.clear();
    cardsChanged();
  }

  function connect(url) {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.retryTimer);
    state.streamUrl = url;
    setText(dom.streamShown, url);
    if (dom.connection.dataset.state !== "reconnecting") setConnection("connecting", "Connecting");
    var source;
    try {
      source = new EventSource(url);
    } catch (e) {
      setConnection("error", "Invalid stream URL");
      return;
    }
    state.source = source;
    source.onopen = function () {
      if (source !== state.source) return;
      state.retryDelay = RETRY_MIN_MS;
      setConnection("connected", "Connected");
    };
    source.onmessage = function (event) {
      if (source !== state.source) return;
      if (dom.connection.dataset.state !== "connected") setConnection("connected", "Connected");
      handleMessage(event.data);
    };
    source.onerror = function () {
      if (source !== state.source) return;
      // Reconnect on our own schedule rather than the browser's (3 s, and never after an HTTP
      // error): quickly at first, then backing off while the stream stays away.
      source.close();
      setConnection("reconnecting", "Reconnecting");
      state.retryTimer = setTimeout(function () {
        if (source === state.source) connect(url);
      }, state.retryDelay);
      state.retryDelay = Math.min(state.retryDelay * 2, RETRY_MAX_MS);
    };
  }

  function resolveStream(value) {
    try {
      return new URL(value || DEFAULT_STREAM, window.location.href).href;
    } catch (e) {
      return null;
    }
  }

  function onSubmit(event) {
    event.preventDefault();
    var value = dom.url.value.trim() || DEFAULT_STREAM;
    var url = resolveStream(value);
    if (!url) {
      setConnection("error", "Invalid stream URL");
      return;
    }
    var page = new URL(window.location.href);
    if (value === DEFAULT_STREAM) page.searchParams.delete("stream");
    else page.searchParams.set("stream", value);
    window.history.replaceState(null, "", page.href);
    clearCards();
    state.retryDelay = RETRY_MIN_MS;
    setConnection("connecting", "Connecting");
    connect(url);
  }

  /* ---------- periodic work ---------- */

  function tick() {
    var now = Date.now();
    [state.commands, state.pools].forEach(function (map) {
      map.forEach(function (card) {
        if (card.lastSeen && now - card.lastSeen > STALE_MS) card.el.dataset.stale = "true";
      });
    });
    if (state.lastUpdate) {
      var seconds = Math.round((now - state.lastUpdate) / 1000);
      setText(
        dom.lastUpdate,
        "Last update " + new Date(state.lastUpdate).toLocaleTimeString() + (seconds > 2 ? " (" + seconds + " s ago)" : "")
      );
    }
  }

  /* ---------- start ---------- */

  var initial = new URLSearchParams(window.location.search).get("stream") || DEFAULT_STREAM;
  dom.url.value = initial;
  dom.form.addEventListener("submit", onSubmit);
  ["input", "change", "search"].forEach(function (type) {
    dom.filter.addEventListener(type, function () {
      if (state.filter === dom.filter.value) return;
      state.filter = dom.filter.value;
      applyFilter();
    });
  });
  document.querySelectorAll("[data-sort]").forEach(function (button) {
    button.addEventListener("click", function () {
      setSort(button.dataset.sort);
    });
  });
  state.sortKey = "";
  setSort("error");
  setInterval(sortAll, RESORT_MS);
  setInterval(tick, 1000);
  var start = resolveStream(initial);
  if (start) connect(start);
  else setConnection("error", "Invalid stream URL");
})();
