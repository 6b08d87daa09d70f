// The vary playground: any image in, a square PNG under 4 MB out, then the public variations API.
"use strict";

const MAX_SIDE = 1024;              // the largest output size; a bigger upload adds time, not detail
const MAX_BYTES = 4 * 1024 * 1024;  // the endpoint's limit: a PNG *less than* 4 MB
const KEY_STORAGE = "vary.apiKey";
const PREPARING = "The image is still being prepared.";

const $ = (id) => document.getElementById(id);
// `png` is the square PNG that Generate sends: null while none is ready for the current file and
// fit, so Generate can never send a stale one. `token` lets only the latest preparation land.
const state = { source: null, sourceLabel: "", png: null, pngUrl: null, token: 0, busy: false, timer: null };

// The key in the field is the one used, saved or not: what the user sees is what is sent.
function typedKey() {
  return $("api-key").value.trim();
}

function headers(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Shows `text` in the error box `id` next to its control (empty text hides it). With `focusId` the
// box is scrolled into view if it is not already, and that control takes the focus, so an error is
// never left below the fold.
function showError(id, text, focusId) {
  const box = $(id);
  box.textContent = text;
  box.hidden = !text;
  if (!text || !focusId) return;
  const rect = box.getBoundingClientRect();
  if (rect.top < 0 || rect.bottom > window.innerHeight) box.scrollIntoView({ block: "center" });
  $(focusId).focus({ preventScroll: true });
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

// An API error: the plain-words message, with the HTTP status and the server's own message kept
// so that a refused key can be shown by the key field.
class ApiError extends Error {
  constructor(status, body) {
    super(status ? plainError(status, body) : "Could not reach the server. Is it still running?");
    this.status = status;
    this.serverMessage = (body && body.error && body.error.message) || "";
  }
}

async function apiFetch(path, key, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(key), ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, null);
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (err) { /* not JSON: the status says enough */ }
    throw new ApiError(response.status, body);
  }
  return response.json();
}

function showModels(list) {
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(new Option("server default", ""));
  for (const model of list.data) {
    const label = model.parent ? `${model.id} (alias of ${model.parent})` : model.id;
    select.append(new Option(label, model.id));
  }
  select.value = chosen;
  if (select.selectedIndex < 0) select.value = "";
}

// A 401 is about the key, whichever request got it: say so by the key field.
function keyRefused(err, key, focus) {
  const text = key ? `Key refused: ${err.serverMessage || err.message}` : "This server needs an API key: paste it above, then Save.";
  $("key-status").textContent = "";
  showError("key-error", text, focus ? "api-key" : undefined);
}

// Save checks the key against the server (GET /v1/models) and says whether it was accepted; a
// refused key is not stored.
async function saveKey(event) {
  event.preventDefault();
  const key = typedKey();
  showError("key-error", "");
  $("key-status").textContent = "Checking…";
  try {
    const list = await apiFetch("/v1/models", key);
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    $("key-status").textContent = key ? "Key accepted." : "No key saved; this server needs none.";
    showModels(list);
  } catch (err) {
    if (err.status === 401) {
      keyRefused(err, key, true);
      return;
    }
    if (key) localStorage.setItem(KEY_STORAGE, key);
    $("key-status").textContent = "";
    showError("key-error", `Saved, but not checked: ${err.message}`, "api-key");
  }
}

// On load, with a key kept from before: list the models, and say if the key no longer works.
async function loadModels() {
  const key = typedKey();
  try {
    showModels(await apiFetch("/v1/models", key));
  } catch (err) {
    if (err.status === 401) keyRefused(err, key, false);
    else showError("key-error", `Could not list the models: ${err.message}`);
  }
}

// --- the image: any format the browser decodes, made square, PNG, under 4 MB ---------------

function currentFit() {
  return document.querySelector('input[name="fit"]:checked').value;
}

// Generate is aria-disabled (still focusable, so keyboard users keep their place) unless the PNG
// for the current file and fit is ready and no request is under way.
function updateGenerate() {
  $("generate").setAttribute("aria-disabled", String(!state.png || state.busy));
}

// A new file or fit: the old PNG must not be sent, and the preview says it is being redone.
function invalidate() {
  state.token += 1;
  state.png = null;
  $("preview").classList.add("stale");
  updateGenerate();
  return state.token;
}

// After a file that failed to load nothing of the previous image is left to send or show.
function forgetImage() {
  invalidate();
  state.source = null;
  state.sourceLabel = "";
  if (state.pngUrl) URL.revokeObjectURL(state.pngUrl);
  state.pngUrl = null;
  $("preview-image").removeAttribute("src");
  $("preview-info").textContent = "";
  $("preview").hidden = true;
  $("file").value = "";  // choosing the same file again, once fixed, is a change again
}

async function useImage(blob, label) {
  showError("file-error", "");
  const token = invalidate();
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (err) {
    if (token !== state.token) return;  // a newer file came meanwhile
    forgetImage();
    showError("file-error", "This file is not an image the browser can read. Try a PNG, JPEG, WebP or GIF.", "file");
    return;
  }
  if (token !== state.token) return;
  state.source = bitmap;
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
  const token = invalidate();
  const fit = currentFit();
  const squared = fit === "pad" ? Math.max(bitmap.width, bitmap.height) : Math.min(bitmap.width, bitmap.height);
  let side = Math.min(squared, MAX_SIDE);
  let png = await toPng(squareCanvas(bitmap, fit, side));
  while (png && png.size >= MAX_BYTES && side > 64) {  // a noisy photo can exceed 4 MB as PNG
    side = Math.floor(side * 0.8);
    png = await toPng(squareCanvas(bitmap, fit, side));
  }
  if (token !== state.token) return;  // the file or the fit changed meanwhile: a newer run lands
  if (!png) {  // the canvas was too large for this browser
    forgetImage();
    showError("file-error", "This image is too large for the browser to convert. Try a smaller one.", "file");
    return;
  }
  state.png = png;
  if (state.pngUrl) URL.revokeObjectURL(state.pngUrl);
  state.pngUrl = URL.createObjectURL(png);
  $("preview-image").src = state.pngUrl;
  const steps = [`${state.sourceLabel} ${bitmap.width}×${bitmap.height}`];
  if (bitmap.width !== bitmap.height) steps.push(fit === "pad" ? `padded to ${squared}×${squared}` : `cropped to ${squared}×${squared}`);
  if (side !== squared) steps.push(`scaled to ${side}×${side}`);
  steps.push(png.size < 1024 ? `PNG, ${png.size} bytes` : `PNG, ${(png.size / 1024).toFixed(0)} KB`);
  $("preview-info").textContent = steps.join(" → ");
  $("preview").classList.remove("stale");
  $("preview").hidden = false;
  if ($("elapsed").textContent === PREPARING) $("elapsed").textContent = "";
  updateGenerate();
}

// --- generating ----------------------------------------------------------------------------

function busy(on) {
  state.busy = on;
  updateGenerate();
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
      $("preview").scrollIntoView();
      $("generate").focus();
    });
    text.append(" ", download, " ", again);
    grid.append(item);
  });
  $("results").hidden = false;
  // On a phone the results arrive below the screen: bring them up.
  const top = $("results").getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight / 2) $("results").scrollIntoView({ block: "start" });
}

async function generate(event) {
  event.preventDefault();
  if (state.busy) return;
  if (!state.source) {
    showError("file-error", "Choose an image first.", "file");
    return;
  }
  if (!state.png) {
    $("elapsed").textContent = PREPARING;
    return;
  }
  showError("error", "");
  const key = typedKey();
  const form = new FormData();
  form.append("image", state.png, "image.png");
  form.append("n", $("n").value);
  form.append("size", $("size").value);
  form.append("response_format", $("format").value);
  if ($("model").value) form.append("model", $("model").value);
  const original = state.pngUrl;
  busy(true);
  try {
    const result = await apiFetch("/v1/images/variations", key, { method: "POST", body: form });
    busy(false);
    if (key === typedKey()) showError("key-error", "");  // the key worked: an old refusal is stale
    $("elapsed").textContent = `${result.data.length} image${result.data.length === 1 ? "" : "s"}.`;
    showResults(result.data, original);
  } catch (err) {
    busy(false);
    $("elapsed").textContent = "";
    if (err.status === 401) keyRefused(err, key, true);
    else showError("error", err.message, "generate");
  }
}

// --- wiring --------------------------------------------------------------------------------

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", saveKey);
  // "Key accepted." speaks of the saved key, not of what is being typed now.
  $("api-key").addEventListener("input", () => { $("key-status").textContent = ""; });
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
  updateGenerate();
  if (typedKey()) loadModels();
}

init();
