// Kiosk page for stt_server: microphone → MediaRecorder → native protocol (/v1/listen).
// Plain script, no dependencies, so the page works offline and under a strict CSP.
// All URLs are relative to the page, so it also works behind a TLS proxy or under a path prefix.
"use strict";

(() => {
  const TOKEN_KEY = "stt_server.token";
  const PROVIDER_KEY = "stt_server.provider";
  const LANGUAGE_KEY = "stt_server.language";
  const CHUNK_MS = 250;           // MediaRecorder timeslice, as the seed's client used
  const FINISH_TIMEOUT_MS = 30000; // wait this long for the last finals after Stop
  const MIME_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/ogg"];
  // Speech engines do best on the plain signal: browser noise suppression and automatic gain
  // smear the quiet starts of words. Echo cancellation stays on for kiosks with a speaker.
  const AUDIO_CONSTRAINTS = {channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false};

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), provider: $("provider"), language: $("language"), token: $("token"),
    toggle: $("toggle"), form: $("controls"), error: $("error"), final: $("final"),
    interim: $("interim"), placeholder: $("placeholder"), meta: $("meta"), clear: $("clear"),
    transcript: document.querySelector(".transcript"),
  };

  let session = null; // {ws, recorder, stream, stopping, finishTimer, wakeLock}
  let finals = [];

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
  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }
  function setRunning(running) {
    ui.toggle.dataset.running = String(running);
    ui.toggle.textContent = running ? "Stop" : "Start";
    for (const input of [ui.provider, ui.language, ui.token]) input.disabled = running;
  }
  function render(interimText) {
    ui.final.textContent = finals.join(" ");
    ui.interim.textContent = interimText || "";
    ui.placeholder.hidden = finals.length > 0 || Boolean(interimText);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }
  function endpoint(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url;
  }

  // --- providers and token ---------------------------------------------------------------------

  async function fetchProviders(token) {
    const headers = token ? {Authorization: `Bearer ${token}`} : {};
    const response = await fetch(new URL("v1/providers", window.location.href), {headers, cache: "no-store"});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.message || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function fillProviders(info) {
    const wanted = ui.provider.value || load(PROVIDER_KEY) || info.default;
    ui.provider.replaceChildren(...info.providers.map((name) => new Option(name, name)));
    ui.provider.value = info.providers.includes(wanted) ? wanted : info.default;
    ui.provider.disabled = info.providers.length === 0;
    if (!ui.language.value || !load(LANGUAGE_KEY)) ui.language.value = load(LANGUAGE_KEY) || info.language || "en-US";
  }

  async function init() {
    // A token may arrive in the fragment (#token=...), which never reaches any server log.
    const fragment = new URLSearchParams(window.location.hash.slice(1));
    if (fragment.get("token")) {
      store(TOKEN_KEY, fragment.get("token"));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    ui.token.value = load(TOKEN_KEY);
    ui.language.value = load(LANGUAGE_KEY) || ui.language.value;
    setState("idle", "Idle");
    try {
      fillProviders(await fetchProviders(""));
      ui.toggle.disabled = false;
    } catch (error) {
      setState("error", "Offline");
      showError(`Cannot reach the server to list providers: ${error.message}`);
    }
    if (!window.isSecureContext) {
      showError("The microphone needs a secure page: open this page over https:// or on localhost / 127.0.0.1.");
    }
  }

  // --- a session -------------------------------------------------------------------------------

  async function start() {
    showError("");
    const token = ui.token.value.trim();
    if (!token) {
      showError("Enter your access token first.");
      ui.token.focus();
      return;
    }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      showError("This browser cannot record audio here (needs https or localhost, and MediaRecorder).");
      return;
    }
    const mimeType = MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    if (!mimeType) {
      showError("This browser cannot record WebM or Ogg Opus audio, which the server needs.");
      return;
    }
    store(TOKEN_KEY, token);
    store(PROVIDER_KEY, ui.provider.value);
    store(LANGUAGE_KEY, ui.language.value.trim());
    setRunning(true);
    setState("connecting", "Checking token…");

    try {
      fillProviders(await fetchProviders(token)); // a clear 401 beats a bare websocket close
    } catch (error) {
      setRunning(false);
      setState("error", "Not connected");
      showError(error.status === 401 ? "The server rejected this token." :
        `Cannot reach the server: ${error.message}`);
      return;
    }

    let stream;
    try {
      setState("connecting", "Opening microphone…");
      stream = await navigator.mediaDevices.getUserMedia({audio: AUDIO_CONSTRAINTS});
    } catch (error) {
      setRunning(false);
      setState("error", "No microphone");
      showError(error.name === "NotAllowedError" ? "Microphone permission was denied." :
        error.name === "NotFoundError" ? "No microphone was found." : `Microphone error: ${error.message}`);
      return;
    }

    const url = endpoint("v1/listen");
    url.searchParams.set("encoding", "auto");
    url.searchParams.set("provider", ui.provider.value);
    url.searchParams.set("language", ui.language.value.trim() || "en-US");
    url.searchParams.set("interim_results", "true");
    let ws;
    try {
      ws = new WebSocket(url, ["token", token]); // browsers cannot set an Authorization header
    } catch (_) { // a token with characters a subprotocol may not hold: send it in the query
      url.searchParams.set("token", token);
      ws = new WebSocket(url);
    }
    const recorder = new MediaRecorder(stream, {mimeType});
    const current = {ws, recorder, stream, stopping: false, opened: false, finishTimer: null, wakeLock: null};
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
      recorder.start(CHUNK_MS);
      setState("listening", "Listening");
      try { current.wakeLock = await navigator.wakeLock?.request("screen"); } catch (_) { /* optional */ }
    });
    ws.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (message.type === "Results") {
        const text = (message.channel?.alternatives?.[0]?.transcript || "").trim();
        if (message.is_final) {
          if (text) finals.push(text);
          render("");
        } else {
          render(text);
        }
      } else if (message.type === "Metadata" && message.session_id) {  // the opening one, not the closing one
        ui.meta.textContent = `${message.provider} · ${message.language} · session ${String(message.session_id).slice(0, 8)}`;
      } else if (message.type === "Error") {
        showError(`Server error (${message.code}): ${message.message}`);
      }
    });
    ws.addEventListener("close", (event) => {
      releaseMedia(current);
      if (session === current) session = null;
      setRunning(false);
      render("");
      if (!current.opened) {
        setState("error", "Not connected");
        showError("The server refused the connection. Check the token, provider and language, " +
          "or the server may be full; try again shortly.");
      } else if (event.code === 1000 || (current.stopping && event.code === 1005)) {
        setState("idle", "Stopped");
      } else {
        setState("error", "Disconnected");
        showError(`Connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
      }
    });
  }

  function releaseMedia(current) {
    clearTimeout(current.finishTimer);
    if (current.recorder.state !== "inactive") current.recorder.stop();
    for (const track of current.stream.getTracks()) track.stop();
    current.wakeLock?.release?.().catch(() => {});
  }

  function stop() {
    const current = session;
    if (!current || current.stopping) return;
    current.stopping = true;
    setState("finishing", "Finishing…");
    ui.toggle.disabled = true;
    if (current.recorder.state !== "inactive") current.recorder.stop(); // its "stop" sends CloseStream
    else if (current.ws.readyState === WebSocket.OPEN) current.ws.send(JSON.stringify({type: "CloseStream"}));
    else current.ws.close();
    for (const track of current.stream.getTracks()) track.stop();
    current.finishTimer = setTimeout(() => current.ws.close(1000, "client timeout"), FINISH_TIMEOUT_MS);
    current.ws.addEventListener("close", () => { ui.toggle.disabled = false; }, {once: true});
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (session) stop(); else start();
  });
  ui.clear.addEventListener("click", () => { finals = []; render(""); });
  ui.token.addEventListener("change", () => store(TOKEN_KEY, ui.token.value.trim()));
  window.addEventListener("pagehide", () => { if (session) session.ws.close(1001, "page closed"); });

  init();
})();
