// The vary playground: any image in, a square PNG under 4 MB out, then the public variations API.
"use strict";

const MAX_SIDE = 1024;              // the largest output size; a bigger upload adds time, not detail
const MAX_BYTES = 4 * 1024 * 1024;  // the endpoint's limit: a PNG *less than* 4 MB
const MAX_IMAGES = 5;               // the endpoint blends at most five
const KEY_STORAGE = "vary.apiKey";
const PREPARING = "The images are still being prepared.";

const $ = (id) => document.getElementById(id);
// `inputs` are the images to send, in order (see "the images" below). `problems` are the file
// errors of the latest choice, shown together.
const state = { inputs: [], problems: [], problemFocus: "file", busy: false, timer: null, models: [], seed: null };

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
  // The field the box describes is marked invalid while it shows, so a screen reader says so on it.
  for (const field of document.querySelectorAll(`[aria-describedby~="${id}"]`)) {
    if (!field.matches("input, select")) continue;
    if (text) field.setAttribute("aria-invalid", "true");
    else field.removeAttribute("aria-invalid");
  }
  if (!text || !focusId) return;
  const rect = box.getBoundingClientRect();
  if (rect.top < 0 || rect.bottom > window.innerHeight) box.scrollIntoView({ block: "center" });
  $(focusId).focus({ preventScroll: true });
}

// OpenAI's code for an image its safety system refused, the input or the generated one.
const CONTENT_POLICY = "content_policy_violation";

// What an API error means, in plain words; the server's own message follows where it helps.
function plainError(status, body) {
  const message = (body && body.error && body.error.message) || "";
  if (body && body.error && body.error.code === CONTENT_POLICY) return `Refused by the content policy. ${message}`;
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
    this.param = (body && body.error && body.error.param) || null;
    this.code = (body && body.error && body.error.code) || "";
  }

  // A refusal of the uploaded image itself (OpenAI's own wording), not of what was made from it.
  get inputRefused() {
    return this.code === CONTENT_POLICY && this.serverMessage.startsWith("Your input image");
  }
}

async function apiFetch(path, key, options = {}) {
  return (await apiResponse(path, key, options)).json();
}

// The response of a request that succeeded (its headers say more: x-vary-seed); an ApiError otherwise.
async function apiResponse(path, key, options = {}) {
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
  return response;
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
  state.models = list.data;
  showControls();
  document.dispatchEvent(new CustomEvent("vary:models", { detail: list.data }));
}

// --- the controls: seed, steps, guidance scale, strength, from the chosen model's card ----------
//
// /v1/models gives, for each model, the defaults and bounds of the controls it honours, and null for
// one it ignores, whose field is then hidden (all of them, for most hosted models). The fields start at
// the model's defaults; only values that differ are sent.

const CONTROLS = ["steps", "guidance_scale", "strength"];
// The fields whose errors show under them; any other error shows under Generate.
const FIELDS = ["model", "n", "size", "format", "seed", ...CONTROLS];
const FIELD_PARAMS = { response_format: "format" };  // the API's name for a field, where it differs

function chosenModel() {
  const id = $("model").value;
  return state.models.find((model) => model.id === id) || (id ? null : state.models[0]) || null;
}

// What a control takes, in words: "a whole number from 1 to 100".
function controlRule(name, range) {
  const what = name === "steps" ? "a whole number" : "a number";
  return range.exclusive_minimum
    ? `${what} above ${range.minimum}, up to ${range.maximum}`
    : `${what} from ${range.minimum} to ${range.maximum}`;
}

function showControls() {
  const model = chosenModel();
  const controls = model && model.controls;
  const honoured = controls && ["seed", ...CONTROLS].some((name) => controls[name]);
  $("controls").hidden = !honoured;
  for (const name of ["seed", ...CONTROLS]) showError(`${name}-error`, "");
  if (!honoured) return;
  for (const name of CONTROLS) {
    const range = controls[name];
    const field = $(name);
    field.closest(".control").hidden = !range;
    if (!range) continue;
    const known = range.default !== null;  // a hosted model's default is the provider's own
    field.min = range.exclusive_minimum ? String(range.minimum + Number(field.step)) : String(range.minimum);
    field.max = String(range.maximum);
    field.value = known ? String(range.default) : "";
    field.dataset.default = known ? String(range.default) : "";
    const bounds = range.exclusive_minimum ? `above ${range.minimum}, up to ${range.maximum}` : `${range.minimum} to ${range.maximum}`;
    const fallback = known ? `Default ${range.default}` : "Default: the provider's own";
    $(`${name}-hint`).textContent = `${fallback} (${bounds}); empty means the default.`;
  }
  $("strength-hint").textContent += " Lower keeps more of the input's layout.";
  $("seed").closest(".control").hidden = !controls.seed;
  if (controls.seed) $("seed").max = String(controls.seed.maximum);
}

// The number of variations, checked as the server checks it; null (and the error by its field) otherwise.
function variationCount() {
  const text = $("n").value.trim();
  if (!/^[0-9]+$/.test(text) || Number(text) < 1 || Number(text) > 10) {
    showError("n-error", "How many: a whole number from 1 to 10.", "n");
    return null;
  }
  return text;
}

// The controls to send, checked as the server checks them; null (and the error shown under its field)
// when one is out of bounds. An empty field is the model's default, as its hint says, and is not sent.
function controlValues() {
  const model = chosenModel();
  const controls = model && model.controls;
  if (!controls) return {};
  const values = {};
  const seed = $("seed").value.trim();
  if (seed !== "" && controls.seed) {
    if (!/^[0-9]+$/.test(seed) || BigInt(seed) > BigInt(controls.seed.maximum)) {
      showError("seed-error", "The seed must be a whole number, 0 or more (or empty for a new one each time).", "seed");
      return null;
    }
    values.seed = seed;
  }
  for (const name of CONTROLS) {
    const range = controls[name];
    const field = $(name);
    const text = field.value.trim();
    if (!range || text === "" || text === field.dataset.default) continue;
    const value = Number(text);
    const low = range.exclusive_minimum ? value <= range.minimum : value < range.minimum;
    const whole = name !== "steps" || Number.isInteger(value);
    if (!Number.isFinite(value) || low || value > range.maximum || !whole) {
      const label = field.closest(".control").querySelector("label").textContent;
      showError(`${name}-error`, `${label}: ${controlRule(name, range)}, or empty for the default (${range.default ?? "the provider's own"}).`, name);
      return null;
    }
    if (range.default === null || value !== Number(range.default)) values[name] = String(value);
  }
  return values;
}

// A field's error goes once the field changes: what it said is about a value no longer there.
function clearFieldErrors() {
  for (const name of FIELDS) {
    const clear = () => showError(`${name}-error`, "");
    $(name).addEventListener("input", clear);
    $(name).addEventListener("change", clear);
  }
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

// --- the images: any format the browser decodes, made square, PNG, under 4 MB -------------
//
// Each input is { label, source (ImageBitmap), png, pngUrl, token, card }. `png` is the square PNG
// that Generate sends: null while none is ready for the current file and fit, so Generate can never
// send a stale one. `token` lets only the latest preparation of that input land.

function currentFit() {
  return document.querySelector('input[name="fit"]:checked').value;
}

// Generate is aria-disabled (still focusable, so keyboard users keep their place) unless every
// input's PNG for the current fit is ready and no request is under way.
function updateGenerate() {
  const ready = state.inputs.length > 0 && state.inputs.every((input) => input.png);
  $("generate").setAttribute("aria-disabled", String(!ready || state.busy));
  document.dispatchEvent(new Event("vary:inputs"));  // the compare view (compare.js) sends the same inputs
}

// One card per input: the square PNG, what was done to it, its weight (shown when there are two or
// more) and a Remove button.
function inputCard() {
  const root = document.createElement("figure");
  root.className = "input stale";
  const img = document.createElement("img");
  const info = document.createElement("figcaption");
  info.textContent = "Loading…";
  const weightLabel = document.createElement("label");
  weightLabel.className = "weight";
  const weight = document.createElement("input");
  Object.assign(weight, { type: "number", min: "0", step: "any", value: "1", inputMode: "decimal" });
  weightLabel.append("Weight ", weight);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = "Remove";
  const controls = document.createElement("div");
  controls.className = "row";
  controls.append(weightLabel, remove);
  // A weight's error shows under its own field, not above all the images.
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  root.append(img, info, controls, error);
  return { root, img, info, weight, weightLabel, remove, error };
}

function newInput(label) {
  const input = { label, source: null, png: null, pngUrl: null, token: 0, card: inputCard() };
  input.card.remove.addEventListener("click", () => removeInput(input, true));
  // A weight's error (or "all 0", shown by the first) goes once any weight changes.
  input.card.weight.addEventListener("input", () => {
    for (const each of state.inputs) showError(each.card.error.id, "");
  });
  state.inputs.push(input);
  $("preview").append(input.card.root);
  return input;
}

// Positions, names and ids follow the order on screen. The first image's caption keeps the id
// (`preview-info`) it had when there was only ever one.
function renumber() {
  const several = state.inputs.length > 1;
  state.inputs.forEach((input, index) => {
    const n = index + 1;
    const { card } = input;
    card.root.id = `input-${n}`;
    card.info.id = n === 1 ? "preview-info" : `preview-info-${n}`;
    card.img.alt = `Image ${n}, the square PNG that will be sent`;
    card.weight.id = `weight-${n}`;
    card.error.id = `weight-error-${n}`;
    card.weight.setAttribute("aria-describedby", card.error.id);
    card.weight.setAttribute("aria-label", `Weight of image ${n} (${input.label})`);
    card.remove.setAttribute("aria-label", `Remove image ${n} (${input.label})`);
    card.weightLabel.hidden = !several;
  });
  $("preview").hidden = state.inputs.length === 0;
  $("add").hidden = state.inputs.length === 0 || state.inputs.length >= MAX_IMAGES;
  updateGenerate();
}

function invalidate(input) {
  input.token += 1;
  input.png = null;
  input.card.root.classList.add("stale");
  updateGenerate();
  return input.token;
}

// A removed input leaves nothing behind to send or show. With `focus` (the user's Remove), the
// focus goes to the next card's Remove, or the previous one's, or the file picker.
function removeInput(input, focus) {
  const index = state.inputs.indexOf(input);
  if (index < 0) return;
  input.token += 1;  // a preparation still under way for it lands nowhere
  state.inputs.splice(index, 1);
  input.card.root.remove();
  if (input.pngUrl) URL.revokeObjectURL(input.pngUrl);
  renumber();
  if (!focus) return;
  showError("file-error", "");
  const next = state.inputs[Math.min(index, state.inputs.length - 1)];
  (next ? next.card.remove : $("file")).focus();
}

function clearInputs() {
  for (const input of [...state.inputs]) removeInput(input, false);
}

// An input that cannot be used is left out, and the error names it.
function leaveOut(input, problem, alone) {
  removeInput(input, false);
  const subject = `${input.label} ${alone && state.inputs.length === 0 ? problem.alone : problem.named}`;
  state.problems.push(subject);
  showError("file-error", state.problems.join(" "), state.inputs.length ? state.problemFocus : "file");
}

const UNREADABLE = {
  alone: "is not an image the browser can read. Try a PNG, JPEG, WebP or GIF.",
  named: "is not an image the browser can read, so it was left out. Try a PNG, JPEG, WebP or GIF.",
};
const TOO_LARGE = {
  alone: "is too large for the browser to convert. Try a smaller one.",
  named: "is too large for the browser to convert, so it was left out. Try a smaller one.",
};

// Files chosen or dropped: `replace` (the main picker and drop zone) starts over, otherwise they are
// added after the images already there. Past five, the rest are left out and named.
async function useFiles(items, replace, focusId) {
  state.problems = [];
  state.problemFocus = focusId;
  showError("file-error", "");
  $("elapsed").textContent = "";  // "3 images." spoke of the images before these
  if (replace) clearInputs();
  const room = MAX_IMAGES - state.inputs.length;
  const taken = items.slice(0, room);
  const inputs = taken.map((item) => newInput(item.label));
  renumber();
  if (items.length > room) {
    const names = items.slice(room).map((item) => item.label).join(", ");
    state.problems.push(`At most ${MAX_IMAGES} images are blended; left out: ${names}.`);
    showError("file-error", state.problems.join(" "), focusId);
  }
  const alone = items.length === 1;
  await Promise.all(taken.map((item, index) => load(inputs[index], item.blob, alone)));
}

async function load(input, blob, alone) {
  const token = input.token;
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (err) {
    if (token === input.token) leaveOut(input, UNREADABLE, alone);
    return;
  }
  if (token !== input.token) return;  // removed meanwhile
  input.source = bitmap;
  await prepare(input, alone);
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

async function prepare(input, alone) {
  const bitmap = input.source;
  if (!bitmap) return;
  const token = invalidate(input);
  const fit = currentFit();
  const squared = fit === "pad" ? Math.max(bitmap.width, bitmap.height) : Math.min(bitmap.width, bitmap.height);
  let side = Math.min(squared, MAX_SIDE);
  let png = await toPng(squareCanvas(bitmap, fit, side));
  while (png && png.size >= MAX_BYTES && side > 64) {  // a noisy photo can exceed 4 MB as PNG
    side = Math.floor(side * 0.8);
    png = await toPng(squareCanvas(bitmap, fit, side));
  }
  if (token !== input.token) return;  // removed, or the fit changed meanwhile: a newer run lands
  if (!png) {  // the canvas was too large for this browser
    leaveOut(input, TOO_LARGE, alone);
    return;
  }
  input.png = png;
  if (input.pngUrl) URL.revokeObjectURL(input.pngUrl);
  input.pngUrl = URL.createObjectURL(png);
  input.card.img.src = input.pngUrl;
  const steps = [`${input.label} ${bitmap.width}×${bitmap.height}`];
  if (bitmap.width !== bitmap.height) steps.push(fit === "pad" ? `padded to ${squared}×${squared}` : `cropped to ${squared}×${squared}`);
  if (side !== squared) steps.push(`scaled to ${side}×${side}`);
  steps.push(png.size < 1024 ? `PNG, ${png.size} bytes` : `PNG, ${(png.size / 1024).toFixed(0)} KB`);
  input.card.info.textContent = steps.join(" → ");
  input.card.root.classList.remove("stale");
  if ($("elapsed").textContent === PREPARING && state.inputs.every((each) => each.png)) $("elapsed").textContent = "";
  updateGenerate();
}

// The fit changed: every input is made square again.
function prepareAll() {
  state.problems = [];
  state.problemFocus = "file";
  const alone = state.inputs.length === 1;
  for (const input of state.inputs) prepare(input, alone);
}

// The weights, one per input, checked as the server checks them; an error names the image and
// puts the focus in its weight field.
function weights() {
  for (const input of state.inputs) showError(input.card.error.id, "");
  const values = [];
  for (const [index, input] of state.inputs.entries()) {
    const field = input.card.weight;
    const value = field.value.trim() === "" ? NaN : Number(field.value);
    if (!Number.isFinite(value) || value < 0) {
      showError(input.card.error.id, `Image ${index + 1} (${input.label}): the weight must be a number, 0 or more.`, field.id);
      return null;
    }
    values.push(value);
  }
  if (!values.some((value) => value > 0)) {
    const first = state.inputs[0].card;
    showError(first.error.id, "The weights are all 0: give at least one image a weight above 0.", first.weight.id);
    return null;
  }
  return values;
}

// --- generating ----------------------------------------------------------------------------

function busy(on) {
  state.busy = on;
  updateGenerate();
  $("progress").hidden = !on;
  clearInterval(state.timer);
  $("timer").textContent = "";
  if (on) {
    // The live status says the start and, later, the result; the seconds go beside it, unannounced,
    // or a screen reader would keep reading them out.
    const started = performance.now();
    $("elapsed").textContent = "Generating…";
    state.timer = setInterval(() => {
      $("timer").textContent = `${Math.round((performance.now() - started) / 1000)} s`;
    }, 500);
  }
}

// The caption is the image's name for sighted users; a screen reader hears it once, as the alt text.
function figure(src, caption, extraClass) {
  const item = document.createElement("figure");
  if (extraClass) item.className = extraClass;
  const image = document.createElement("img");
  image.src = src;
  image.alt = caption;
  const text = document.createElement("figcaption");
  const name = document.createElement("span");
  name.textContent = caption;
  name.setAttribute("aria-hidden", "true");
  text.append(name);
  item.append(image, text);
  return { item, text };
}

// Decoded here, not fetched from a data: URL: the page's CSP lets it connect to vary only (connect-src 'self').
function base64Blob(text) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

// `originals` are the inputs as sent ({ src, label }): "Original" for one, "Image 1", ... for several.
function showSeed(seed) {
  state.seed = seed;
  $("seed-used").textContent = seed ? `Seed ${seed}.` : "";
  $("same-seed").hidden = !seed;
}

function showResults(data, originals) {
  const grid = $("grid");
  grid.replaceChildren(...originals.map((original) => figure(original.src, original.label, "original").item));
  data.forEach((entry, index) => {
    const src = entry.url || `data:image/png;base64,${entry.b64_json}`;
    const { item, text } = figure(src, `Variation ${index + 1}`);
    const download = document.createElement("a");
    download.href = src;
    download.download = `variation-${index + 1}.png`;
    download.textContent = "Download";
    download.setAttribute("aria-label", `Download variation ${index + 1}`);
    const again = document.createElement("button");
    again.type = "button";
    again.className = "secondary";
    again.textContent = "Vary this one";
    again.setAttribute("aria-label", `Vary this one (variation ${index + 1})`);
    again.addEventListener("click", async () => {  // this one image replaces the inputs
      const blob = entry.url ? await (await fetch(entry.url)).blob() : base64Blob(entry.b64_json);
      await useFiles([{ blob, label: `Variation ${index + 1}` }], true, "file");
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
  if (!state.inputs.length) {
    showError("file-error", "Choose an image first.", "file");
    return;
  }
  if (!state.inputs.every((input) => input.png)) {
    $("elapsed").textContent = PREPARING;
    return;
  }
  const several = state.inputs.length > 1;
  showError("file-error", "");  // what the last choice left out was said; now the weights and controls speak
  const blend = several ? weights() : null;
  if (several && !blend) return;
  for (const name of FIELDS) showError(`${name}-error`, "");
  const count = variationCount();
  if (!count) return;
  const controls = controlValues();
  if (!controls) return;
  showError("file-error", "");
  showError("error", "");
  $("key-status").textContent = "";  // "Key accepted." spoke of the Save; what happens now is said below
  const key = typedKey();
  const form = new FormData();
  // One image is the request it always was; several go as image[] parts, as the SDKs send a list.
  if (several) {
    state.inputs.forEach((input, index) => form.append("image[]", input.png, `image-${index + 1}.png`));
    form.append("image_weights", blend.join(","));
  } else {
    form.append("image", state.inputs[0].png, "image.png");
  }
  form.append("n", count);
  form.append("size", $("size").value);
  form.append("response_format", $("format").value);
  if ($("model").value) form.append("model", $("model").value);
  for (const [name, value] of Object.entries(controls)) form.append(name, value);
  const originals = state.inputs.map((input, index) => ({
    src: input.pngUrl,
    label: several ? `Image ${index + 1}` : "Original",
  }));
  busy(true);
  try {
    const response = await apiResponse("/v1/images/variations", key, { method: "POST", body: form });
    const result = await response.json();
    busy(false);
    showSeed(response.headers.get("x-vary-seed"));
    if (key === typedKey()) showError("key-error", "");  // the key worked: an old refusal is stale
    $("elapsed").textContent = `${result.data.length} image${result.data.length === 1 ? "" : "s"}.`;
    showResults(result.data, originals);
  } catch (err) {
    busy(false);
    $("elapsed").textContent = "";
    if (err.status === 401) keyRefused(err, key, true);
    else if (err.status === 400 && fieldOf(err.param)) showError(`${fieldOf(err.param)}-error`, err.message, fieldOf(err.param));
    else if (err.inputRefused) showError("file-error", err.message, "file");  // by the image it is about
    else showError("error", err.message, "generate");
  }
}

// The form field a server error's `param` is about, if it is one of the form's.
function fieldOf(param) {
  const name = FIELD_PARAMS[param] || param;
  return FIELDS.includes(name) && !$(name).closest("[hidden]") ? name : null;
}

// --- wiring --------------------------------------------------------------------------------

function acceptFiles(picker, zone, replace) {
  const use = (files) => {
    const items = Array.from(files, (file) => ({ blob: file, label: file.name }));
    picker.value = "";  // choosing the same file again, once fixed, is a change again
    if (items.length) useFiles(items, replace, picker.id);
  };
  picker.addEventListener("change", () => use(picker.files));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    use(event.dataTransfer.files);
  });
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", saveKey);
  // "Key accepted." speaks of the saved key, not of what is being typed now.
  $("api-key").addEventListener("input", () => { $("key-status").textContent = ""; });
  // The main picker and drop zone start over; "Add an image" keeps the images already there.
  acceptFiles($("file"), $("drop"), true);
  acceptFiles($("add-file"), $("add"), false);
  for (const radio of document.querySelectorAll('input[name="fit"]')) radio.addEventListener("change", prepareAll);
  $("generate-form").addEventListener("submit", generate);
  $("model").addEventListener("change", showControls);
  clearFieldErrors();
  $("same-seed").addEventListener("click", () => {  // the last result's seed, made again
    $("seed").value = state.seed;
    $("generate-form").requestSubmit();
  });
  updateGenerate();
  if (typedKey()) loadModels();
}

init();
