// seetalk web client: WebRTC mic + camera in, assistant audio out, events on a data channel.
// Plain script, no build step. State for people is on the page; state for tests is on
// window.seetalk (connected, state, events, transcript, level, errors).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 2000;

const st = (window.seetalk = {
  connected: false, state: "disconnected", events: [], transcript: [], level: 0,
  errors: [], metrics: [], sessionId: null, reconnects: 0, tools: [],
});

let pc = null, dc = null, localStream = null, audioCtx = null, levelTimer = null;
let config = { ice_servers: [], auth_required: false };
const items = new Map(); // item id -> transcript entry {role, text, final, interrupted, el}
let lostTimer = null;
// Resumption (docs/webrtc.md): session.created carries a single-use token; a dropped
// connection offers again with it, a few tries with backoff, and gets the same session.
let resumeToken = null, reconnecting = false;
const RETRY_S = [0.5, 1, 2, 4, 8];

function setState(s) {
  st.state = s;
  const labels = { disconnected: "disconnected", connecting: "connecting…", listening: "listening",
    hearing: "hearing you", thinking: "thinking…", speaking: "speaking", error: "error",
    reconnecting: "reconnecting…" };
  $("state").textContent = labels[s] || s;
  $("state").className = "state " + s;
}

function showError(msg) {
  st.errors.push(msg);
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

function addLine(role, text, id, cls = "") {
  const li = document.createElement("li");
  li.className = role + (cls ? " " + cls : "");
  li.textContent = text;
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "end" });
  const entry = { id, role, text, final: cls !== "partial", interrupted: false, el: li };
  st.transcript.push(entry);
  if (id) items.set(id, entry);
  return entry;
}

function setLine(entry, text, final) {
  entry.text = text; entry.final = final;
  entry.el.textContent = text;
  entry.el.classList.toggle("partial", !final);
}

// --- tool calls in the transcript ----------------------------------------------------------
// A function_call (the client's tools and seetalk's own) or an mcp_call is one compact line:
// the tool's name and short arguments, then its result (output or error) once it comes.
// window.seetalk.tools holds {callId, name, arguments, output, error, kind} for tests.

const calls = new Map(); // call id (or item id) -> {entry, el, ...}
const SHORT = 90;

function short(text) {
  const s = String(text ?? "").replace(/\s+/g, " ").trim();
  return s.length > SHORT ? s.slice(0, SHORT - 1) + "…" : s;
}

function shortArgs(args) {
  try {
    const obj = JSON.parse(args || "{}");
    if (obj && typeof obj === "object" && !Array.isArray(obj)) {
      return short(Object.entries(obj).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(", "));
    }
  } catch { /* not JSON yet: shown as it is */ }
  return short(args);
}

function toolLine(key, name, kind) {
  let c = calls.get(key);
  if (c) return c;
  const li = document.createElement("li");
  li.className = "tool";
  const head = document.createElement("div");
  head.className = "tool-call";
  const nameEl = document.createElement("span");
  nameEl.className = "tool-name";
  const argsEl = document.createElement("span");
  argsEl.className = "tool-args";
  head.append(nameEl, argsEl);
  const result = document.createElement("div");
  result.className = "tool-result pending";
  result.textContent = "running…";
  li.append(head, result);
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "end" });
  const entry = { callId: key, name, arguments: "", output: null, error: null, kind };
  st.tools.push(entry);
  c = { entry, el: li, nameEl, argsEl, result };
  calls.set(key, c);
  return c;
}

function setCall(c, name, args) {
  if (name) { c.entry.name = name; c.nameEl.textContent = name; }
  if (args != null) { c.entry.arguments = args; c.argsEl.textContent = `(${shortArgs(args)})`; }
  c.el.title = `${c.entry.name}(${c.entry.arguments})`;
}

function setResult(c, output, error) {
  c.entry.output = output ?? null; c.entry.error = error ?? null;
  let failure = error;
  if (!error) try { failure = JSON.parse(output)?.error; } catch { /* plain text output */ }
  const failed = !!failure;
  const why = typeof failure === "string" ? failure : failure?.message || JSON.stringify(failure);
  const text = failed ? `error: ${why}` : output;
  c.result.textContent = "→ " + short(text);
  c.result.title = String(text);
  c.result.className = "tool-result" + (failed ? " failed" : "");
}

function onToolItem(item) {
  if (!item) return;
  if (item.type === "function_call") {
    setCall(toolLine(item.call_id || item.id, item.name, "function"), item.name, item.arguments);
  } else if (item.type === "function_call_output") {
    const c = calls.get(item.call_id) || toolLine(item.call_id, "tool", "function");
    setResult(c, item.output, null);
  } else if (item.type === "mcp_call") {
    const c = toolLine(item.id, item.name, "mcp");
    setCall(c, item.server_label ? `${item.server_label}.${item.name}` : item.name, item.arguments);
    if (item.output != null || item.error != null) setResult(c, item.output, item.error);
  }
}

// --- devices -------------------------------------------------------------------------------

async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, sel, none] of [["audioinput", $("mic"), null], ["videoinput", $("camera"), "No camera"]]) {
    const current = sel.value;
    sel.innerHTML = "";
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      sel.add(new Option(d.label || `${kind === "audioinput" ? "Microphone" : "Camera"} ${i + 1}`, d.deviceId));
    });
    if (none) sel.add(new Option(none, "none"));
    if ([...sel.options].some((o) => o.value === current)) sel.value = current;
  }
}

async function getMedia() {
  const mic = $("mic").value, cam = $("camera").value;
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
    ...(mic ? { deviceId: { exact: mic } } : {}) };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio });
  } catch (e) {
    if (!navigator.mediaDevices) throw new Error("This page needs HTTPS (or localhost) to use the microphone.");
    if (e.name === "NotAllowedError") throw new Error("Microphone permission was denied. Allow the microphone for this site and try again.");
    if (e.name === "NotFoundError") throw new Error("No microphone was found.");
    throw new Error(`Could not open the microphone: ${e.message || e.name}`);
  }
  if (cam !== "none") {
    try {
      const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15, max: 30 },
        ...(cam ? { deviceId: { exact: cam } } : {}) };
      const v = await navigator.mediaDevices.getUserMedia({ video });
      v.getVideoTracks().forEach((t) => stream.addTrack(t));
    } catch (e) {
      addLine("system", `Camera unavailable (${e.name}); continuing with voice only.`);
    }
  }
  return stream;
}

// --- connection ----------------------------------------------------------------------------

function authHeaders() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) return { Authorization: `Bearer ${token}` };
  return {};
}

async function credential() {
  const fromHash = authHeaders();
  if (fromHash.Authorization || !config.auth_required) return fromHash;
  const key = $("key").value.trim();
  if (!key) throw new Error("This server needs an access key.");
  const r = await fetch(config.token_url || "/session-token", { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  if (!r.ok) throw new Error(await errorText(r));
  const { token, ice_servers } = await r.json();
  if (ice_servers) config.ice_servers = ice_servers; // TURN credentials minted for this page
  return { Authorization: `Bearer ${token}` };
}

async function errorText(r) {
  try { const b = await r.json(); return b.error?.message || `${r.status} ${r.statusText}`; }
  catch { return `${r.status} ${r.statusText}`; }
}

function waitForIce(peer, ms = 2000) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (peer.iceGatheringState === "complete") { resolve(); } };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

async function connect(resume = null) {
  clearError();
  setState(resume ? "reconnecting" : "connecting");
  $("connect").disabled = true;
  try {
    // a reconnect keeps the microphone and camera it had (no new prompt, no gap in the preview)
    if (!resume || !localStream?.getTracks().some((t) => t.readyState === "live")) localStream = await getMedia();
    await listDevices();
    const video = localStream.getVideoTracks()[0];
    $("preview").srcObject = video ? new MediaStream([video]) : null;
    $("no-camera").hidden = !!video;

    const auth = await credential(); // before the peer: the token brings its ICE servers
    pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
    localStream.getTracks().forEach((t) => pc.addTrack(t, localStream));
    if (!video) pc.addTransceiver("video", { direction: "inactive" });
    pc.ontrack = (e) => { if (e.track.kind === "audio") playRemote(e.streams[0] || new MediaStream([e.track])); };
    pc.onconnectionstatechange = onConnectionState;
    dc = pc.createDataChannel("oai-events");
    dc.onopen = () => {
      st.connected = true; setState("listening"); enableControls(true);
      if (resume) { st.reconnects++; addLine("system", "Reconnected: the conversation goes on."); }
      // The browser cancels the echo of what it plays: the server need not (docs/echo.md).
      const mic = localStream?.getAudioTracks()[0]?.getSettings?.() || {};
      if (mic.echoCancellation === true) send({ type: "session.update", session: { seetalk: { echo: "off" } } });
    };
    dc.onclose = () => { if (st.connected) lost("The event channel closed."); };
    dc.onmessage = (m) => {
      try {
        const ev = JSON.parse(m.data);
        if (ev.type === "session.created") resumeToken = ev.session?.seetalk?.resume_token || null;
        onEvent(ev);
      } catch (e) { console.error(e); }
    };

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const headers = { "Content-Type": "application/json", ...auth };
    let r;
    try {
      const url = (config.offer_url || "/offer") + (resume ? `?resume=${encodeURIComponent(resume)}` : "");
      r = await fetch(url, { method: "POST", headers,
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }) });
    } catch (e) {
      throw new Error("The server is unreachable. Is seetalk running?");
    }
    if (!r.ok) throw Object.assign(new Error(await errorText(r)), { status: r.status });
    const answer = await r.json();
    st.sessionId = answer.session_id;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("connect").textContent = "Disconnect";
    $("connect").disabled = false;
  } catch (e) {
    teardown(!!resume);
    if (resume) throw e; // reconnect() decides: try again, or the session has ended
    showError(e.message || String(e));
    setState("error");
  }
}

async function reconnect(why) {
  const token = resumeToken;
  resumeToken = null; reconnecting = true;
  teardown(true);
  setState("reconnecting");
  addLine("system", `${why} Reconnecting…`);
  let ended = "the server did not answer";
  try {
    for (const wait of RETRY_S) {
      await new Promise((r) => setTimeout(r, wait * 1000));
      try {
        await connect(token);
        return;
      } catch (e) {
        ended = e.message || String(e);
        if ([401, 403, 404, 410].includes(e.status)) break; // the session cannot come back
      }
    }
    teardown();
    addLine("system", "The session has ended.");
    showError(`The connection was lost and the session has ended (${ended}). Press Connect to start a new one.`);
    setState("error");
  } finally {
    reconnecting = false;
  }
}

function onConnectionState() {
  const s = pc?.connectionState;
  if (s === "failed") lost("The connection failed (network or firewall; a TURN server may be needed).");
  else if (s === "disconnected") { lostTimer = setTimeout(() => lost("The connection was lost."), 4000); }
  else if (s === "connected" && lostTimer) { clearTimeout(lostTimer); lostTimer = null; }
}

function lost(msg) {
  if (!pc) return;
  if (resumeToken && !reconnecting) { reconnect(msg); return; }
  teardown();
  showError(msg + " Press Connect to start again.");
  setState("error");
}

function disconnect() {
  resumeToken = null;
  teardown();
  setState("disconnected");
}

function teardown(keepMedia = false) {
  st.connected = false;
  if (lostTimer) { clearTimeout(lostTimer); lostTimer = null; }
  if (levelTimer) { clearInterval(levelTimer); levelTimer = null; }
  if (dc) { dc.onclose = null; try { dc.close(); } catch {} dc = null; }
  if (pc) { pc.onconnectionstatechange = null; pc.close(); pc = null; }
  if (!keepMedia) {
    localStream?.getTracks().forEach((t) => t.stop());
    localStream = null;
    $("preview").srcObject = null;
    $("no-camera").hidden = false;
  }
  $("remote").srcObject = null;
  st.level = 0;
  $("meter-fill").style.width = "0";
  enableControls(false);
  $("connect").textContent = "Connect";
  $("connect").disabled = false;
}

function enableControls(on) {
  for (const id of ["stop", "message", "send"]) $(id).disabled = !on;
}

function playRemote(stream) {
  const el = $("remote");
  el.srcObject = stream;
  el.play().catch(() => addLine("system", "Tap anywhere to hear the assistant (autoplay blocked)."));
  audioCtx = audioCtx || new AudioContext();
  audioCtx.resume();
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  if (levelTimer) clearInterval(levelTimer);
  levelTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    st.level = Math.sqrt(sum / buf.length);
    $("meter-fill").style.width = Math.min(100, st.level * 400) + "%";
  }, 50);
}

function send(event) {
  if (!dc || dc.readyState !== "open") return false;
  dc.send(JSON.stringify(event));
  return true;
}
st.send = send;
st.connect = connect;
st.disconnect = disconnect;

// --- events --------------------------------------------------------------------------------

function onEvent(ev) {
  ev._t = performance.now();
  st.events.push(ev);
  if (st.events.length > MAX_EVENTS) st.events.splice(0, st.events.length - MAX_EVENTS);
  switch (ev.type) {
    case "input_audio_buffer.speech_started":
      setState("hearing");
      if (!items.has(ev.item_id)) addLine("user", "…", ev.item_id, "partial");
      break;
    case "input_audio_buffer.speech_stopped":
      setState("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const e = items.get(ev.item_id) || addLine("user", "", ev.item_id, "partial");
      setLine(e, ev.partial ?? (e.text === "…" ? "" : e.text) + ev.delta, false);
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const e = items.get(ev.item_id) || addLine("user", "", ev.item_id);
      if (ev.transcript.trim()) setLine(e, ev.transcript, true);
      else { e.el.remove(); items.delete(ev.item_id); }
      break;
    }
    case "response.created":
      setState("thinking");
      break;
    case "response.output_audio_transcript.delta": {
      const e = items.get(ev.item_id) || addLine("assistant", "", ev.item_id);
      setLine(e, e.text + ev.delta, true);
      break;
    }
    case "response.output_audio_transcript.done": {
      const e = items.get(ev.item_id);
      if (e && !e.interrupted) setLine(e, ev.transcript, true);
      break;
    }
    case "conversation.item.truncated": {
      const e = items.get(ev.item_id);
      if (e) { setLine(e, ev.transcript ?? e.text, true); e.interrupted = true; e.el.classList.add("interrupted"); }
      break;
    }
    case "output_audio_buffer.started":
      setState("speaking");
      break;
    case "output_audio_buffer.stopped":
    case "output_audio_buffer.cleared":
      if (st.state === "speaking") setState("listening");
      break;
    case "response.done":
      if (st.state === "thinking" || st.state === "speaking") setState("listening");
      break;
    case "response.output_item.added":
    case "response.output_item.done":
    case "conversation.item.added":
    case "conversation.item.done":
      onToolItem(ev.item);
      break;
    case "response.function_call_arguments.done": {
      const c = calls.get(ev.call_id);
      if (c) setCall(c, ev.name, ev.arguments);
      break;
    }
    case "seetalk.turn.metrics":
      showMetrics(ev.metrics || {});
      break;
    case "error":
      showError(`Server: ${ev.error?.message || "error"}`);
      break;
  }
}

function showMetrics(m) {
  st.metrics.push(m);
  const fmt = (k, label) => (typeof m[k] === "number" ? `${label} ${Math.round(m[k])} ms` : null);
  const shown = [["endpoint_ms", "endpoint"], ["asr_final_ms", "transcribe"],
    ["llm_first_token_ms", "first token"], ["first_audio_ready_ms", "first audio"],
    ["voice_to_voice_ms", "voice-to-voice"]];
  const parts = shown.map(([k, label]) => fmt(k, label)).filter(Boolean);
  const rest = Object.keys(m).filter((k) => !shown.some(([s]) => s === k) && k.endsWith("_ms"));
  if (!parts.length) rest.slice(0, 4).forEach((k) => parts.push(`${k.replace(/_ms$/, "")} ${Math.round(m[k])} ms`));
  $("latency").textContent = parts.length ? "Last turn: " + parts.join(" · ") : "";
}

// --- wiring --------------------------------------------------------------------------------

$("connect").onclick = () => (pc ? disconnect() : reconnecting ? null : connect());
$("stop").onclick = () => send({ type: "response.cancel" });
$("compose").onsubmit = (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  const ok = send({ type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] } });
  if (ok) { send({ type: "response.create" }); addLine("user", text); $("message").value = ""; }
};
document.addEventListener("click", () => { audioCtx?.resume(); $("remote").play?.().catch(() => {}); });
navigator.mediaDevices?.addEventListener?.("devicechange", listDevices);

(async () => {
  try {
    const r = await fetch("/config", { headers: authHeaders() }); // ICE servers need a credential
    config = await r.json();
  } catch {
    showError("The server is unreachable. Is seetalk running?");
  }
  $("key-row").hidden = !config.auth_required || !!authHeaders().Authorization;
  await listDevices().catch(() => {});
  st.ready = true;
})();
