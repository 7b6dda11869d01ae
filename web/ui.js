// Small DOM helpers shared by the views.

// el("li", { class: "x", text: "…" }, child, …)
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// Sets the text of a node only when it differs (no needless DOM churn, no lost selection).
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// A message next to the action that caused it: `kind` is "success", "error" or "info".
// The node is an aria-live region, so screen readers announce it.
export function feedback(node, text, kind = "info") {
  node.className = "feedback " + kind;
  node.textContent = text || "";
  node.hidden = !text;
}

// The banner at the top: connection state and session messages.
export function banner(text, kind = "info") {
  const node = document.getElementById("banner");
  feedback(node, text, kind);
}

// "12.3 MB"
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// "3:07"
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function formatTime(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toLocaleString(undefined, {
    dateStyle: "medium",
    timeStyle: "short",
  });
}

// A text input's "12 / 10000" counter, kept up to date as the user types.
export function counted(input, counter) {
  const max = Number(input.maxLength);
  const update = () => {
    const length = input.value.length;
    setText(counter, `${length.toLocaleString()} / ${max.toLocaleString()}`);
    counter.classList.toggle("near-limit", length > max * 0.9);
  };
  input.addEventListener("input", update);
  update();
  return update;
}
