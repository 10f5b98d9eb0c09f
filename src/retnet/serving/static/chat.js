// The retnet chat page: streams answers over the server's Responses API and branches from any answer.
// A conversation is a tree of stored responses; the thread shows the path from its root to the selected one.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_ITEM = "retnet-api-key";
const nodes = new Map(); // response id -> list entry (response object + root_id + input)
let current = null; // the response the next message continues from (null: a new conversation)
let busy = false;

// ------------------------------------------------------------------ API
function headers(extra = {}) {
  const key = localStorage.getItem(KEY_ITEM);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers) });
  if (resp.status === 401) {
    await askKey("The key was refused; enter it again.");
    return api(path, options);
  }
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp;
}

async function errorText(resp) {
  try {
    return (await resp.json()).error.message;
  } catch {
    return `HTTP ${resp.status}`;
  }
}

function askKey(message = "") {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-error").textContent = message;
    $("key-form").onsubmit = () => {
      localStorage.setItem(KEY_ITEM, $("key-input").value.trim());
      resolve();
    };
    if (!dialog.open) dialog.showModal();
  });
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// ------------------------------------------------------------------ tree
function children(parentId, rootId) {
  const out = [];
  for (const n of nodes.values()) {
    if (n.previous_response_id === parentId && (parentId !== null || n.id === rootId)) out.push(n);
  }
  // created_at has whole seconds: ties keep the map's order, which is the server's creation order (the tree is
  // loaded oldest first and new answers are added as they arrive); sort is stable. Ids are random: no tie-break.
  return out.sort((a, b) => a.created_at - b.created_at);
}

function path(id) {
  const out = [];
  for (let n = nodes.get(id); n; n = nodes.get(n.previous_response_id)) out.unshift(n);
  return out;
}

function newestLeaf(id) {
  let n = nodes.get(id);
  for (let kids = children(n.id); kids.length; kids = children(n.id)) n = kids[kids.length - 1];
  return n.id;
}

function outputText(r) {
  return r.output.flatMap((item) => item.content || []).map((c) => c.text).join("");
}

async function loadTree(rootId) {
  let after = null;
  do {
    const q = new URLSearchParams({ root_id: rootId, order: "asc", limit: "100" });
    if (after) q.set("after", after);
    const page = await (await api(`/v1/responses?${q}`)).json();
    for (const r of page.data) nodes.set(r.id, r);
    after = page.has_more ? page.last_id : null;
  } while (after);
}

// ------------------------------------------------------------------ rendering
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  return div;
}

function tool(label, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.onclick = onclick;
  return b;
}

function renderThread() {
  const thread = $("thread");
  thread.replaceChildren();
  for (const r of current ? path(current) : []) {
    for (const item of r.input) {
      const text = item.content.map((c) => c.text).join("");
      const msg = bubble(item.role, text);
      if (item.role === "user") {
        const tools = document.createElement("div");
        tools.className = "tools";
        tools.append(tool("Edit", "edit", () => edit(r, text)));
        msg.append(tools);
      }
      thread.append(msg);
    }
    const answer = bubble("assistant", outputText(r));
    answer.dataset.responseId = r.id;
    const tools = document.createElement("div");
    tools.className = "tools";
    const sibs = children(r.previous_response_id, r.root_id);
    if (sibs.length > 1) {
      const i = sibs.findIndex((s) => s.id === r.id);
      const nav = document.createElement("span");
      nav.className = "siblings";
      const prev = tool("\u2039", "prev", () => select(newestLeaf(sibs[i - 1].id)));
      const next = tool("\u203a", "next", () => select(newestLeaf(sibs[i + 1].id)));
      prev.disabled = i === 0;
      next.disabled = i === sibs.length - 1;
      nav.append(prev, ` branch ${i + 1}/${sibs.length} `, next);
      tools.append(nav);
    }
    tools.append(tool("Branch from here", "branch", () => branchFrom(r.id)));
    tools.append(tool("Regenerate", "regenerate", () => regenerate(r)));
    if (r.status === "incomplete") tools.append(" (stopped at max tokens)");
    answer.append(tools);
    thread.append(answer);
  }
  thread.scrollTop = thread.scrollHeight;
  const note = $("fork-note");
  const leaf = current && children(current).length > 0;
  note.hidden = !leaf;
  if (leaf) {
    note.textContent = "Branching: your next message starts a new branch after the last answer shown.";
  }
  for (const li of $("conversations").children) {
    li.classList.toggle("active", current !== null && nodes.has(current) && li.dataset.id === nodes.get(current).root_id);
  }
}

async function renderList() {
  const page = await (await api("/v1/responses?roots=true&limit=100")).json();
  const list = $("conversations");
  list.replaceChildren();
  for (const r of page.data) {
    const li = document.createElement("li");
    li.dataset.id = r.id;
    const first = r.input.find((m) => m.role === "user") || r.input[0];
    li.textContent = first ? first.content.map((c) => c.text).join("").slice(0, 60) || "(empty)" : "(empty)";
    const when = document.createElement("small");
    when.textContent = new Date(r.created_at * 1000).toLocaleString();
    li.append(when);
    li.onclick = () => openConversation(r.id);
    list.append(li);
  }
}

function select(id) {
  current = id;
  const where = id ? `#${nodes.get(id).root_id}/${id}` : location.pathname;
  history.replaceState(null, "", where); // a reload reopens the same branch
  renderThread();
}

// ------------------------------------------------------------------ actions
async function openConversation(rootId) {
  await loadTree(rootId);
  select(newestLeaf(rootId));
}

function branchFrom(id) {
  select(id);
  $("prompt").focus();
}

function edit(r, text) {
  select(r.previous_response_id);
  $("prompt").value = text;
  $("prompt").focus();
}

function regenerate(r) {
  select(r.previous_response_id);
  const input = r.input.map((m) => ({ role: m.role, content: m.content.map((c) => c.text).join("") }));
  send(input, r.instructions);
}

async function send(input, instructions = null) {
  if (busy) return;
  busy = true;
  $("send").disabled = true;
  const body = {
    model: $("model-name").textContent,
    input,
    previous_response_id: current,
    store: true,
    stream: true,
    max_output_tokens: Number($("max-tokens").value) || undefined,
    temperature: Number($("temperature").value),
  };
  if (instructions) body.instructions = instructions;
  const thread = $("thread");
  for (const m of typeof input === "string" ? [{ role: "user", content: input }] : input) {
    thread.append(bubble(m.role, m.content));
  }
  const answer = bubble("assistant streaming", "");
  answer.id = "streaming-answer";
  thread.append(answer);
  status("generating\u2026");
  try {
    const resp = await api("/v1/responses", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const final = await readEvents(resp, (delta) => {
      answer.firstChild.textContent += delta;
      thread.scrollTop = thread.scrollHeight;
    });
    const parent = current ? nodes.get(current) : null;
    nodes.set(final.id, { ...final, root_id: parent ? parent.root_id : final.id, input: inputItems(input) });
    status(`${final.usage.output_tokens} tokens; ${final.usage.input_tokens_details.cached_tokens} from the stored state`);
    select(final.id);
    await renderList();
    renderThread();
  } catch (err) {
    answer.classList.remove("streaming");
    status(String(err.message || err), true);
  } finally {
    busy = false;
    $("send").disabled = false;
  }
}

function inputItems(input) {
  const msgs = typeof input === "string" ? [{ role: "user", content: input }] : input;
  return msgs.map((m) => ({ type: "message", role: m.role, content: [{ type: "input_text", text: m.content }] }));
}

// Server-sent events: blocks separated by a blank line, each with "event:" and "data:" lines.
async function readEvents(resp, onDelta) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended before the response was complete");
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.type === "response.output_text.delta") onDelta(event.delta);
      else if (event.type === "error") throw new Error(event.message);
      else if (event.type === "response.completed" || event.type === "response.incomplete") return event.response;
      else if (event.type === "response.failed") throw new Error(event.response.error.message);
    }
  }
}

// ------------------------------------------------------------------ start
$("composer").onsubmit = (e) => {
  e.preventDefault();
  const text = $("prompt").value;
  if (!text.trim()) return;
  $("prompt").value = "";
  send(text);
};
$("prompt").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
};
$("new-chat").onclick = () => select(null);

async function start() {
  const health = await (await fetch("/health")).json();
  if (health.auth && !localStorage.getItem(KEY_ITEM)) await askKey();
  const models = await (await api("/v1/models")).json();
  $("model-name").textContent = models.data[0].id;
  await renderList();
  const [root, wanted] = location.hash.slice(1).split("/");
  if (root && wanted) {
    try {
      await loadTree(root);
      if (nodes.has(wanted)) select(wanted);
    } catch (err) {
      status(String(err.message || err), true);
      return;
    }
  }
  status("ready");
}

start().catch((err) => status(String(err.message || err), true));
