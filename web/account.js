// The account view: sign up / log in while logged out; who you are and Log out after.
// Passwords are cleared from the field as soon as they have been sent.
import { api } from "./api.js";
import { session } from "./state.js";
import { banner, feedback, setText } from "./ui.js";

const $ = (id) => document.getElementById(id);

export function mountAccount() {
  const form = $("login-form");
  const email = $("email");
  const password = $("password");
  const message = $("account-feedback");
  const buttons = [$("login"), $("signup")];

  const busy = (on) => buttons.forEach((b) => (b.disabled = on));

  async function logIn() {
    const basic = btoa(unescape(encodeURIComponent(`${email.value}:${password.value}`)));
    const response = await api("/login", {
      method: "POST",
      headers: { Authorization: "Basic " + basic },
    });
    const token = (await response.text()).trim();
    password.value = "";
    session.logIn(token);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const signingUp = event.submitter?.id === "signup";
    if (!form.reportValidity()) return;
    busy(true);
    feedback(message, signingUp ? "Creating your account…" : "Logging in…");
    try {
      if (signingUp) {
        await api("/signup", {
          method: "POST",
          json: { email: email.value, password: password.value },
        });
      }
      await logIn();
      banner(signingUp ? "Welcome! Your account is ready." : "", "success");
      feedback(message, "");
    } catch (error) {
      password.value = "";
      feedback(message, error.message, "error");
      password.focus();
    } finally {
      busy(false);
    }
  });

  $("logout").addEventListener("click", () => {
    session.logOut();
    banner("You are logged out.", "success");
  });

  session.subscribe((change) => {
    if (change.kind === "expired") {
      banner(change.message, "error");
      feedback(message, "");
    }
    render();
  });
  render();
}

let expiry = null;

// Logged out: the form. Logged in: the account and Log out.
function render() {
  clearTimeout(expiry);
  const user = session.user;
  $("login-form").hidden = !!user;
  $("account-info").hidden = !user;
  $("logout").hidden = !user;
  $("password").value = "";
  if (user) {
    setText($("who"), user.email);
    setText($("account-email"), user.email);
    setText($("account-role"), user.admin ? "Administrator: you see every user's jobs." : "");
    if (document.activeElement === document.body || !document.activeElement) $("logout").focus();
    // The token's own end: back to login then, not at the next failed call.
    const left = user.exp * 1000 - Date.now();
    if (left <= 0) session.expire("Your session has expired. Please log in again.");
    else if (left < 2 ** 31) expiry = setTimeout(() => session.expire("Your session has expired. Please log in again."), left);
  } else {
    setText($("who"), "");
  }
}
