// The tenant's console: plain DOM, no framework, no build step. Every call goes to this
// origin's API with the key kept in sessionStorage (never a cookie, never a URL).
"use strict";

const KEY = "ssd-img2img-api-key";
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const DEFAULTS = {
  samples: 1, num_inference_steps: 25, strength: 0.75, guidance_scale: 7.5, seed: -1,
  scheduler: "DPM2 Karras",
};
const SCHEDULERS = [
  "DDIM", "DDPM", "DPM Multi", "DPM Single", "DPM2 Karras", "DPM2 a Karras", "Euler",
  "Euler a", "Heun", "LMS", "PNDM", "UniPC",
];

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

// replaceChildren would show a null child as the text "null".
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

async function api(method, path, { json, raw } = {}) {
  const headers = { "x-api-key": sessionStorage.getItem(KEY) || "" };
  const init = { method, headers };
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `the service cannot be reached (${error.message})`);
  }
  if (raw) {
    if (!response.ok) throw new ApiError(response.status, await errorText(response));
    return response;
  }
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok && !(body && TERMINAL.has(body.status))) {
    throw new ApiError(response.status, (body && body.error) || response.statusText);
  }
  return { body, headers: response.headers, status: response.status };
}

async function errorText(response) {
  const body = await response.json().catch(() => null);
  return (body && body.error) || response.statusText;
}

function guard(action) {
  // Every handler shows the service's error in words instead of failing silently.
  return async (...args) => {
    showError("");
    try {
      await action(...args);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) signOut();
      showError(error.message);
    }
  };
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function table(headings, rows, caption) {
  return el("table", {},
    caption ? el("caption", { text: caption }) : null,
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
}

// Server-sent events read with fetch (EventSource cannot send the x-api-key header).
async function* events(path, signal) {
  const response = await fetch(path, {
    headers: { "x-api-key": sessionStorage.getItem(KEY) || "", accept: "text/event-stream" },
    signal,
  });
  if (!response.ok) throw new ApiError(response.status, await errorText(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

async function outputImage(requestId, index) {
  const response = await api("GET", `/v2/requests/${requestId}/outputs/${index}`, { raw: true });
  return URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------------ sign-in and routing

function signOut() {
  sessionStorage.removeItem(KEY);
  route();
}

async function signIn(event) {
  event.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/v1/account");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    throw error;
  }
  if (!location.hash || location.hash === "#/") location.hash = "#/try";
  route();
}

const PAGES = { "#/try": tryIt, "#/requests": requests, "#/account": account, "#/webhooks": webhooks };
let signInSection;

function route() {
  const main = document.getElementById("main");
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("nav").hidden = !signedIn;
  fill(main);
  if (!signedIn) {
    main.append(signInSection);
    document.getElementById("api-key").focus();
    return;
  }
  const [page, ...rest] = (location.hash || "#/try").split("/").slice(0, 3);
  const view = PAGES[`${page}/${rest[0] || ""}`] || tryIt;
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `${page}/${rest[0]}`);
  }
  guard(view)(main);
}

// ------------------------------------------------------------------ Try it

function field(label, input, hint) {
  const id = input.id;
  return el("div", { class: "field" },
    el("label", { for: id, text: label }), input,
    hint ? el("small", { id: `${id}-hint`, text: hint }) : null);
}

function numberInput(id, min, max, step, value) {
  return el("input", {
    id, name: id, type: "number", min, max, step, value, required: true,
    "aria-describedby": `${id}-hint`,
  });
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function snippets(body) {
  const shown = { ...body, image: body.image.startsWith("http") ? body.image : "<base64 of your image>" };
  const json = JSON.stringify(shown, null, 2);
  const curl = `curl -X POST ${location.origin}/v2/ssd-img2img \\\n` +
    `  -H "x-api-key: $SSD_API_KEY" -H "content-type: application/json" \\\n` +
    `  -d '${JSON.stringify(shown)}'`;
  const python = "import os\n\nfrom segmind import SegmindClient  # pip install segmind\n\n" +
    `client = SegmindClient(api_key=os.environ["SSD_API_KEY"], base_url="${location.origin}/v1")\n` +
    `result = client.run("ssd-img2img", **${json})`;
  return el("details", {},
    el("summary", { text: "The same call from code" }),
    el("h4", { text: "curl" }), el("pre", {}, el("code", { text: curl })),
    el("h4", { text: "Python (Segmind SDK)" }), el("pre", {}, el("code", { text: python })));
}

async function tryIt(main) {
  const file = el("input", { id: "image-file", type: "file", accept: "image/jpeg,image/png,image/webp" });
  const url = el("input", { id: "image-url", type: "url", placeholder: "https://…" });
  const prompt = el("textarea", { id: "prompt", rows: 2, required: true });
  const negative = el("textarea", { id: "negative-prompt", rows: 2 });
  const samples = numberInput("samples", 1, 4, 1, DEFAULTS.samples);
  const steps = numberInput("steps", 20, 100, 1, DEFAULTS.num_inference_steps);
  const strength = numberInput("strength", 0, 0.99, 0.01, DEFAULTS.strength);
  const guidance = numberInput("guidance", 1, 25, 0.1, DEFAULTS.guidance_scale);
  const seed = numberInput("seed", -1, 2 ** 50, 1, DEFAULTS.seed);
  const scheduler = el("select", { id: "scheduler" },
    SCHEDULERS.map((name) => el("option", { value: name, selected: name === DEFAULTS.scheduler, text: name })));
  const cost = el("output", { id: "cost", for: "samples steps" });
  const drop = el("div", { class: "drop", tabindex: 0, role: "button", "aria-label": "Drop an image here or choose a file" },
    "Drop an image here, or ", file, " or paste a URL: ", url);
  const preview = el("figure", { class: "result", hidden: true },
    el("img", { id: "input-preview", alt: "your input" }), el("figcaption", { text: "input" }));
  const run = el("section", { id: "run", "aria-live": "polite" });
  const submit = el("button", { type: "submit", text: "Generate" });

  const updateCost = () => {
    cost.value = `${Number(samples.value) * Number(steps.value)} credits (samples × steps)`;
  };
  samples.addEventListener("input", updateCost);
  steps.addEventListener("input", updateCost);
  updateCost();
  let dropped = null;
  const showPreview = (blob) => {
    preview.hidden = false;
    preview.querySelector("img").src = URL.createObjectURL(blob);
  };
  file.addEventListener("change", () => {
    dropped = file.files[0] || null;
    if (dropped) showPreview(dropped);
  });
  drop.addEventListener("dragover", (event) => event.preventDefault());
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    dropped = event.dataTransfer.files[0] || null;
    if (dropped) showPreview(dropped);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") file.click();
  });

  const form = el("form", { id: "try-form", onsubmit: guard(async (event) => {
    event.preventDefault();
    const image = dropped ? await readFile(dropped) : url.value.trim();
    if (!image) throw new Error("choose an image file or give its URL");
    const body = {
      image, prompt: prompt.value,
      samples: Number(samples.value), num_inference_steps: Number(steps.value),
      strength: Number(strength.value), guidance_scale: Number(guidance.value),
      seed: Number(seed.value), scheduler: scheduler.value,
    };
    if (negative.value) body.negative_prompt = negative.value;
    submit.disabled = true;
    try {
      await follow(run, body, preview);
    } finally {
      submit.disabled = false;
    }
  }) },
  el("h2", { text: "Try it" }),
  drop,
  field("Prompt", prompt),
  field("Negative prompt", negative),
  el("div", { class: "grid" },
    field("Samples", samples, "1–4"),
    field("Steps", steps, "20–100"),
    field("Strength", strength, "0–0.99: how far from the input"),
    field("Guidance", guidance, "1–25"),
    field("Seed", seed, "-1: the service picks one"),
    field("Scheduler", scheduler)),
  el("p", {}, "Cost: ", cost),
  submit);
  main.append(form, run);
}

async function follow(run, body, preview) {
  const submitted = await api("POST", "/v2/ssd-img2img", { json: body });
  const id = submitted.body.request_id;
  const balance = submitted.headers.get("x-remaining-credits");
  const state = el("p", { id: "run-state", text: "QUEUED" });
  const bar = el("progress", { id: "run-progress", max: 1, value: 0, "aria-label": "progress" });
  const controller = new AbortController();
  const cancel = el("button", { type: "button", id: "cancel", text: "Cancel", onclick: guard(async () => {
    const answer = await api("POST", `/v2/requests/${id}/cancel`);
    state.textContent = answer.body.status === "CANCELLED" ? "CANCELLED (refunded)" : "cancelling…";
  }) });
  const results = el("div", { class: "results" }, preview.cloneNode(true));
  results.firstChild.hidden = preview.hidden;
  fill(run,
    el("h3", { text: `Request ${id}` }),
    el("p", { id: "balance", text: `Balance: ${balance} credits` }),
    state, bar, cancel, results, snippets(body));

  let final = null;
  try {
    for await (const event of events(`/v2/requests/${id}/events`, controller.signal)) {
      const data = event.data;
      if (event.name === "completed" || event.name === "failed" || event.name === "cancelled") {
        final = data;
        break;
      }
      if (data.status === "QUEUED") {
        state.textContent = data.queue_position == null
          ? "QUEUED" : `QUEUED: position ${data.queue_position} in the queue`;
      } else if (data.total_steps) {
        bar.value = data.progress || 0;
        const eta = data.eta_seconds == null ? "" : `, about ${Math.round(data.eta_seconds)} s left`;
        state.textContent = `PROCESSING: step ${data.step || 0} of ${data.total_steps}${eta}`;
      } else {
        state.textContent = data.status;
      }
    }
  } catch (error) {
    // A proxy that does not pass the stream (refuses it, buffers it, cuts it): poll
    // instead. A key refused or a request not found stays an error.
    if (error instanceof ApiError && (error.status === 401 || error.status === 404)) throw error;
  }
  while (!final) {
    const status = (await api("GET", `/v2/requests/${id}/status`)).body;
    if (TERMINAL.has(status.status)) final = (await api("GET", `/v2/requests/${id}`)).body;
    else await new Promise((resolve) => setTimeout(resolve, 500));
  }
  cancel.disabled = true;
  if (final.status !== "COMPLETED") {
    state.textContent = final.status + (final.error ? `: ${final.error}` : "");
    return;
  }
  bar.value = 1;
  state.textContent = `COMPLETED, seed ${final.seed}`;
  for (let i = 0; i < (final.output || []).length; i++) {
    const src = await outputImage(id, i);
    results.append(el("figure", { class: "result" },
      el("img", { src, alt: `output ${i + 1}`, class: "output" }),
      el("figcaption", {}, el("a", { href: src, download: `${id}-${i}.jpg`, text: `Download output ${i + 1}` }))));
  }
  const after = await api("GET", "/v1/account");
  document.getElementById("balance").textContent = `Balance: ${after.body.balance} credits`;
}

// ------------------------------------------------------------------ Requests

async function requests(main) {
  const filter = el("select", { id: "status-filter" },
    el("option", { value: "", text: "any status" }),
    ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"].map((s) => el("option", { value: s, text: s })));
  const list = el("div", { id: "request-list" });
  const detail = el("section", { id: "request-detail", "aria-live": "polite" });
  const cursors = [null];
  const load = guard(async () => {
    const params = new URLSearchParams({ limit: "10" });
    if (filter.value) params.set("status", filter.value);
    const cursor = cursors[cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    const page = (await api("GET", `/v2/requests?${params}`)).body;
    const rows = page.requests.map((r) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "link", text: r.request_id, onclick: guard(() => showRequest(detail, r.request_id)) })),
      el("td", { text: r.status }), el("td", { text: when(r.created_at) }),
      el("td", { text: `${r.cost}` }), el("td", { text: r.expired ? "expired" : "" })));
    const previous = el("button", { type: "button", text: "Newer", disabled: cursors.length === 1,
      onclick: () => { cursors.pop(); load(); } });
    const next = el("button", { type: "button", text: "Older", disabled: !page.next_cursor,
      onclick: () => { cursors.push(page.next_cursor); load(); } });
    fill(list,
      rows.length ? table(["request", "status", "created", "credits", ""], rows, "Newest first")
        : el("p", { text: "No requests." }),
      el("div", { class: "pager" }, previous, ` page ${cursors.length} `, next));
  });
  filter.addEventListener("change", () => { cursors.splice(1); load(); });
  main.append(el("h2", { text: "Requests" }), field("Status", filter), list, detail);
  await load();
}

async function showRequest(detail, id) {
  const status = (await api("GET", `/v2/requests/${id}/status`)).body;
  const result = await api("GET", `/v2/requests/${id}`).catch((error) => ({ error }));
  const deliveries = (await api("GET", `/v2/webhooks/deliveries?request_id=${id}`)).body;
  const facts = [
    ["status", status.status + (status.error ? `: ${status.error}` : "")],
    ["created", when(status.created_at)], ["started", when(status.started_at)],
    ["finished", when(status.finished_at)],
  ];
  const body = result.body || {};
  if (body.seed !== undefined) facts.push(["seed", String(body.seed)]);
  const shown = (value) => (value === null || value === undefined ? "—" : String(value));
  for (const [name, value] of Object.entries(body.parameters || {})) facts.push([name, shown(value)]);
  for (const [name, value] of Object.entries(body.metrics || {})) facts.push([name, shown(value)]);
  const outputs = el("div", { class: "results" });
  fill(detail,
    el("h3", { text: `Request ${id}` }),
    el("dl", {}, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    result.error ? el("p", { text: result.error.message }) : null,
    outputs,
    el("h4", { text: "Webhook deliveries" }),
    deliveryTable(deliveries.deliveries));
  if (status.status === "COMPLETED" && !status.expired) {
    for (let i = 0; i < (body.output || []).length; i++) {
      outputs.append(el("img", { src: await outputImage(id, i), alt: `output ${i + 1}`, class: "output" }));
    }
  }
}

function deliveryTable(deliveries, replay) {
  if (!deliveries.length) return el("p", { text: "No deliveries." });
  const rows = deliveries.map((d) => el("tr", {},
    el("td", { text: d.event_type }), el("td", { text: d.url }), el("td", { text: d.state }),
    el("td", {}, el("ol", { class: "attempts" }, d.attempts.map((a) => el("li", {
      text: `${when(a.started_at)}: ${a.status_code ?? a.error ?? "no answer"} (${a.latency_ms} ms), ${a.outcome}`,
    })))),
    el("td", {}, replay && d.state !== "pending"
      ? el("button", { type: "button", text: "Replay", onclick: guard(() => replay(d.id)) }) : null)));
  return table(["event", "to", "state", "attempts", ""], rows);
}

// ------------------------------------------------------------------ Account

async function account(main) {
  const data = (await api("GET", "/v1/account")).body;
  const limits = Object.entries(data.limits).map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: String(v) })));
  const ledger = data.recent_ledger.map((e) => el("tr", {},
    el("td", { text: when(e.created_at) }), el("td", { text: (e.amount > 0 ? "+" : "") + e.amount }),
    el("td", { text: e.reason }), el("td", { text: e.job_id || "" })));
  main.append(
    el("h2", { text: "Account" }),
    el("p", { id: "account-balance", class: "big", text: `${data.balance} credits` }),
    el("p", { text: `${data.name} (${data.status}), ${data.jobs_in_flight} jobs in flight` }),
    table(["limit", "value"], limits, "Limits"),
    table(["when", "credits", "reason", "request"], ledger, "Recent ledger entries"));
}

// ------------------------------------------------------------------ Webhooks

async function webhooks(main) {
  const list = el("div", { id: "endpoint-list" });
  const secretBox = el("div", { id: "secret" });
  const log = el("div", { id: "delivery-log" });
  const url = el("input", { id: "endpoint-url", type: "url", required: true, placeholder: "https://…" });
  const description = el("input", { id: "endpoint-description", type: "text" });
  const events = ["started", "progress", "completed"].map((name) =>
    el("label", {}, el("input", { type: "checkbox", name: "events", value: name, checked: name !== "progress" }), ` ${name}`));

  const refresh = guard(async () => {
    const items = (await api("GET", "/v2/webhooks")).body.endpoints;
    const rows = items.map((e) => el("tr", {},
      el("td", { text: e.url }), el("td", { text: e.events.join(", ") }),
      el("td", { text: e.enabled ? "enabled" : `disabled${e.disabled_reason ? ` (${e.disabled_reason})` : ""}` }),
      el("td", {},
        el("button", { type: "button", text: e.enabled ? "Disable" : "Enable",
          onclick: guard(async () => {
            if (e.enabled) await api("POST", `/v2/webhooks/${e.id}/disable`);
            else await api("POST", `/v2/webhooks/${e.id}/enable`);
            refresh();
          }) }),
        el("button", { type: "button", text: "Delete", onclick: guard(async () => {
          if (!confirm(`Delete ${e.url} and its deliveries?`)) return;
          await api("DELETE", `/v2/webhooks/${e.id}`);
          refresh();
        }) }))));
    fill(list, rows.length ? table(["url", "events", "state", ""], rows, "Endpoints") : el("p", { text: "No endpoints." }));
    const deliveries = (await api("GET", "/v2/webhooks/deliveries?limit=20")).body;
    fill(log, el("h3", { text: "Delivery log" }), deliveryTable(deliveries.deliveries, async (id) => {
      await api("POST", `/v2/webhooks/deliveries/${id}/replay`);
      refresh();
    }));
  });

  const create = el("form", { id: "endpoint-form", onsubmit: guard(async (event) => {
    event.preventDefault();
    const chosen = [...create.querySelectorAll("input[name=events]:checked")].map((i) => i.value);
    await api("POST", "/v2/webhooks", { json: { url: url.value, events: chosen, description: description.value || undefined } });
    url.value = "";
    refresh();
  }) },
  el("h3", { text: "New endpoint" }), field("URL", url), field("Description", description),
  el("fieldset", {}, el("legend", { text: "Events" }), events),
  el("button", { type: "submit", text: "Add endpoint" }));

  const reveal = el("button", { type: "button", id: "reveal-secret", text: "Reveal signing secret", onclick: guard(async () => {
    const secret = (await api("GET", "/v2/webhooks/secret")).body;
    fill(secretBox, el("p", {}, "Signing secret: ", el("code", { id: "secret-value", text: secret.secret })));
  }) });
  const rotate = el("button", { type: "button", text: "Rotate secret", onclick: guard(async () => {
    if (!confirm("Make a new signing secret? The old one stays valid for the overlap.")) return;
    const secret = (await api("POST", "/v2/webhooks/secret/rotate", { json: {} })).body;
    fill(secretBox, el("p", {}, "New signing secret: ", el("code", { id: "secret-value", text: secret.secret })));
  }) });
  main.append(el("h2", { text: "Webhooks" }), list, create, el("h3", { text: "Signing secret" }), reveal, rotate, secretBox, log);
  await refresh();
}

// ------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  signInSection = document.getElementById("sign-in");
  document.getElementById("sign-in-form").addEventListener("submit", guard(signIn));
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  route();
});
