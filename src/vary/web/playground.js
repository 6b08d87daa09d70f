// The vary playground: any image in, a square PNG under 4 MB out, then the public variations API.
"use strict";

const MAX_SIDE = 1024;              // the largest output size; a bigger upload adds time, not detail
const MAX_BYTES = 4 * 1024 * 1024;  // the endpoint's limit: a PNG *less than* 4 MB
const KEY_STORAGE = "vary.apiKey";

const $ = (id) => document.getElementById(id);
const state = { source: null, sourceLabel: "", png: null, pngUrl: null, timer: null };

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

// What an API error means, in plain words; the server's own message follows where it helps.
function plainError(status, body) {
  const message = (body && body.error && body.error.message) || "";
  if (status === 401) return "The server did not accept the API key. Check it, then save it again." + (message ? ` (${message})` : "");
  if (status === 403) return `This key may not do that. ${message}`;
  if (status === 413) return "The image is too large to upload.";
  if (status === 429) return `Too many requests just now. ${message}`;
  if (status >= 500) return `The server could not make the images. ${message || "Try again in a moment."}`;
  return message || `The request failed (HTTP ${status}).`;
}

async function apiFetch(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (err) {
    throw new Error("Could not reach the server. Is it still running?");
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (err) { /* not JSON: the status says enough */ }
    throw new Error(plainError(response.status, body));
  }
  return response.json();
}

async function loadModels() {
  const select = $("model");
  try {
    const list = await apiFetch("/v1/models");
    select.replaceChildren(new Option("server default", ""));
    for (const model of list.data) {
      const label = model.parent ? `${model.id} (alias of ${model.parent})` : model.id;
      select.append(new Option(label, model.id));
    }
  } catch (err) {
    showError(err.message);
  }
}

// --- the image: any format the browser decodes, made square, PNG, under 4 MB ---------------

async function useImage(blob, label) {
  showError("");
  try {
    state.source = await createImageBitmap(blob);
  } catch (err) {
    showError("This file is not an image the browser can read. Try a PNG, JPEG, WebP or GIF.");
    return;
  }
  state.sourceLabel = label;
  await prepare();
}

function squareCanvas(bitmap, fit, side) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = side;
  const context = canvas.getContext("2d");
  const { width, height } = bitmap;
  if (fit === "pad") {
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, side, side);
    const scale = side / Math.max(width, height);
    const w = width * scale, h = height * scale;
    context.drawImage(bitmap, (side - w) / 2, (side - h) / 2, w, h);
  } else {
    const crop = Math.min(width, height);
    context.drawImage(bitmap, (width - crop) / 2, (height - crop) / 2, crop, crop, 0, 0, side, side);
  }
  return canvas;
}

function toPng(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function prepare() {
  const bitmap = state.source;
  if (!bitmap) return;
  const fit = document.querySelector('input[name="fit"]:checked').value;
  const squared = fit === "pad" ? Math.max(bitmap.width, bitmap.height) : Math.min(bitmap.width, bitmap.height);
  let side = Math.min(squared, MAX_SIDE);
  let png = await toPng(squareCanvas(bitmap, fit, side));
  while (png.size >= MAX_BYTES && side > 64) {  // a noisy photo can exceed 4 MB as PNG
    side = Math.floor(side * 0.8);
    png = await toPng(squareCanvas(bitmap, fit, side));
  }
  state.png = png;
  if (state.pngUrl) URL.revokeObjectURL(state.pngUrl);
  state.pngUrl = URL.createObjectURL(png);
  $("preview-image").src = state.pngUrl;
  const steps = [`${state.sourceLabel} ${bitmap.width}×${bitmap.height}`];
  if (bitmap.width !== bitmap.height) steps.push(fit === "pad" ? `padded to ${squared}×${squared}` : `cropped to ${squared}×${squared}`);
  if (side !== squared) steps.push(`scaled to ${side}×${side}`);
  steps.push(`PNG, ${(png.size / 1024).toFixed(0)} KB`);
  $("preview-info").textContent = steps.join(" → ");
  $("preview").hidden = false;
}

// --- generating ----------------------------------------------------------------------------

function busy(on) {
  $("generate").disabled = on;
  $("progress").hidden = !on;
  clearInterval(state.timer);
  if (on) {
    const started = performance.now();
    $("elapsed").textContent = "Generating…";
    state.timer = setInterval(() => {
      $("elapsed").textContent = `Generating… ${Math.round((performance.now() - started) / 1000)} s`;
    }, 500);
  }
}

function figure(src, caption, extraClass) {
  const item = document.createElement("figure");
  if (extraClass) item.className = extraClass;
  const image = document.createElement("img");
  image.src = src;
  image.alt = caption;
  const text = document.createElement("figcaption");
  text.append(caption);
  item.append(image, text);
  return { item, text };
}

function showResults(data, original) {
  const grid = $("grid");
  grid.replaceChildren(figure(original, "Original", "original").item);
  data.forEach((entry, index) => {
    const src = entry.url || `data:image/png;base64,${entry.b64_json}`;
    const { item, text } = figure(src, `Variation ${index + 1}`);
    const download = document.createElement("a");
    download.href = src;
    download.download = `variation-${index + 1}.png`;
    download.textContent = "Download";
    const again = document.createElement("button");
    again.type = "button";
    again.className = "secondary";
    again.textContent = "Vary this one";
    again.addEventListener("click", async () => {
      const blob = await (await fetch(src)).blob();
      await useImage(blob, `Variation ${index + 1}`);
      $("preview").scrollIntoView({ behavior: "smooth" });
      $("generate").focus();
    });
    text.append(" ", download, " ", again);
    grid.append(item);
  });
  $("results").hidden = false;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  if (!state.png) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", state.png, "image.png");
  form.append("n", $("n").value);
  form.append("size", $("size").value);
  form.append("response_format", $("format").value);
  if ($("model").value) form.append("model", $("model").value);
  const original = state.pngUrl;
  busy(true);
  try {
    const result = await apiFetch("/v1/images/variations", { method: "POST", body: form });
    showResults(result.data, original);
    $("elapsed").textContent = `${result.data.length} image${result.data.length === 1 ? "" : "s"}.`;
  } catch (err) {
    $("elapsed").textContent = "";
    showError(err.message);
  } finally {
    busy(false);
    if (!$("error").hidden) $("elapsed").textContent = "";
  }
}

// --- wiring --------------------------------------------------------------------------------

function init() {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("key-status").textContent = "Saved.";
    loadModels();
  });
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) useImage(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) useImage(file, file.name);
  });
  for (const radio of document.querySelectorAll('input[name="fit"]')) radio.addEventListener("change", prepare);
  $("generate-form").addEventListener("submit", generate);
  if (apiKey()) loadModels();
}

init();
