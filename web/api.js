// The HTTP API, as every view calls it: JSON in and out, the session's token on every
// call, problem+json errors turned into messages a person can read.
import { session } from "./state.js";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The sentence a problem+json answer carries (`detail`, else `title`).
export async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || response.statusText;
  } catch {
    return response.statusText || `HTTP ${response.status}`;
  }
}

// fetch() on this origin with the session's token; throws ApiError on a non-2xx answer.
// A 401 to a call that carried a token means the session is over: the account view
// hears of it (session "expired") and returns to the login form.
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = session.token;
  if (token && !headers.has("Authorization")) headers.set("Authorization", "Bearer " + token);
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    options = { ...options, body: JSON.stringify(options.json) };
  }
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check your connection and try again.");
  }
  if (!response.ok) {
    const message = await problemText(response);
    if (response.status === 401 && token && !headers.get("Authorization").startsWith("Basic")) {
      session.expire("Your session has ended or is no longer valid. Please log in again.");
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export const getJson = async (path) =>
  (await api(path, { headers: { Accept: "application/json" } })).json();
