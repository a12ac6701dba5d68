// The restoration page: submit each image as a job, follow it over Server-Sent Events, show the result.
// Plain browser JavaScript, no build step and no downloads: everything comes from this server.
"use strict";

const CONCURRENT_UPLOADS = 2;

const $ = (selector, root = document) => root.querySelector(selector);
const form = $("#options");
const fileInput = $("#files");
const drop = $("#drop");
const taskSelect = $("#task");
const scaleSelect = $("#scale");
const variantSelect = $("#variant");
const notice = $("#notice");
let catalogue = [];
let restoreParams = new Set();
let dropped = null; // files dropped on the page, used instead of the file input's

// ---- problem details (RFC 9457) in words ----

async function problemText(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return `${body.title || response.status}: ${body.detail}`;
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText || "error"}`;
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

// ---- requests: an API key when the server asks for one (401), kept for this tab only ----

const keyInput = $("#api-key");
keyInput.value = sessionStorage.getItem("bbcu-api-key") || "";
$("#key-field").hidden = !keyInput.value;
keyInput.addEventListener("change", () => sessionStorage.setItem("bbcu-api-key", keyInput.value));

async function call(url, init = {}) {
  const headers = new Headers(init.headers || {});
  if (keyInput.value) headers.set("X-API-Key", keyInput.value);
  const response = await fetch(url, { ...init, headers });
  if (response.status === 401) $("#key-field").hidden = false;
  return response;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- options from the server: /models for tasks, scales and variants; the OpenAPI for extra options ----

function unique(values) {
  return [...new Set(values)];
}

function fillSelect(select, values, label) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => new Option(label(v), String(v))));
  if (values.map(String).includes(keep)) select.value = keep;
}

const TASK_LABELS = { sr: "Super-resolution", denoise: "Denoise", deblock: "JPEG deblock" };

function taskLabel(task, scale = null) {
  // "deblock,sr" and 2 -> "JPEG deblock, then Super-resolution ×2"
  const one = (t) => (TASK_LABELS[t] || t) + (t === "sr" && scale ? ` ×${scale}` : "");
  return task.split(",").map(one).join(", then ");
}

function stages() {
  return taskSelect.value.split(","); // a task, or a pipeline such as "deblock,sr" run in order
}

function refreshChoices() {
  const hasSr = stages().includes("sr");
  const single = stages().length === 1;
  const srEntries = catalogue.filter((m) => m.task === "sr");
  $("#scale-field").hidden = !hasSr;
  fillSelect(scaleSelect, unique(srEntries.map((m) => m.scale)).sort(), (s) => `×${s}`);
  if (hasSr && [...scaleSelect.options].some((o) => o.value === "4") && !scaleSelect.dataset.touched) {
    scaleSelect.value = "4";
  }
  // a variant names one network: offered for a single task, a pipeline uses each stage's default
  const scale = hasSr ? Number(scaleSelect.value) : null;
  const variants = unique(catalogue.filter((m) => m.task === stages()[0] && (scale === null || m.scale === scale))
    .map((m) => m.variant));
  $("#variant-field").hidden = !single;
  fillSelect(variantSelect, variants, (v) => `BBCU-${v.toUpperCase()}`);
  $("#strength-field").hidden = !restoreParams.has("strength") || !stages().includes("denoise");
}

function pipelinesOf(taskParam) {
  // the API lists its pipelines in the task parameter's description ("... deblock,sr or denoise,sr")
  const found = (taskParam && taskParam.description ? taskParam.description : "").match(/\b[a-z]+(?:,[a-z]+)+\b/g);
  return unique(found || []);
}

async function loadOptions() {
  const [models, spec] = await Promise.all([call("/models"), fetch("/openapi.json")]);
  if (!models.ok) throw new Error(await problemText(models));
  catalogue = (await models.json()).models;
  let pipelines = [];
  if (spec.ok) {
    const params = (await spec.json()).paths["/restore"].post.parameters || [];
    restoreParams = new Set(params.map((p) => p.name));
    pipelines = pipelinesOf(params.find((p) => p.name === "task"));
  }
  const tasks = unique(catalogue.map((m) => m.task));
  const runnable = pipelines.filter((p) => p.split(",").every((t) => tasks.includes(t)));
  fillSelect(taskSelect, [...tasks, ...runnable], (t) => taskLabel(t));
  refreshChoices();
}

taskSelect.addEventListener("change", refreshChoices);
scaleSelect.addEventListener("change", () => {
  scaleSelect.dataset.touched = "1";
  refreshChoices();
});
// the strength is "auto" until the user moves the slider; only then is a number sent
function showStrength() {
  const auto = $("#strength-auto").checked;
  $("#strength-value").textContent = auto ? "auto" : Number($("#strength").value).toFixed(2);
}
$("#strength").addEventListener("input", () => {
  $("#strength-auto").checked = false;
  showStrength();
});
$("#strength-auto").addEventListener("change", showStrength);

// ---- files: the input or a drop ----

fileInput.addEventListener("change", () => {
  dropped = null;
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  dropped = [...e.dataTransfer.files];
  $("#drop-hint").textContent = `${dropped.length} file(s) dropped: ${dropped.map((f) => f.name).join(", ")}`;
});

// ---- one job per file ----

function query() {
  const params = new URLSearchParams({ task: taskSelect.value });
  // empty: an animation or a video comes back in its own container, a photo as PNG
  if ($("#format").value) params.set("format", $("#format").value);
  if (stages().includes("sr")) params.set("scale", scaleSelect.value);
  if (!$("#variant-field").hidden && variantSelect.value) params.set("variant", variantSelect.value);
  if (!$("#strength-field").hidden) {
    params.set("strength", $("#strength-auto").checked ? "auto" : $("#strength").value);
  }
  return params;
}

function seconds(s) {
  return s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(1, Math.round(s))} s`;
}

function describe(job) {
  if (job.status === "queued") return "queued";
  if (job.status === "running") {
    const pct = `${Math.round(job.progress * 100)} %`;
    return job.eta_s == null ? `running ${pct}` : `running ${pct}, about ${seconds(job.eta_s)} left`;
  }
  return job.status;
}

function serverTiming(header) {
  // "queue;dur=8.1, inference;dur=151.0" -> "queue 8 ms · inference 151 ms"
  return (header || "")
    .split(",")
    .map((part) => part.trim().match(/^([\w-]+);dur=([\d.]+)/))
    .filter(Boolean)
    .map((m) => `${m[1]} ${Math.round(Number(m[2]))} ms`)
    .join(" · ");
}

function parseEvent(block) {
  // one text/event-stream event: "id: ...", "event: ...", "data: ..." lines; comments start with ":"
  const event = { name: "message", id: null, data: [] };
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon === 0) continue;
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.name = value;
    else if (field === "id") event.id = value;
    else if (field === "data") event.data.push(value);
  }
  return event.data.length ? { ...event, data: JSON.parse(event.data.join("\n")) } : null;
}

async function follow(jobId, onUpdate) {
  // the job's events until "completed", read with fetch (unlike EventSource it can send the API key
  // and read a problem's detail); a dropped stream is resumed after the last event seen
  let lastId = null;
  for (let failures = 0; failures < 6; failures++) {
    const headers = { Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    try {
      const response = await call(`/jobs/${jobId}/events`, { headers });
      if (!response.ok) throw new Error(await problemText(response), { cause: "refused" });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          failures = 0;
          lastId = event.id || lastId;
          if (event.name === "completed") {
            reader.cancel();
            return event.data;
          }
          onUpdate(event.data);
        }
      }
    } catch (e) {
      if (e.cause === "refused") throw e;
    }
    await sleep(1000);
  }
  throw new Error("lost the connection to the server while following the job");
}

function shows(img) {
  // whether this browser can display the image (it cannot display TIFF or HEIC, for example)
  return img.decode().then(() => true, () => false);
}

function fileKind(name) {
  const ext = name.includes(".") ? name.split(".").pop() : "";
  return ext ? ext.toUpperCase() : "these";
}

function downloadName(disposition, fallback) {
  // the server's name (Content-Disposition: inline; filename="photo-deblock-sr.png")
  const found = (disposition || "").match(/filename="([^"]+)"/);
  return found ? found[1] : fallback;
}

const milliseconds = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

class JobView {
  constructor(file, params) {
    this.file = file;
    this.urls = [];
    this.el = $("#job-template").content.firstElementChild.cloneNode(true);
    this.el.view = this;
    $(".name", this.el).textContent = `${file.name} — ${taskLabel(params.get("task"), params.get("scale"))}`;
    this.bar = $(".bar", this.el);
    this.bar.setAttribute("aria-label", `Progress of ${file.name}`);
    this.state = $(".state", this.el);
  }

  progress(job) {
    this.state.textContent = describe(job);
    if (job.status === "running") this.bar.value = job.progress;
  }

  finish() {
    this.el.dataset.finished = "1";
    showJobsBar();
  }

  release() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.el.remove();
  }

  objectUrl(blob) {
    const url = URL.createObjectURL(blob);
    this.urls.push(url);
    return url;
  }

  fail(text) {
    this.bar.hidden = true;
    this.state.textContent = "failed";
    const problem = $(".problem", this.el);
    problem.textContent = text;
    problem.hidden = false;
    this.finish();
  }

  stagesOf(job, headers, notes) {
    // one line per stage: its network(s), time, and for denoise the measured noise and the strength
    const auto = job.spec.strength == null || job.spec.strength === "auto";
    return job.stages.map((stage) => {
      const parts = [`${taskLabel(stage.task)}: ${stage.model}`];
      if (stage.chroma_model) parts[0] += ` (chroma ${stage.chroma_model})`;
      parts.push(milliseconds(stage.inference_ms));
      if (stage.task === "denoise") {
        const sigma = headers.get("X-Noise-Sigma") ?? stage.sigma;
        const strength = Number(headers.get("X-Strength") ?? stage.strength);
        if (sigma != null) parts.push(`measured noise σ ${Number(sigma).toFixed(2)}`);
        parts.push(`strength ${strength.toFixed(2)} (${auto ? "auto" : "chosen"})`);
        if (auto && strength === 0) {
          this.unchanged = true;
          notes.push(`Auto denoise left this image unchanged: its measured noise (σ ${Number(sigma).toFixed(2)}) ` +
            "is below the level auto denoise acts on. Move the strength slider to denoise it anyway.");
        }
      }
      return parts.join(" · ");
    });
  }

  showVideo(job, url, notes) {
    // a video result plays in place of the before/after comparison
    const clip = $(".clip", this.el);
    clip.src = url;
    clip.width = job.output.width;
    clip.height = job.output.height;
    clip.setAttribute("aria-label", `${this.file.name} restored, ${job.output.width}×${job.output.height}`);
    clip.hidden = false;
    $(".after", this.el).hidden = true;
    $(".before", this.el).hidden = true;
    $(".frame", this.el).classList.add("single");
    $(".split-label", this.el).hidden = true;
    $(".compare", this.el).hidden = false;
    clip.addEventListener("error", () => {
      const note = $(".note", this.el);
      note.textContent = `No preview: this browser cannot play this ${job.spec.format.toUpperCase()} video; ` +
        "the download holds the result.";
      note.hidden = false;
    });
    notes.push(`${job.output.frames} frames${job.output.fps ? ` at ${job.output.fps} fps` : ""}.`);
  }

  async done(job, blob, headers) {
    this.bar.value = 1;
    const notes = [];
    const frame = $(".frame", this.el);
    const after = $(".after", this.el);
    const before = $(".before", this.el);
    const url = this.objectUrl(blob);
    if (blob.type.startsWith("video/")) {
      this.showVideo(job, url, notes);
      this.describe(job, blob, headers, url, notes);
      return;
    }
    if (job.output.frames > 1) notes.push(`${job.output.frames} frames, every one restored.`);
    after.src = url;
    after.alt = `${this.file.name} restored, ${job.output.width}×${job.output.height}`;
    after.width = job.output.width;
    after.height = job.output.height;
    before.src = this.objectUrl(this.file);
    before.alt = `${this.file.name} original, shown at the restored size`;
    // the result does not depend on the browser showing the original (or the result: TIFF, HEIC)
    const [showsAfter, showsBefore] = await Promise.all([shows(after), shows(before)]);
    if (showsAfter && showsBefore) {
      const split = $(".split", this.el);
      const move = () => frame.style.setProperty("--split", `${split.value}%`);
      split.addEventListener("input", move);
      move();
    } else if (showsAfter) {
      before.hidden = true;
      frame.classList.add("single");
      $(".split-label", this.el).hidden = true;
      notes.push(`The original is not shown: this browser cannot display ${fileKind(this.file.name)} files.`);
    } else {
      notes.push(`No preview: this browser cannot display ${job.spec.format.toUpperCase()} files; ` +
        "the download holds the result.");
    }
    $(".compare", this.el).hidden = !showsAfter;
    this.describe(job, blob, headers, url, notes);
  }

  describe(job, blob, headers, url, notes) {
    // what the job did, and the download
    const model = job.model || {};
    const sizes = `${job.input.width}×${job.input.height} → ${job.output.width}×${job.output.height}`;
    $(".summary", this.el).textContent =
      `${taskLabel(job.task, job.spec.scale)} · ${sizes} · ${model.backend} on ${model.device}`;
    $(".stages", this.el).replaceChildren(
      ...this.stagesOf(job, headers, notes).map((text) => Object.assign(document.createElement("li"), { textContent: text })));
    $(".timing", this.el).textContent = serverTiming(headers.get("Server-Timing"));
    $(".facts", this.el).hidden = false;
    const note = $(".note", this.el);
    note.textContent = notes.join(" ");
    note.hidden = !notes.length;
    this.state.textContent = this.unchanged ? "done: unchanged" : "done";
    const link = $(".download", this.el);
    const stem = this.file.name.replace(/\.[^.]+$/, "");
    link.href = url;
    link.download = downloadName(headers.get("Content-Disposition"),
      `${stem}-${job.task.replaceAll(",", "-")}.${job.spec.format}`);
    link.textContent = `Download ${link.download} (${Math.round(blob.size / 1024)} KiB)`;
    link.hidden = false;
    this.finish();
  }

  async run(params) {
    const body = new FormData();
    body.append("image", this.file, this.file.name);
    const submitted = await call(`/restore?${params}`, {
      method: "POST",
      body,
      headers: { Prefer: "respond-async" },
    });
    if (submitted.status !== 202) throw new Error(await problemText(submitted));
    const job = await submitted.json();
    this.progress(job);
    const final = await follow(job.id, (j) => this.progress(j));
    if (final.status !== "succeeded") {
      const why = final.error ? `${final.error.code}: ${final.error.detail}` : final.status;
      throw new Error(`The job ${final.status}. ${why}`);
    }
    const result = await call(final.links.result);
    if (!result.ok) throw new Error(await problemText(result));
    await this.done(final, await result.blob(), result.headers);
  }
}

// ---- the list of cards: newest first, scrolled into view; finished ones can be cleared ----

function showJobsBar() {
  $("#jobs-bar").hidden = !$("#jobs .job[data-finished]");
}

$("#clear").addEventListener("click", () => {
  for (const el of document.querySelectorAll("#jobs .job[data-finished]")) el.view.release();
  showJobsBar();
});

async function runAll(files, params) {
  const views = files.map((f) => new JobView(f, params));
  $("#jobs").prepend(...views.map((v) => v.el)); // this batch on top, in the order chosen
  views[0].el.scrollIntoView({ block: "start" }); // on a phone the list starts below the form
  let next = 0;
  async function lane() {
    while (next < views.length) {
      const view = views[next++];
      try {
        await view.run(params);
      } catch (e) {
        view.fail(e.message);
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENT_UPLOADS }, lane));
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = dropped || [...fileInput.files];
  if (!files.length) {
    showNotice("Choose an image first.");
    fileInput.focus();
    return;
  }
  showNotice("");
  const button = $("#start");
  button.disabled = true;
  try {
    await runAll(files, query());
  } finally {
    button.disabled = false;
  }
});

loadOptions().catch((e) => showNotice(`Could not load the models: ${e.message}`));
