// The compare view: the images of section 1 (one, or a blend) and one seed, a variation from each chosen
// model, side by side with its licence, time and seed. Uses playground.js's state and helpers.
"use strict";

// Requests in flight at once: each model queues on the server, and a browser keeps six connections to a
// host, which the rest of the page needs too.
const COMPARE_AT_ONCE = 3;
// A seed every model takes: Bedrock's, the narrowest, go up to 2**31 - 2.
const COMPARE_SEED_LIMIT = 2 ** 31 - 1;
const comparing = { busy: false, cells: [], seed: null, models: [] };

// --- the models to choose from, from /v1/models -------------------------------------------------

function showCompareModels(models) {
  comparing.models = models;
  const list = $("compare-list");
  const chosen = new Set(Array.from(list.querySelectorAll("input:checked"), (input) => input.value));
  list.replaceChildren(...models.map((model, index) => {
    const choice = document.createElement("div");
    choice.className = "model-choice";
    const box = document.createElement("input");
    Object.assign(box, { type: "checkbox", name: "compare-model", value: model.id, id: `compare-model-${index + 1}` });
    box.checked = chosen.has(model.id);
    box.setAttribute("aria-describedby", `compare-licence-${index + 1} compare-models-error`);
    box.addEventListener("change", () => showError("compare-models-error", ""));
    const name = document.createElement("label");  // the box's name is the model's; the licence describes it
    name.htmlFor = box.id;
    name.textContent = model.parent ? `${model.id} (alias of ${model.parent})` : model.id;
    const licence = document.createElement("span");
    licence.className = "hint";
    licence.id = `compare-licence-${index + 1}`;
    licence.textContent = `Licence: ${model.license}`;
    choice.append(box, name, licence);
    return choice;
  }));
  $("compare-none").hidden = models.length > 0;
  updateCompare();
}

function chosenModels() {
  return Array.from($("compare-list").querySelectorAll("input:checked"), (box) => box.value);
}

// Compare is aria-disabled (still focusable) unless every input is ready and no comparison is under way.
function updateCompare() {
  const ready = state.inputs.length > 0 && state.inputs.every((input) => input.png);
  $("compare").setAttribute("aria-disabled", String(!ready || comparing.busy));
  const made = comparing.cells.some((cell) => cell.bytes);
  $("download-all").setAttribute("aria-disabled", String(!made || comparing.busy));
}

// The seed the field gives, or one drawn for this comparison; null (and the error by the field) if wrong.
function compareSeed() {
  const text = $("compare-seed").value.trim();
  if (text === "") return String(Math.floor(Math.random() * COMPARE_SEED_LIMIT));
  if (!/^[0-9]+$/.test(text) || Number(text) >= COMPARE_SEED_LIMIT) {
    showError("compare-seed-error", `The seed must be a whole number from 0 to ${COMPARE_SEED_LIMIT - 1}, or empty.`, "compare-seed");
    return null;
  }
  return text;
}

// --- the grid: one cell per model -----------------------------------------------------------------

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

function compareCell(model, index) {
  const card = comparing.models.find((each) => each.id === model);
  const root = document.createElement("figure");
  root.className = "cell";
  root.id = `cell-${index + 1}`;
  root.setAttribute("aria-busy", "true");
  const picture = document.createElement("div");
  picture.className = "cell-picture";
  picture.textContent = "Waiting…";
  const caption = document.createElement("figcaption");
  const name = document.createElement("strong");
  name.textContent = model;
  const facts = document.createElement("dl");
  facts.className = "facts";
  const cell = { model, index, root, picture, caption, bytes: null, seconds: null, seed: null, error: null };
  fact(facts, "Licence", card ? card.license : "not listed");
  cell.time = fact(facts, "Time", "–");
  cell.seedText = fact(facts, "Seed", "–");
  caption.append(name, facts);
  root.append(picture, caption);
  return cell;
}

function cellMade(cell, b64, seed, seconds) {
  cell.bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  cell.seconds = seconds;
  cell.seed = seed;
  const src = `data:image/png;base64,${b64}`;
  const image = document.createElement("img");
  image.src = src;
  image.alt = `Variation by ${cell.model}`;
  cell.picture.replaceWith(image);
  cell.picture = image;
  cell.time.textContent = `${seconds.toFixed(1)} s`;
  cell.seedText.textContent = seed || "the provider's own";
  const download = document.createElement("a");
  download.href = src;
  download.download = fileName(cell);
  download.textContent = "Download";
  download.setAttribute("aria-label", `Download the variation by ${cell.model}`);
  const again = document.createElement("button");
  again.type = "button";
  again.className = "secondary";
  again.textContent = "Vary this one";
  again.setAttribute("aria-label", `Vary this one (the variation by ${cell.model})`);
  again.addEventListener("click", async () => {  // this image replaces the inputs, for the next comparison
    await useFiles([{ blob: base64Blob(b64), label: `${cell.model} variation` }], true, "file");
    $("preview").scrollIntoView();
    $("compare").focus();
  });
  const actions = document.createElement("p");
  actions.className = "row";
  actions.append(download, again);
  cell.caption.append(actions);
  cell.root.removeAttribute("aria-busy");
}

function cellRefused(cell, message, seconds) {
  cell.error = message;
  cell.seconds = seconds;
  cell.picture.textContent = "No image";
  cell.picture.classList.add("refused");
  cell.time.textContent = `${seconds.toFixed(1)} s`;
  const error = document.createElement("p");
  error.className = "error";
  error.textContent = message;
  cell.caption.append(error);
  cell.root.removeAttribute("aria-busy");
}

function fileName(cell) {
  const slug = cell.model.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[.-]+|[.-]+$/g, "") || "model";
  return `${String(cell.index + 1).padStart(2, "0")}-${slug}.png`;
}

// --- running it ------------------------------------------------------------------------------------

// Runs `tasks` (functions returning promises), at most `limit` at a time, in order.
async function inTurn(tasks, limit) {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

function variationForm(model, size, seed, blend) {
  const form = new FormData();
  if (blend) {
    state.inputs.forEach((input, index) => form.append("image[]", input.png, `image-${index + 1}.png`));
    form.append("image_weights", blend.join(","));
  } else {
    form.append("image", state.inputs[0].png, "image.png");
  }
  for (const [name, value] of [["n", "1"], ["size", size], ["response_format", "b64_json"], ["model", model], ["seed", seed]]) {
    form.append(name, value);
  }
  return form;
}

async function runCell(cell, key, size, seed, blend) {
  cell.picture.textContent = "Making…";
  const started = performance.now();
  try {
    const response = await apiResponse("/v1/images/variations", key, { method: "POST", body: variationForm(cell.model, size, seed, blend) });
    const result = await response.json();
    cellMade(cell, result.data[0].b64_json, response.headers.get("x-vary-seed"), (performance.now() - started) / 1000);
  } catch (err) {
    if (err.status === 401) keyRefused(err, key, false);
    cellRefused(cell, err.message, (performance.now() - started) / 1000);
  }
  $("compare-progress").value += 1;
}

async function runCompare(event) {
  event.preventDefault();
  if (comparing.busy) return;
  if (!state.inputs.length) {
    showError("file-error", "Choose an image first.", "file");
    return;
  }
  if (!state.inputs.every((input) => input.png)) {
    $("compare-status").textContent = PREPARING;
    return;
  }
  const models = chosenModels();
  if (!models.length) {
    const first = $("compare-list").querySelector("input");
    const text = first ? "Choose one or more models to compare." : "Save the API key above to list the models.";
    showError("compare-models-error", text, first ? first.id : "api-key");
    return;
  }
  const blend = state.inputs.length > 1 ? weights() : null;
  if (state.inputs.length > 1 && !blend) return;
  const seed = compareSeed();
  if (seed === null) return;
  const key = typedKey();
  const size = $("compare-size").value;

  comparing.seed = seed;
  comparing.cells = models.map(compareCell);
  $("compare-grid").replaceChildren(...comparing.cells.map((cell) => cell.root));
  $("comparison-seed").textContent = `Seed ${seed}, the same for every model; ${size}.`;
  $("comparison").hidden = false;
  comparing.busy = true;
  updateCompare();
  Object.assign($("compare-progress"), { hidden: false, max: models.length, value: 0 });
  $("compare-status").textContent = `Comparing ${models.length} model${models.length === 1 ? "" : "s"}…`;
  const top = $("comparison").getBoundingClientRect().top;
  if (top < 0 || top > window.innerHeight / 2) $("comparison").scrollIntoView({ block: "start" });

  await inTurn(comparing.cells.map((cell) => () => runCell(cell, key, size, seed, blend)), COMPARE_AT_ONCE);

  comparing.busy = false;
  $("compare-progress").hidden = true;
  updateCompare();
  const refused = comparing.cells.filter((cell) => cell.error).length;
  const made = comparing.cells.length - refused;
  $("compare-status").textContent =
    `${made} of ${comparing.cells.length} model${comparing.cells.length === 1 ? "" : "s"} made an image` +
    (refused ? `; ${refused} refused.` : ".");
}

// --- download all: the images and a contact sheet, in one .zip ------------------------------------

const SHEET_TILE = 256;
const SHEET_GAP = 12;

// `text` in lines that fit `width` in the context's font.
function wrapped(context, text, width) {
  const lines = [];
  for (const word of text.split(/\s+/)) {
    const last = lines.length ? `${lines[lines.length - 1]} ${word}` : word;
    if (lines.length && context.measureText(last).width <= width) lines[lines.length - 1] = last;
    else lines.push(word);
  }
  return lines;
}

// One PNG of the inputs and every cell, captioned as on the page: model; licence; seed and time.
async function contactSheet() {
  const cells = comparing.cells;
  const columns = Math.min(4, Math.max(cells.length, state.inputs.length));
  const rows = 1 + Math.ceil(cells.length / columns);
  const label = 64;
  const canvas = document.createElement("canvas");
  canvas.width = SHEET_GAP + columns * (SHEET_TILE + SHEET_GAP);
  canvas.height = SHEET_GAP + rows * (SHEET_TILE + label + SHEET_GAP);
  const context = canvas.getContext("2d");
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.font = "14px system-ui, sans-serif";
  const place = (slot) => ({
    x: SHEET_GAP + (slot % columns) * (SHEET_TILE + SHEET_GAP),
    y: SHEET_GAP + Math.floor(slot / columns) * (SHEET_TILE + label + SHEET_GAP),
  });
  const caption = (at, lines) => {
    context.fillStyle = "#111111";
    lines.forEach((line, k) => context.fillText(line, at.x, at.y + SHEET_TILE + 18 + 17 * k, SHEET_TILE));
  };
  for (const [index, input] of state.inputs.entries()) {
    const at = place(index);
    context.drawImage(await createImageBitmap(input.png), at.x, at.y, SHEET_TILE, SHEET_TILE);
    caption(at, [state.inputs.length > 1 ? `Input ${index + 1}: ${input.label}` : `Input: ${input.label}`]);
  }
  for (const [index, cell] of cells.entries()) {
    const at = place(columns + index);
    const card = comparing.models.find((each) => each.id === cell.model);
    if (cell.bytes) {
      const bitmap = await createImageBitmap(new Blob([cell.bytes], { type: "image/png" }));
      context.drawImage(bitmap, at.x, at.y, SHEET_TILE, SHEET_TILE);
    } else {  // the reason, wrapped, in the pale red of an error
      context.fillStyle = "#fde2e2";
      context.fillRect(at.x, at.y, SHEET_TILE, SHEET_TILE);
      context.fillStyle = "#111111";
      wrapped(context, `No image. ${cell.error || ""}`, SHEET_TILE - 16)
        .slice(0, 12)
        .forEach((line, k) => context.fillText(line, at.x + 8, at.y + 22 + 18 * k));
    }
    const seed = cell.bytes ? (cell.seed ? `seed ${cell.seed}` : "the provider's own seed") : "refused";
    caption(at, [cell.model, card ? card.license : "", `${seed} · ${cell.seconds.toFixed(1)} s`]);
  }
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new Uint8Array(await png.arrayBuffer());
}

async function downloadAll() {
  if ($("download-all").getAttribute("aria-disabled") === "true") return;
  const files = comparing.cells.filter((cell) => cell.bytes).map((cell) => ({ name: fileName(cell), bytes: cell.bytes }));
  files.push({ name: "contact-sheet.png", bytes: await contactSheet() });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(zipStored(files));
  link.download = `vary-compare-seed-${comparing.seed}.zip`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);  // once the browser has taken it
}

// --- wiring -----------------------------------------------------------------------------------------

document.addEventListener("vary:models", (event) => showCompareModels(event.detail));
document.addEventListener("vary:inputs", updateCompare);
$("compare-form").addEventListener("submit", runCompare);
$("download-all").addEventListener("click", downloadAll);
$("compare-seed").addEventListener("input", () => showError("compare-seed-error", ""));
if (state.models.length) showCompareModels(state.models);  // listed before this script ran
updateCompare();
