// Kiosk page for stt_server: microphone → MediaRecorder → native protocol (/v1/listen).
// Plain script, no dependencies, so the page works offline and under a strict CSP.
// All URLs are relative to the page, so it also works behind a TLS proxy or under a path prefix.
//
// Fragment options (never sent to the server): #kiosk=1 (controls hidden, large text, starts by
// itself, recovers from server restarts), token=..., provider=..., language=...
"use strict";

(() => {
  const TOKEN_KEY = "stt_server.token";
  const PROVIDER_KEY = "stt_server.provider";
  const LANGUAGE_KEY = "stt_server.language";
  const CHUNK_MS = 250;            // MediaRecorder timeslice, as the seed's client used
  const FINISH_TIMEOUT_MS = 30000; // wait this long for the last finals after Stop
  const MIME_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/ogg"];
  // Speech engines do best on the plain signal: browser noise suppression and automatic gain
  // smear the quiet starts of words. Echo cancellation stays on for kiosks with a speaker.
  const AUDIO_CONSTRAINTS = {channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false};
  // Reconnect after these waits (then the last, forever), each ±20 %, so a room full of kiosks
  // does not hit a restarted server in the same second.
  const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  // Closes a kiosk recovers from by itself: going away (restart, drain), connection lost,
  // server error or idle timeout, service restart, try again later.
  const RETRY_CLOSE_CODES = new Set([1001, 1006, 1011, 1012, 1013, 1014]);
  const MAX_FINALS = 5000;         // an unattended kiosk runs for days: keep the newest only
  const LEVEL_INTERVAL_MS = 80;
  const UNREACHABLE = "Cannot reach the speech server. It may be restarting, or this device may have lost its network connection.";

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), provider: $("provider"), language: $("language"), languageOther: $("language-other"),
    token: $("token"), toggle: $("toggle"), form: $("controls"), error: $("error"), final: $("final"),
    interim: $("interim"), placeholder: $("placeholder"), meta: $("meta"), clear: $("clear"), copy: $("copy"),
    level: $("level"), transcript: document.querySelector(".transcript"),
    downloads: [$("download-txt"), $("download-vtt"), $("download-srt")],
  };

  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const kiosk = ["1", "true", "yes"].includes((fragment.get("kiosk") || "").toLowerCase());

  let session = null;      // {ws, recorder, stream, stopping, opened, finishTimer, wakeLock, openedAt, offset}
  let finals = [];         // {text, start, end}: seconds since the transcript began
  let transcriptOrigin = null; // performance.now() when the first session of this transcript opened
  let providerInfo = null; // the last /v1/providers answer
  // wanted: someone pressed Start (or kiosk mode did) and has not pressed Stop; while it holds,
  // a lost connection is retried.
  const retry = {wanted: false, attempt: 0, timer: null, countdown: null};
  const meter = {context: null, source: null, analyser: null, timer: null, samples: null};

  // --- small helpers ---------------------------------------------------------------------------

  function store(key, value) {
    try { localStorage.setItem(key, value); } catch (_) { /* private mode: not remembered */ }
  }
  function load(key) {
    try { return localStorage.getItem(key) || ""; } catch (_) { return ""; }
  }
  function setState(name, label) {
    ui.state.dataset.state = name;
    ui.state.textContent = label;
  }
  function showError(message, tone = "error") {
    ui.error.textContent = message;
    ui.error.hidden = !message;
    ui.error.dataset.tone = tone; // "notice": the page is handling it (reconnecting); "error": a person must
  }
  function setRunning(running) {
    ui.toggle.dataset.running = String(running);
    ui.toggle.textContent = running ? "Stop" : "Start";
    for (const input of [ui.provider, ui.language, ui.languageOther, ui.token]) input.disabled = running;
  }
  function render(interimText) {
    ui.final.textContent = finals.map((entry) => entry.text).join(" ");
    ui.interim.textContent = interimText || "";
    ui.placeholder.hidden = finals.length > 0 || Boolean(interimText);
    for (const button of [ui.copy, ...ui.downloads]) button.disabled = finals.length === 0;
    ui.transcript.scrollTop = ui.transcript.scrollHeight; // auto-scroll: the newest words in view
  }
  function endpoint(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }
  function primary(tag) {
    return String(tag || "").replace("_", "-").split("-")[0].toLowerCase();
  }
  function languageName(tag) {
    try { // "English (en-US)": the language's name stays short enough for a phone's menu
      const name = new Intl.DisplayNames([navigator.language || "en"], {type: "language"}).of(primary(tag));
      return name && name !== primary(tag) ? `${name} (${tag})` : tag;
    } catch (_) { return tag; }
  }
  function sentence(text) {
    const trimmed = String(text).trim();
    return /[.!?…]$/.test(trimmed) ? trimmed : `${trimmed}.`;
  }

  // --- talking to the server over plain HTTP ---------------------------------------------------

  // A refusal the page can explain: the server's own message, its HTTP status, and whether
  // waiting may help (the server unreachable, restarting or full).
  class Refusal extends Error {
    constructor(message, {status = 0, code = "", transient = false} = {}) {
      super(message);
      Object.assign(this, {status, code, transient});
    }
  }

  async function getJson(path, token) {
    const headers = token ? {Authorization: `Bearer ${token}`} : {};
    let response;
    try {
      response = await fetch(new URL(path, window.location.href), {headers, cache: "no-store"});
    } catch (_) { // the browser says only "Failed to fetch": the server is down or unreachable
      throw new Refusal(UNREACHABLE, {transient: true});
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const transient = response.status >= 500; // 503: full or draining; 502/504: a proxy without its server
      const fallback = transient ? "The speech server is not available right now." :
        `The server refused the request (HTTP ${response.status}).`;
      throw new Refusal(body.message || fallback, {status: response.status, code: body.error || "", transient});
    }
    return body;
  }

  function explain(refusal) {
    if (refusal.status === 401) return "The server rejected this token. Check it, or ask for a new one.";
    if (refusal.code === "provider_forbidden") return `This token may not use that engine: ${refusal.message}`;
    if (refusal.status === 400) return sentence(`The server cannot start this session: ${refusal.message}`);
    if (refusal.status === 503) return sentence(`The speech server cannot take a session right now: ${refusal.message}`);
    return sentence(refusal.message);
  }

  // --- providers and languages -----------------------------------------------------------------

  function languagesOf(name) {
    const entry = (providerInfo?.details || []).find((detail) => detail.name === name);
    return entry && Array.isArray(entry.languages) ? entry.languages : null; // null: any tag
  }

  function fillProviders(info) {
    providerInfo = info;
    const wanted = ui.provider.value || fragment.get("provider") || load(PROVIDER_KEY) || info.default;
    ui.provider.replaceChildren(...info.providers.map((name) => new Option(name, name)));
    ui.provider.value = info.providers.includes(wanted) ? wanted : info.default;
    ui.provider.disabled = info.providers.length === 0 || ui.toggle.dataset.running === "true";
    fillLanguages();
  }

  // The page offers only what the engine serves: a menu of its languages, or free text when
  // the engine takes any tag.
  function fillLanguages() {
    const wanted = currentLanguage() || providerInfo?.language || "en-US";
    const languages = languagesOf(ui.provider.value);
    ui.language.hidden = !languages;
    ui.languageOther.hidden = Boolean(languages);
    $("language-label").htmlFor = languages ? "language" : "language-other";
    if (!languages) {
      ui.languageOther.value = wanted;
      return;
    }
    // One option per language; the tag sent is the wanted one, or the server's default, when
    // its language matches (en-US rather than a bare "en").
    const tags = languages.map((code) => [wanted, providerInfo?.language].find((tag) => primary(tag) === code) || code);
    ui.language.replaceChildren(...tags.map((tag) => new Option(languageName(tag), tag)));
    ui.language.value = tags.find((tag) => primary(tag) === primary(wanted)) || tags[0] || "";
  }

  function currentLanguage() {
    return (ui.language.hidden ? ui.languageOther.value : ui.language.value).trim();
  }

  // --- the microphone level meter --------------------------------------------------------------

  function startMeter(stream) {
    try {
      meter.context = meter.context || new AudioContext();
      meter.context.resume().catch(() => {});
      meter.source = meter.context.createMediaStreamSource(stream);
      meter.analyser = meter.context.createAnalyser();
      meter.analyser.fftSize = 1024;
      meter.samples = new Float32Array(meter.analyser.fftSize);
      meter.source.connect(meter.analyser);
      meter.timer = setInterval(updateMeter, LEVEL_INTERVAL_MS);
    } catch (_) { /* no Web Audio: the page works without a meter */ }
  }

  function updateMeter() {
    meter.analyser.getFloatTimeDomainData(meter.samples);
    let sum = 0;
    for (const sample of meter.samples) sum += sample * sample;
    const rms = Math.sqrt(sum / meter.samples.length);
    // -60 dBFS (room hush) .. -10 dBFS (close speech) fills the bar.
    const level = Math.max(0, Math.min(1, (20 * Math.log10(rms + 1e-9) + 60) / 50));
    showLevel(level);
  }

  function showLevel(level) {
    ui.level.dataset.level = level.toFixed(3);
    ui.level.setAttribute("aria-valuenow", String(Math.round(level * 100)));
    ui.level.firstElementChild.style.transform = `scaleX(${level})`;
  }

  function stopMeter() {
    clearInterval(meter.timer);
    meter.source?.disconnect();
    meter.source = meter.analyser = null;
    showLevel(0);
  }

  // A kiosk starts without a click; a browser may keep audio suspended until the first gesture.
  document.addEventListener("pointerdown", () => meter.context?.resume().catch(() => {}));
  document.addEventListener("keydown", () => meter.context?.resume().catch(() => {}));

  // --- transcript export -----------------------------------------------------------------------

  function clock(seconds, separator) {
    const ms = Math.max(0, Math.round(seconds * 1000));
    const pad = (value, width = 2) => String(value).padStart(width, "0");
    return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}` +
      `${separator}${pad(ms % 1000, 3)}`;
  }
  // A cue's text may not hold a blank line or "-->" (it would end or fake a cue).
  function cueText(text) {
    return text.replace(/\s*\n\s*/g, " ").replace(/-->/g, "→");
  }
  function asText(entries) {
    return entries.map((entry) => entry.text).join("\n") + "\n";
  }
  function asWebVtt(entries) {
    const cues = entries.map((entry, index) =>
      `${index + 1}\n${clock(entry.start, ".")} --> ${clock(entry.end, ".")}\n${cueText(entry.text)}\n`);
    return ["WEBVTT\n", ...cues].join("\n");
  }
  function asSrt(entries) {
    return entries.map((entry, index) =>
      `${index + 1}\n${clock(entry.start, ",")} --> ${clock(entry.end, ",")}\n${cueText(entry.text)}\n`).join("\n");
  }
  const FORMATS = {
    txt: {render: asText, type: "text/plain"},
    vtt: {render: asWebVtt, type: "text/vtt"},
    srt: {render: asSrt, type: "application/x-subrip"},
  };

  function download(format) {
    const {render: write, type} = FORMATS[format];
    const blob = new Blob([write(finals)], {type: `${type};charset=utf-8`});
    const stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
    const link = Object.assign(document.createElement("a"),
      {href: URL.createObjectURL(blob), download: `transcript-${stamp}.${format}`});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  async function copyText() {
    const text = asText(finals);
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) { // no clipboard permission (or not a secure page): the old way
      const area = Object.assign(document.createElement("textarea"), {value: text});
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    ui.copy.textContent = "Copied";
    setTimeout(() => { ui.copy.textContent = "Copy"; }, 1500);
  }

  // --- a session -------------------------------------------------------------------------------

  function sessionQuery() {
    return new URLSearchParams({encoding: "auto", provider: ui.provider.value, language: currentLanguage() || "en-US",
                                interim_results: "true"});
  }

  function begin() {
    retry.wanted = true;
    retry.attempt = 0;
    connect();
  }

  async function connect() {
    clearRetry();
    const token = ui.token.value.trim();
    if (!token) {
      showError(kiosk ? "Kiosk mode needs a token: open this page as /#kiosk=1&token=YOUR_TOKEN" :
        "Enter your access token first.");
      setState("error", "No token");
      retry.wanted = false;
      ui.token.focus();
      return;
    }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      return giveUp("This browser cannot record audio here (needs https or localhost, and MediaRecorder).");
    }
    const mimeType = MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    if (!mimeType) return giveUp("This browser cannot record WebM or Ogg Opus audio, which the server needs.");
    store(TOKEN_KEY, token);
    store(PROVIDER_KEY, ui.provider.value);
    store(LANGUAGE_KEY, currentLanguage());
    setRunning(true);
    setState("connecting", retry.attempt ? "Reconnecting…" : "Connecting…");

    // Ask first over plain HTTP: a refused websocket hides the server's reason from the page.
    try {
      fillProviders(await getJson("v1/providers", token));
      await getJson(`v1/listen?${sessionQuery()}&check=1`, token);
    } catch (refusal) {
      return retry.wanted ? failed(refusal) : undefined; // Stop pressed meanwhile: nothing to say
    }
    if (!retry.wanted) return; // Stop was pressed while we asked

    let stream;
    try {
      setState("connecting", "Opening microphone…");
      stream = await navigator.mediaDevices.getUserMedia({audio: AUDIO_CONSTRAINTS});
    } catch (error) {
      return giveUp(error.name === "NotAllowedError" ? "Microphone permission was denied." :
        error.name === "NotFoundError" ? "No microphone was found." : `Microphone error: ${error.message}`);
    }
    if (!retry.wanted) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    startMeter(stream);

    const url = endpoint("v1/listen");
    url.search = sessionQuery().toString();
    let ws;
    try {
      ws = new WebSocket(url, ["token", token]); // browsers cannot set an Authorization header
    } catch (_) { // a token with characters a subprotocol may not hold: send it in the query
      url.searchParams.set("token", token);
      ws = new WebSocket(url);
    }
    const recorder = new MediaRecorder(stream, {mimeType});
    const current = {ws, recorder, stream, stopping: false, opened: false, finishTimer: null, wakeLock: null,
                     openedAt: 0, offset: 0};
    session = current;
    setState("connecting", "Connecting…");

    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size > 0 && ws.readyState === WebSocket.OPEN) ws.send(event.data);
    });
    recorder.addEventListener("stop", () => {
      // The last chunk was delivered just before "stop": everything is sent, ask for the finals.
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({type: "CloseStream"}));
    });

    ws.addEventListener("open", async () => {
      current.opened = true;
      // Results carry stream seconds from this session's start; the transcript's clock runs on.
      current.openedAt = performance.now();
      transcriptOrigin = transcriptOrigin ?? current.openedAt;
      current.offset = (current.openedAt - transcriptOrigin) / 1000;
      recorder.start(CHUNK_MS);
      retry.attempt = 0;
      showError("");
      setState("listening", "Listening");
      try { current.wakeLock = await navigator.wakeLock?.request("screen"); } catch (_) { /* optional */ }
    });
    ws.addEventListener("message", (event) => onMessage(current, event));
    ws.addEventListener("close", (event) => onClose(current, event));
  }

  function onMessage(current, event) {
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    if (message.type === "Results") {
      const text = (message.channel?.alternatives?.[0]?.transcript || "").trim();
      if (message.is_final) {
        if (text) {
          const start = current.offset + (Number(message.start) || 0);
          finals.push({text, start, end: start + (Number(message.duration) || 0)});
          if (finals.length > MAX_FINALS) finals.splice(0, finals.length - MAX_FINALS);
        }
        render("");
      } else {
        render(text);
      }
    } else if (message.type === "Metadata" && message.session_id) {  // the opening one, not the closing one
      const model = message.model_info?.model ? ` (${message.model_info.model})` : "";
      ui.meta.textContent = `${message.provider}${model} · ${message.language}`;
    } else if (message.type === "Error") {
      showError(`The server stopped this session: ${message.message}`);
    }
  }

  async function onClose(current, event) {
    releaseMedia(current);
    if (session === current) session = null;
    render("");
    if (current.stopping || (event.code === 1000 && !retry.wanted)) {
      retry.wanted = false;
      setRunning(false);
      setState("idle", "Stopped");
      return;
    }
    if (!current.opened) {
      // Refused at the upgrade although the check passed a moment ago (the server filled up,
      // say): ask again to learn why.
      try {
        await getJson(`v1/listen?${sessionQuery()}&check=1`, ui.token.value.trim());
      } catch (refusal) {
        return failed(refusal);
      }
      return failed(new Refusal("The server closed the connection before the session started.", {transient: true}));
    }
    if (event.code === 1008 && event.reason.startsWith("max_duration")) {
      retry.attempt = 0; // a session limit, not a failure: go on at once
      return failed(new Refusal("The session reached the server's time limit.", {transient: true}), 0);
    }
    if (RETRY_CLOSE_CODES.has(event.code) || event.code === 1000) {
      return failed(new Refusal(describeClose(event.code, event.reason), {transient: true}));
    }
    giveUp(describeClose(event.code, event.reason));
  }

  function describeClose(code, reason) {
    const why = reason ? ` (${reason})` : "";
    switch (code) {
      case 1000: return "The server ended the session.";
      case 1001: return "The speech server is restarting or shutting down.";
      case 1006: return "The connection to the speech server was lost.";
      case 1011: return `The speech server hit a problem${why}.`;
      case 1012: return "The speech server is restarting.";
      case 1013: return "The speech server is busy.";
      default: return `The connection closed (code ${code}${reason ? `: ${reason}` : ""}).`;
    }
  }

  // A refusal or a lost connection: retried while wanted and waiting may help; said otherwise.
  function failed(refusal, delayMs) {
    if (refusal.transient && retry.wanted) return scheduleRetry(explain(refusal), delayMs);
    giveUp(explain(refusal));
  }

  function giveUp(message) {
    retry.wanted = false;
    clearRetry();
    setRunning(false);
    setState("error", "Not connected");
    showError(message);
  }

  function scheduleRetry(reason, delayMs) {
    const base = RETRY_DELAYS_MS[Math.min(retry.attempt, RETRY_DELAYS_MS.length - 1)];
    const delay = delayMs ?? Math.round(base * (0.8 + 0.4 * Math.random()));
    retry.attempt += 1;
    setRunning(true); // Stop cancels the retrying
    showError(`${reason} Reconnecting automatically…`, "notice");
    const due = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setState("reconnecting", seconds ? `Reconnecting in ${seconds} s` : "Reconnecting…");
    };
    tick();
    retry.countdown = setInterval(tick, 250);
    retry.timer = setTimeout(connect, delay);
  }

  function clearRetry() {
    clearTimeout(retry.timer);
    clearInterval(retry.countdown);
    retry.timer = retry.countdown = null;
  }

  function releaseMedia(current) {
    clearTimeout(current.finishTimer);
    if (current.recorder.state !== "inactive") current.recorder.stop();
    for (const track of current.stream.getTracks()) track.stop();
    stopMeter();
    current.wakeLock?.release?.().catch(() => {});
  }

  function stop() {
    retry.wanted = false;
    const current = session;
    if (!current) { // waiting to reconnect, or still asking the server
      clearRetry();
      setRunning(false);
      setState("idle", "Stopped");
      showError("");
      return;
    }
    if (current.stopping) return;
    current.stopping = true;
    setState("finishing", "Finishing…");
    ui.toggle.disabled = true;
    if (current.recorder.state !== "inactive") current.recorder.stop(); // its "stop" sends CloseStream
    else if (current.ws.readyState === WebSocket.OPEN) current.ws.send(JSON.stringify({type: "CloseStream"}));
    else current.ws.close();
    for (const track of current.stream.getTracks()) track.stop();
    stopMeter();
    current.finishTimer = setTimeout(() => current.ws.close(1000, "client timeout"), FINISH_TIMEOUT_MS);
    current.ws.addEventListener("close", () => { ui.toggle.disabled = false; }, {once: true});
  }

  // --- start-up --------------------------------------------------------------------------------

  async function init() {
    // A token may arrive in the fragment (#token=...), which never reaches any server log; it
    // is stored and taken out of the address bar, the other options stay (a kiosk reloads).
    if (fragment.get("token")) {
      store(TOKEN_KEY, fragment.get("token"));
      fragment.delete("token");
      const rest = fragment.toString();
      history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? `#${rest}` : ""));
    }
    if (kiosk) {
      document.body.classList.add("kiosk");
      ui.placeholder.textContent = "Speak: your words appear here.";
    }
    ui.token.value = load(TOKEN_KEY);
    ui.languageOther.value = fragment.get("language") || load(LANGUAGE_KEY) || "";
    setState("idle", "Idle");
    if (!window.isSecureContext) {
      showError("The microphone needs a secure page: open this page over https:// or on localhost / 127.0.0.1.");
      return;
    }
    // A kiosk may boot before its server: keep asking, with the same backoff as reconnecting.
    for (let attempt = 0; ; attempt += 1) {
      try {
        fillProviders(await getJson("v1/providers", ""));
        break;
      } catch (refusal) {
        setState("error", "Offline");
        showError(`${explain(refusal)} Trying again automatically…`, "notice");
        const base = RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)];
        await new Promise((resolve) => setTimeout(resolve, base));
      }
    }
    showError("");
    setState("idle", "Idle");
    ui.toggle.disabled = false;
    if (kiosk) begin();
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (retry.wanted || session) stop(); else begin();
  });
  ui.provider.addEventListener("change", fillLanguages);
  ui.clear.addEventListener("click", () => {
    finals = [];
    // The next cue times count from the open session's start (its stream clock), or restart.
    transcriptOrigin = session?.opened ? session.openedAt : null;
    if (session) session.offset = 0;
    render("");
  });
  ui.copy.addEventListener("click", copyText);
  for (const button of ui.downloads) button.addEventListener("click", () => download(button.dataset.format));
  ui.token.addEventListener("change", () => store(TOKEN_KEY, ui.token.value.trim()));
  window.addEventListener("pagehide", () => { if (session) session.ws.close(1001, "page closed"); });

  // For tests and for operators' scripts: the transcript as each download format would save it.
  window.sttKiosk = {
    transcript: () => finals.map((entry) => ({...entry})),
    export: (format) => FORMATS[format].render(finals),
  };

  init();
})();
