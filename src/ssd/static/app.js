// The page of `ssd serve`: pick or drop an image, POST it to /detect, draw the boxes and list them; or the camera:
// frames sent one at a time (one request in flight, frames in between dropped), boxes drawn live over the video.
"use strict";

const state = { model: null, file: null, image: null, result: null, seq: 0, timer: null, camera: null };
// what the camera loop did, for the page's status and for tests: frames answered, boxes drawn over the last one
window.cameraStats = { sent: 0, answered: 0, boxesDrawn: 0, fps: 0 };
const $ = (id) => document.getElementById(id);

function colorOf(label) {
  const colors = (state.model && state.model.class_colors) || [];
  return colors[label - 1] || "#ff00ff";
}

function textColor(hex) {
  const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
    .map((v) => (v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4)));
  const lum = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  return (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000" : "#fff";
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function loadModel() {
  try {
    const r = await fetch("/model");
    state.model = await r.json();
    const m = state.model;
    $("model-info").textContent = `${m.preset || m.backend} · ${m.classes.length} classes · input ${m.input_size} · ${m.device}`;
    const ms = m.defaults && m.defaults.min_score;
    if (typeof ms === "number") { $("min-score").value = ms; $("min-score-value").textContent = ms.toFixed(2); }
  } catch (e) {
    $("model-info").textContent = "cannot read /model";
  }
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const img = state.camera ? $("video") : state.image;
  if (!img) return 0;
  const w = img.naturalWidth || img.videoWidth, h = img.naturalHeight || img.videoHeight;
  if (!w || !h) return 0;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.drawImage(img, 0, 0);
  const res = state.result;
  if (!res) return 0;
  const side = Math.sqrt(canvas.width * canvas.height);
  const lw = Math.max(2, Math.round(side / 250));
  const fs = Math.max(12, Math.round(side / 32));
  ctx.font = `${fs}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const dets = res.detections.slice().reverse(); // worst first: the best ends on top
  for (const d of dets) {
    const [x1, y1, x2, y2] = d.box;
    ctx.strokeStyle = colorOf(d.label);
    ctx.lineWidth = lw;
    ctx.strokeRect(x1 + lw / 2, y1 + lw / 2, Math.max(0, x2 - x1 - lw), Math.max(0, y2 - y1 - lw));
  }
  for (const d of dets) {
    const [x1, y1] = d.box;
    const text = `${d.class_name} ${d.score.toFixed(2)}`;
    const pad = Math.max(1, Math.round(fs * 0.2));
    const tw = ctx.measureText(text).width + 2 * pad;
    const th = fs + 2 * pad;
    let ty = y1 - th >= 0 ? y1 - th : y1;
    ty = Math.max(0, Math.min(ty, canvas.height - th));
    const tx = Math.max(0, Math.min(x1, canvas.width - tw));
    ctx.fillStyle = colorOf(d.label);
    ctx.fillRect(tx, ty, tw, th);
    ctx.fillStyle = textColor(colorOf(d.label));
    ctx.fillText(text, tx + pad, ty + pad);
  }
  return dets.length;
}

function fillTable() {
  const body = $("detections").querySelector("tbody");
  body.textContent = "";
  const res = state.result;
  if (!res) return;
  res.detections.forEach((d, i) => {
    const tr = document.createElement("tr");
    tr.dataset.label = d.label;
    tr.dataset.score = d.score;
    tr.dataset.box = JSON.stringify(d.box);
    const cells = [String(i + 1), d.class_name, d.score.toFixed(3), ...d.box.map((v) => v.toFixed(1))];
    cells.forEach((text, j) => {
      const td = document.createElement("td");
      if (j === 1) {
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = colorOf(d.label);
        td.appendChild(sw);
      }
      td.appendChild(document.createTextNode(text));
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
}

async function detect() {
  if (!state.file || state.camera) return;
  const seq = ++state.seq;
  const minScore = $("min-score").value;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  setStatus("detecting…");
  document.body.dataset.state = "busy";
  try {
    const r = await fetch(`/detect?min_score=${encodeURIComponent(minScore)}`, { method: "POST", body: form });
    const data = await r.json();
    if (seq !== state.seq) return; // a newer request is on its way
    if (!r.ok) {
      state.result = null;
      draw();
      fillTable();
      setStatus(`error ${r.status}: ${data.detail}`, true);
      document.body.dataset.state = "error";
      return;
    }
    state.result = data;
    window.lastResult = data;
    draw();
    fillTable();
    setStatus(`${data.detections.length} detections · ${data.width} x ${data.height} · min score ${minScore}`);
    document.body.dataset.state = "done";
  } catch (e) {
    if (seq !== state.seq) return;
    setStatus(`request failed: ${e}`, true);
    document.body.dataset.state = "error";
  }
}

function useFile(file) {
  if (!file) return;
  stopCamera();
  state.file = file;
  state.result = null;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => { state.image = img; draw(); detect(); };
  img.onerror = () => { state.image = null; detect(); }; // the server says what is wrong with it
  img.src = url;
}

$("file").addEventListener("change", (e) => useFile(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => useFile(e.dataTransfer.files[0]));
$("min-score").addEventListener("input", () => {
  $("min-score-value").textContent = Number($("min-score").value).toFixed(2);
  clearTimeout(state.timer);
  state.timer = setTimeout(detect, 150);
});
// --- the camera ---------------------------------------------------------------------------------
// Each start makes one `cam` object; its loops (painting, sending) stop as soon as it is no longer the current one,
// so a stop and a restart while a request is in flight never leave two loops.

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function startCamera() {
  if (state.camera) return;
  const cam = { stream: null, answeredAt: [], running: true };
  state.camera = cam; // taken at once: a second click while the browser asks is a stop, not a second camera
  $("camera").textContent = "Stop the camera";
  $("camera").classList.add("on");
  try {
    cam.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    if (state.camera !== cam) { cam.stream.getTracks().forEach((t) => t.stop()); return; }
    const video = $("video");
    video.srcObject = cam.stream;
    await video.play();
  } catch (e) {
    if (state.camera === cam) stopCamera();
    setStatus(`cannot use the camera: ${e.name || e}`, true);
    return;
  }
  if (state.camera !== cam) return;
  cam.stream.getVideoTracks().forEach((t) => t.addEventListener("ended", () => {
    if (state.camera === cam) { stopCamera(); setStatus("the camera stopped", true); }
  }));
  state.result = null;
  window.cameraStats = { sent: 0, answered: 0, boxesDrawn: 0, fps: 0 };
  document.body.dataset.state = "camera";
  requestAnimationFrame(() => paintCamera(cam));
  sendFrames(cam);
}

function stopCamera() {
  const cam = state.camera;
  if (!cam) return;
  cam.running = false;
  if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
  state.camera = null;
  $("camera").textContent = "Use the camera";
  $("camera").classList.remove("on");
  document.body.dataset.state = "idle";
}

function paintCamera(cam) {
  if (state.camera !== cam) return;
  window.cameraStats.boxesDrawn = draw();
  requestAnimationFrame(() => paintCamera(cam));
}

async function grabFrame(video) {
  if (video.readyState < 2 || !video.videoWidth) return null; // no frame yet
  const grab = document.createElement("canvas");
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.85));
}

// One request in flight: the next frame is grabbed only when the answer to the last one has come back.
async function sendFrames(cam) {
  const live = () => state.camera === cam && cam.running;
  while (live()) {
    const blob = await grabFrame($("video"));
    if (!live()) return;
    if (!blob) { await pause(50); continue; }
    const minScore = $("min-score").value;
    window.cameraStats.sent += 1;
    let ok = false;
    try {
      const r = await fetch(`/detect?min_score=${encodeURIComponent(minScore)}`, { method: "POST", body: blob,
        headers: { "Content-Type": "image/jpeg" } });
      const data = await r.json();
      if (!live()) return;
      ok = r.ok;
      if (ok) showCameraAnswer(cam, data, minScore);
      else setStatus(`error ${r.status}: ${data.detail}`, true);
    } catch (e) {
      if (!live()) return;
      setStatus(`request failed: ${e}`, true);
    }
    if (!ok) await pause(500); // a busy or failing service is not asked again at once
  }
}

function showCameraAnswer(cam, data, minScore) {
  state.result = data;
  window.lastResult = data;
  fillTable();
  const now = performance.now();
  cam.answeredAt = cam.answeredAt.filter((t) => now - t < 2000).concat([now]);
  const span = (now - cam.answeredAt[0]) / 1000;
  window.cameraStats.fps = span > 0 ? (cam.answeredAt.length - 1) / span : 0;
  window.cameraStats.answered += 1;
  setStatus(`camera · ${window.cameraStats.fps.toFixed(1)} frames/s · ${data.detections.length} detections · min score ${minScore}`);
}

$("camera").addEventListener("click", () => (state.camera ? stopCamera() : startCamera()));
loadModel();
