// The media view: upload a video (drag and drop or choose), watch its job move
// queued → converting → done | failed live, download the MP3 named after the video.
// Jobs are kept by id and their rows updated in place.
import { api, getJson } from "./api.js";
import { openStream } from "./live.js";
import { session } from "./state.js";
import { el, feedback, formatBytes, formatDuration, formatTime, setText } from "./ui.js";

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = {
  queued: "queued",
  converting: "converting",
  done: "done",
  failed: "failed",
};

// How far along a job is: it only moves forward (queued → converting → done or failed).
const PROGRESS = { queued: 0, converting: 1, done: 2, failed: 2 };

// Whether `job` is an older copy than `shown`: an earlier update, or one of the same
// second (updated_at is in seconds) that is less far along — a listing or a fetch
// answered before an event that overtook it.
function isOlder(job, shown) {
  if (job.updated_at !== shown.updated_at) return job.updated_at < shown.updated_at;
  return (PROGRESS[job.status] ?? 0) < (PROGRESS[shown.status] ?? 0);
}

// job id → { job, row, parts }
const rows = new Map();
let stream = null;
let onConnection = () => {};

export function mountMedia({ connection }) {
  onConnection = connection;
  setUpUpload();
  session.subscribe(() => start());
  start();
}

function start() {
  stream?.close();
  stream = null;
  rows.clear();
  $("jobs").replaceChildren();
  feedback($("upload-feedback"), "");
  const user = session.user;
  $("media").hidden = !user;
  $("media-teaser").hidden = !!user;
  if (!user) {
    onConnection("jobs", null);
    return;
  }
  $("owner-note").hidden = !user.admin;
  stream = openStream("/live/jobs", {
    token: session.token,
    onState: (state) => onConnection("jobs", state),
    onRefused: (status, message) => {
      onConnection("jobs", null);
      if (status === 401) session.expire("Your session has ended or is no longer valid. Please log in again.");
      else feedback($("upload-feedback"), message, "error");
    },
    onEvent: (name, data) => {
      if (name === "ready" || name === "resync") loadJobs();
      else if (name === "job") upsert(JSON.parse(data));
    },
  });
}

// The whole list, merged into what is shown (on connect and on resync).
async function loadJobs() {
  const user = session.user;
  if (!user) return;
  try {
    const jobs = await getJson(user.admin ? "/jobs?all=true" : "/jobs");
    for (const job of jobs.reverse()) upsert(job);
    updateEmpty();
  } catch (error) {
    if (error.status !== 401) feedback($("upload-feedback"), error.message, "error");
  }
}

function updateEmpty() {
  $("jobs-empty").hidden = rows.size > 0;
}

function upsert(job) {
  let entry = rows.get(job.job_id);
  if (!entry) {
    entry = createRow(job);
    rows.set(job.job_id, entry);
    $("jobs").prepend(entry.row);
    updateEmpty();
  } else if (isOlder(job, entry.job)) {
    return; // an older copy of the job (a listing or a fetch raced with an event)
  }
  entry.job = job;
  const p = entry.parts;
  setText(p.name, job.filename || job.video_fid);
  setText(p.owner, job.owner ? `by ${job.owner}` : "");
  p.owner.hidden = !job.owner;
  setText(p.status, STATUS_TEXT[job.status] || job.status);
  p.status.className = "chip status-" + job.status;
  setText(p.reason, job.status === "failed" ? job.error || "The conversion failed." : "");
  p.reason.hidden = job.status !== "failed";
  const facts = [formatBytes(job.size_bytes)];
  if (job.duration_secs) facts.push(formatDuration(job.duration_secs));
  facts.push(formatTime(job.created_at));
  setText(p.facts, facts.filter(Boolean).join(" · "));
  p.download.hidden = !(job.status === "done" && job.mp3_fid);
  entry.row.setAttribute("aria-busy", job.status === "queued" || job.status === "converting");
}

function createRow(job) {
  const parts = {
    name: el("span", { class: "job-name" }),
    owner: el("span", { class: "job-owner" }),
    status: el("span", { class: "chip" }),
    reason: el("p", { class: "job-reason" }),
    facts: el("span", { class: "job-facts" }),
    download: el("button", { type: "button", class: "secondary", text: "Download" }),
    message: el("p", { class: "feedback", role: "status", "aria-live": "polite", hidden: true }),
  };
  const row = el(
    "li",
    { class: "job", "data-job-id": job.job_id },
    el("div", { class: "job-main" }, parts.name, parts.owner, parts.facts),
    el("div", { class: "job-side" }, parts.status, parts.download),
    parts.reason,
    parts.message,
  );
  const entry = { job, row, parts };
  parts.download.addEventListener("click", () => download(entry));
  return entry;
}

// The MP3 is fetched with the token (a plain link could not send it) and saved under
// the video's name with .mp3 (the server's Content-Disposition says the same).
async function download(entry) {
  const { job, parts } = entry;
  parts.download.disabled = true;
  feedback(parts.message, "Preparing the download…");
  try {
    const response = await api("/download?fid=" + encodeURIComponent(job.mp3_fid));
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: mp3Name(job.filename), hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    feedback(parts.message, `Saved ${mp3Name(job.filename)}.`, "success");
  } catch (error) {
    feedback(parts.message, error.message, "error");
  } finally {
    parts.download.disabled = false;
  }
}

export function mp3Name(source) {
  const base = (source || "audio").split(/[\\/]/).pop();
  const dot = base.lastIndexOf(".");
  return (dot > 0 ? base.slice(0, dot) : base) + ".mp3";
}

function setUpUpload() {
  const form = $("upload-form");
  const input = $("file");
  const zone = $("drop-zone");
  const button = $("upload");
  const cancel = $("upload-cancel");
  const progress = $("upload-progress");
  const message = $("upload-feedback");
  const chosen = $("file-chosen");
  let request = null;

  const showChosen = () => {
    const file = input.files[0];
    setText(
      chosen,
      file ? `Ready to upload: ${file.name} (${formatBytes(file.size)})` : "Choose a video, or drop one here.",
    );
  };
  input.addEventListener("change", showChosen);
  showChosen();

  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer?.files?.length) {
      input.files = event.dataTransfer.files;
      showChosen();
    }
  });

  const finish = () => {
    request = null;
    button.disabled = false;
    cancel.hidden = true;
    progress.hidden = true;
  };

  cancel.addEventListener("click", () => request?.abort());

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) {
      feedback(message, "Choose a video first.", "error");
      return;
    }
    if (request) return; // one upload at a time: no double submissions
    const body = new FormData();
    body.append("file", file);
    request = new XMLHttpRequest();
    request.open("POST", "/upload");
    request.setRequestHeader("Authorization", "Bearer " + session.token);
    request.setRequestHeader("Accept", "application/json");
    button.disabled = true;
    cancel.hidden = false;
    progress.hidden = false;
    progress.value = 0;
    feedback(message, `Uploading ${file.name}…`);
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.value = (100 * e.loaded) / e.total;
        setText(message, `Uploading ${file.name}… ${Math.floor(progress.value)} %`);
      }
    });
    request.addEventListener("load", async () => {
      const status = request.status;
      const text = request.responseText;
      finish();
      if (status >= 200 && status < 300) {
        feedback(message, `Uploaded ${file.name}. It is being converted; the MP3 will appear below.`, "success");
        form.reset();
        showChosen();
        try {
          const { job_id: id } = JSON.parse(text);
          upsert(await getJson("/jobs/" + encodeURIComponent(id)));
        } catch {
          /* the live stream brings it */
        }
      } else {
        let detail = `Upload failed (HTTP ${status}).`;
        try {
          detail = JSON.parse(text).detail || detail;
        } catch {
          /* not problem+json */
        }
        if (status === 401) session.expire("Your session has ended or is no longer valid. Please log in again.");
        feedback(message, detail, "error");
      }
    });
    request.addEventListener("error", () => {
      finish();
      feedback(message, "The upload failed: the server cannot be reached.", "error");
    });
    request.addEventListener("abort", () => {
      finish();
      feedback(message, "Upload cancelled.", "info");
    });
    request.send(body);
  });
}
