// The Flotilla web app: each view lives in its own module (account.js, media.js,
// blog.js) over the same HTTP API that curl and `flotilla client` use (api.js), the
// session (state.js) and the live streams (live.js). This file only wires them up and
// shows the state of the connection.
import { mountAccount } from "./account.js";
import { mountBlog } from "./blog.js";
import { mountMedia } from "./media.js";
import { mountSystem } from "./system.js";
import { setText } from "./ui.js";

// stream name → "live" | "reconnecting" | "unreachable" (absent: not open)
const streams = new Map();

function connection(name, state) {
  if (state) streams.set(name, state);
  else streams.delete(name);
  const states = [...streams.values()];
  const overall = states.includes("unreachable")
    ? "unreachable"
    : states.includes("reconnecting")
      ? "reconnecting"
      : states.includes("connecting") || states.length === 0
        ? "connecting"
        : "live";
  const node = document.getElementById("connection");
  node.dataset.state = overall;
  setText(
    node,
    {
      live: "Live",
      connecting: "Connecting…",
      reconnecting: "Reconnecting…",
      unreachable: "Server unreachable — retrying",
    }[overall],
  );
  document.getElementById("offline").hidden = overall !== "unreachable";
}

mountAccount();
if (location.pathname === "/system") {
  mountSystem({ connection });
} else {
  connection("blog", "connecting");
  mountMedia({ connection });
  mountBlog({ connection });
}
