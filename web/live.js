// Live updates: Server-Sent Events read with fetch() (EventSource cannot send the
// Authorization header, and the token must not go into a URL). Reconnects with
// exponential backoff and jitter; reports its state so the page can say when the
// server is unreachable.
import { problemText } from "./api.js";

const MIN_DELAY = 500;
const MAX_DELAY = 30000;

// Opens `path` and calls onEvent(name, data) for each event. onState(state) hears
// "live", "reconnecting" and "unreachable"; onRefused(status, message) a 4xx answer
// (no retry: e.g. 401, the token is no longer valid). Returns { close }.
export function openStream(path, { token, onEvent, onState, onRefused }) {
  let controller = null;
  let closed = false;
  let failures = 0;
  let timer = null;

  async function connect() {
    controller = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        closed = true;
        onRefused?.(response.status, await problemText(response));
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      await read(response.body);
      if (closed) return;
      throw new Error("the stream ended");
    } catch {
      if (closed) return;
      failures += 1;
      onState(failures >= 3 ? "unreachable" : "reconnecting");
      const delay = Math.min(MAX_DELAY, MIN_DELAY * 2 ** (failures - 1));
      timer = setTimeout(connect, delay * (0.5 + Math.random()));
    }
  }

  async function read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = value;
          else if (field === "data") data.push(value);
        }
        if (data.length === 0) continue;
        if (name === "ready") {
          failures = 0;
          onState("live");
        }
        onEvent(name, data.join("\n"));
      }
    }
  }

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      controller?.abort();
    },
  };
}
