// The demo page: build a history from title suggestions, then ask /v1/recommend.
// Plain DOM code, no libraries; every value from the server is shown with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const input = $("title-input");
const list = $("suggestions");
const picked = []; // the history: {item_id, title}, oldest first
let suggestions = [];
let active = -1;
let timer = null;
let latest = 0; // the newest search asked for; older answers are dropped

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const nearest = body.nearest ? ` (nearest: ${body.nearest.join(", ")})` : "";
    throw new Error(`${body.detail || response.status}${nearest}`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function details(item) {
  const parts = [item.year, item.genres && String(item.genres).replaceAll("|", ", ")];
  return parts.filter((p) => p !== undefined && p !== null && p !== "").join(" · ");
}

function closeSuggestions() {
  suggestions = [];
  active = -1;
  list.replaceChildren();
  list.hidden = true;
  input.setAttribute("aria-expanded", "false");
}

function renderSuggestions() {
  list.replaceChildren(
    ...suggestions.map((item, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === active));
      li.dataset.itemId = item.item_id;
      li.textContent = item.title;
      const extra = details(item);
      if (extra) {
        const small = document.createElement("small");
        small.textContent = extra;
        li.append(small);
      }
      li.addEventListener("mousedown", (event) => {
        event.preventDefault(); // keep the focus in the input
        pick(item);
      });
      return li;
    })
  );
  list.hidden = suggestions.length === 0;
  input.setAttribute("aria-expanded", String(!list.hidden));
}

async function search(text) {
  const asked = ++latest;
  try {
    const body = await api(`/v1/items/search?q=${encodeURIComponent(text)}&limit=8`);
    if (asked !== latest) return;
    suggestions = body.items;
    active = suggestions.length ? 0 : -1;
    renderSuggestions();
  } catch (err) {
    if (asked === latest) showError(err.message);
  }
}

function pick(item) {
  if (!picked.some((p) => p.item_id === item.item_id)) picked.push(item);
  input.value = "";
  latest++;
  closeSuggestions();
  renderHistory();
  input.focus();
}

function renderHistory() {
  $("history").replaceChildren(
    ...picked.map((item, i) => {
      const li = document.createElement("li");
      li.textContent = item.title;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.setAttribute("aria-label", `remove ${item.title}`);
      remove.addEventListener("click", () => {
        picked.splice(i, 1);
        renderHistory();
      });
      li.append(remove);
      return li;
    })
  );
}

function cell(name, value) {
  if (value === null || value === undefined) return "";
  if (name === "score") return Number(value).toFixed(3);
  const text = String(value);
  if (/^https?:\/\//.test(text)) {
    const link = document.createElement("a");
    link.href = text;
    link.textContent = "link";
    return link;
  }
  return name === "genres" ? text.replaceAll("|", ", ") : text;
}

function renderResults(answer) {
  const table = $("results");
  const items = answer.items;
  $("answered-by").textContent =
    `${items.length} items from run ${answer.run} (${answer.model}, ${answer.item_repr} items)`;
  const skip = new Set(["rank", "item_id", "title", "score"]);
  const fields = items.length ? Object.keys(items[0]).filter((f) => !skip.has(f)) : [];
  const columns = ["rank", "title", ...fields, "score"];
  table.tHead.rows[0].replaceChildren(
    ...columns.map((name) => {
      const th = document.createElement("th");
      th.className = name;
      // a generative run scores an item by the log-probability of its semantic ID
      th.textContent = name === "score" && answer.item_repr === "semantic" ? "log-prob" : name;
      return th;
    })
  );
  table.tBodies[0].replaceChildren(
    ...items.map((item) => {
      const tr = document.createElement("tr");
      for (const name of columns) {
        const td = document.createElement("td");
        td.className = name;
        td.append(cell(name, item[name]));
        tr.append(td);
      }
      return tr;
    })
  );
  table.hidden = false;
}

async function recommend() {
  showError("");
  const user = $("user-input").value.trim();
  const body = {
    k: Number($("k-input").value) || 10,
    exclude_seen: $("exclude-seen").checked,
  };
  if (picked.length) body.items = picked.map((p) => p.item_id);
  else if (user) body.user_id = user;
  else return showError("pick at least one title, or give a user id");
  const button = $("recommend");
  button.disabled = true;
  try {
    renderResults(
      await api("/v1/recommend", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      })
    );
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

input.addEventListener("input", () => {
  clearTimeout(timer);
  const text = input.value.trim();
  if (!text) {
    latest++;
    closeSuggestions();
    return;
  }
  timer = setTimeout(() => search(text), 120);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    if (!suggestions.length) return;
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    active = (active + step + suggestions.length) % suggestions.length;
    renderSuggestions();
  } else if (event.key === "Enter" && active >= 0) {
    event.preventDefault();
    pick(suggestions[active]);
  } else if (event.key === "Escape") {
    closeSuggestions();
  }
});

input.addEventListener("blur", () => setTimeout(closeSuggestions, 150));
$("recommend").addEventListener("click", recommend);
$("clear").addEventListener("click", () => {
  picked.length = 0;
  renderHistory();
  $("results").hidden = true;
  $("answered-by").textContent = "";
  showError("");
});

api("/readyz")
  .then((info) => {
    $("run-info").textContent =
      `run ${info.run} · ${info.model} · ${info.dataset}, ${info.n_items} items`;
  })
  .catch((err) => {
    $("run-info").textContent = `not ready: ${err.message}`;
  });
