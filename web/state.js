// The session: the token (sessionStorage, this tab only), what it says about the user,
// and who wants to know when it changes. Views subscribe; nothing else holds it.
const KEY = "flotilla-token";
const listeners = new Set();

// The claims of a JWT (not verified here: the server checks every call).
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      [...atob(part)].map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch {
    return null;
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  // { email, admin, exp } of the logged-in user, or null.
  get user() {
    const token = this.token;
    const c = token && claims(token);
    if (!c) return null;
    return { email: c.username || "", admin: c.admin === true, exp: c.exp || 0 };
  },
  logIn(token) {
    sessionStorage.setItem(KEY, token);
    notify({ kind: "login" });
  },
  logOut() {
    sessionStorage.removeItem(KEY);
    notify({ kind: "logout" });
  },
  // The server refused the token (expired, revoked, forged).
  expire(message) {
    if (!this.token) return;
    sessionStorage.removeItem(KEY);
    notify({ kind: "expired", message });
  },
  subscribe(listener) {
    listeners.add(listener);
  },
};

function notify(change) {
  for (const listener of listeners) listener(change);
}
