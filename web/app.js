// The Flotilla web UI: plain JavaScript over the same HTTP API that curl and
// `flotilla client` use. The token lives in sessionStorage for this tab only.
"use strict";

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("flotilla-token");

function say(text) { $("message").textContent = text || ""; }

async function problem(response) {
  try { const p = await response.json(); return p.detail || p.title || response.statusText; }
  catch { return response.statusText; }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token() && !headers.has("Authorization")) headers.set("Authorization", "Bearer " + token());
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw new Error(`${response.status}: ${await problem(response)}`);
  return response;
}

function showIdentity() {
  const t = token();
  let name = "not logged in";
  if (t) {
    try { name = JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).username; }
    catch { name = "logged in"; }
  }
  $("who").textContent = name;
  $("logout").hidden = !t;
  $("media").hidden = !t;
}

async function login(event) {
  event.preventDefault();
  say();
  try {
    const basic = btoa(`${$("email").value}:${$("password").value}`);
    const response = await api("/login", { method: "POST", headers: { Authorization: "Basic " + basic } });
    sessionStorage.setItem("flotilla-token", (await response.text()).trim());
    showIdentity();
    refreshJobs();
  } catch (error) { say(error.message); }
}

async function signup() {
  say();
  try {
    await api("/signup", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email: $("email").value, password: $("password").value }),
    });
    say("Account created; you can log in.");
  } catch (error) { say(error.message); }
}

function upload(event) {
  event.preventDefault();
  say();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const request = new XMLHttpRequest();
  request.open("POST", "/upload");
  request.setRequestHeader("Authorization", "Bearer " + token());
  request.setRequestHeader("Accept", "application/json");
  const bar = $("upload-progress");
  bar.hidden = false;
  request.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
  request.onload = () => {
    bar.hidden = true;
    if (request.status >= 400) {
      try { say(`${request.status}: ${JSON.parse(request.responseText).detail}`); } catch { say(request.statusText); }
    }
    refreshJobs();
  };
  request.onerror = () => { bar.hidden = true; say("upload failed"); };
  request.send(form);
}

async function download(fid) {
  try {
    const response = await api("/download?fid=" + encodeURIComponent(fid));
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = fid + ".mp3";
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) { say(error.message); }
}

async function refreshJobs() {
  if (!token()) return;
  try {
    const jobs = await (await api("/jobs", { headers: { Accept: "application/json" } })).json();
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren(...jobs.map((job) => {
      const row = document.createElement("tr");
      const cell = (text) => { const td = document.createElement("td"); td.textContent = text; return td; };
      const status = cell(job.status + (job.error ? ` (${job.error})` : ""));
      status.className = "status-" + job.status;
      const mp3 = document.createElement("td");
      if (job.mp3_fid) {
        const button = document.createElement("button");
        button.textContent = "Download";
        button.onclick = () => download(job.mp3_fid);
        mp3.append(button);
      }
      row.append(cell(job.filename || job.video_fid), status, mp3,
        cell(job.created_at ? new Date(job.created_at * 1000).toLocaleString() : ""));
      return row;
    }));
  } catch (error) { say(error.message); }
}

async function createPost(event) {
  event.preventDefault();
  say();
  try {
    await api("/posts/create", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ title: $("post-title").value }),
    });
    $("post-title").value = "";
    setTimeout(refreshPosts, 300);
  } catch (error) { say(error.message); }
}

async function comment(postId, input) {
  try {
    await api(`/posts/${encodeURIComponent(postId)}/comments`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ content: input.value }),
    });
    input.value = "";
    setTimeout(refreshPosts, 300);
  } catch (error) { say(error.message); }
}

async function refreshPosts() {
  try {
    const posts = await (await api("/posts")).json();
    $("posts").replaceChildren(...Object.values(posts).map((post) => {
      const box = document.createElement("div");
      box.className = "post";
      const title = document.createElement("h3");
      title.textContent = post.title;
      const list = document.createElement("ul");
      for (const c of post.comments || []) {
        const item = document.createElement("li");
        item.className = "comment-" + c.status;
        item.textContent = c.status === "rejected" ? "This comment has been rejected"
          : c.status === "pending" ? "This comment is awaiting moderation" : c.content;
        list.append(item);
      }
      const form = document.createElement("form");
      const input = document.createElement("input");
      input.placeholder = "comment";
      input.required = true;
      const send = document.createElement("button");
      send.textContent = "Comment";
      form.append(input, send);
      form.onsubmit = (e) => { e.preventDefault(); comment(post.id, input); };
      box.append(title, list, form);
      return box;
    }));
  } catch (error) { say(error.message); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("signup").addEventListener("click", signup);
  $("logout").addEventListener("click", () => { sessionStorage.removeItem("flotilla-token"); showIdentity(); });
  $("upload-form").addEventListener("submit", upload);
  $("post-form").addEventListener("submit", createPost);
  showIdentity();
  refreshJobs();
  refreshPosts();
  setInterval(() => { refreshJobs(); refreshPosts(); }, 3000);
});
