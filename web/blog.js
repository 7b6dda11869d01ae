// The blog view: posts and their comments, with each comment's moderation status as it
// changes. Everything is keyed by id and updated in place — a new post or a decision
// never rebuilds a list, so a comment being typed keeps its text, focus and caret.
import { api, getJson } from "./api.js";
import { openStream } from "./live.js";
import { el, counted, feedback, setText } from "./ui.js";

const $ = (id) => document.getElementById(id);
// The blog's limit on a title and on a comment (characters).
const MAX_TEXT = 10000;
const REJECTION_REASON =
  "Rejected by moderation: it contains a word this blog does not allow.";

// post id → { article, title, list, comments: Map(comment id → { item, parts, status }) }
const posts = new Map();

export function mountBlog({ connection }) {
  const form = $("post-form");
  const title = $("post-title");
  const message = $("post-feedback");
  title.maxLength = MAX_TEXT;
  const recount = counted(title, $("post-title-count"));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = title.value.trim();
    if (!text) {
      feedback(message, "Write a title first.", "error");
      return;
    }
    const button = $("create-post");
    button.disabled = true;
    feedback(message, "Publishing…");
    try {
      const created = await (await api("/posts/create", { method: "POST", json: { title: text } })).json();
      title.value = "";
      recount();
      feedback(message, "Post published.", "success");
      if (created?.id) upsertPost({ id: created.id, title: created.title ?? text });
    } catch (error) {
      feedback(message, error.message, "error");
    } finally {
      button.disabled = false;
    }
  });

  openStream("/live/blog", {
    onState: (state) => connection("blog", state),
    onEvent: (name, data) => {
      if (name === "ready" || name === "resync") return loadPosts();
      const event = JSON.parse(data);
      if (name === "PostCreated") upsertPost(event);
      else if (name === "CommentCreated" || name === "CommentUpdated" || name === "CommentModerated")
        upsertComment(event.postId, event);
    },
  });
}

// The whole view, merged into what is shown.
async function loadPosts() {
  try {
    const view = await getJson("/posts");
    const list = Object.values(view).sort((a, b) => (a.id < b.id ? -1 : 1));
    for (const post of list) {
      upsertPost(post);
      for (const comment of post.comments || []) upsertComment(post.id, comment);
    }
    $("posts-empty").hidden = posts.size > 0;
  } catch (error) {
    feedback($("post-feedback"), error.message, "error");
  }
}

function upsertPost(post) {
  let entry = posts.get(post.id);
  if (!entry) {
    entry = createPost(post);
    posts.set(post.id, entry);
    // Newest first: ids are time-ordered (UUIDv7). Insert before the first older post.
    const container = $("posts");
    const next = [...container.children].find((node) => node.dataset.postId < post.id);
    container.insertBefore(entry.article, next || null);
    $("posts-empty").hidden = true;
  }
  setText(entry.title, post.title);
}

function createPost(post) {
  const headingId = "post-" + post.id;
  const title = el("h3", { id: headingId, class: "post-title" });
  const list = el("ul", { class: "comments", "aria-label": "Comments" });
  const input = el("input", {
    type: "text",
    name: "content",
    required: true,
    maxlength: String(MAX_TEXT),
    autocomplete: "off",
    "aria-describedby": "count-" + post.id,
  });
  const inputId = "comment-" + post.id;
  input.id = inputId;
  const count = el("span", { class: "counter", id: "count-" + post.id, "aria-live": "off" });
  const button = el("button", { type: "submit", text: "Comment" });
  const message = el("p", { class: "feedback", role: "status", "aria-live": "polite", hidden: true });
  const form = el(
    "form",
    { class: "comment-form", novalidate: true },
    el("label", { for: inputId, text: "Comment" }),
    el("div", { class: "field-row" }, input, button),
    count,
    message,
  );
  const recount = counted(input, count);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (!content) {
      feedback(message, "Write a comment first.", "error");
      return;
    }
    button.disabled = true;
    try {
      const created = await (
        await api(`/posts/${encodeURIComponent(post.id)}/comments`, {
          method: "POST",
          json: { content },
        })
      ).json();
      input.value = "";
      recount();
      feedback(message, "Comment sent; it appears once moderation has seen it.", "success");
      const mine = Array.isArray(created) ? created.filter((c) => c.content === content).at(-1) : created;
      if (mine?.id) upsertComment(post.id, mine);
    } catch (error) {
      feedback(message, error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  const article = el(
    "article",
    { class: "post", "data-post-id": post.id, "aria-labelledby": headingId },
    title,
    list,
    form,
  );
  return { article, title, list, comments: new Map() };
}

function upsertComment(postId, comment) {
  const post = posts.get(postId);
  if (!post) return; // its post arrives with the next resync
  let entry = post.comments.get(comment.id);
  if (!entry) {
    const parts = {
      status: el("span", { class: "chip" }),
      text: el("p", { class: "comment-text" }),
    };
    const item = el("li", { class: "comment", "data-comment-id": comment.id }, parts.status, parts.text);
    entry = { item, parts, status: null };
    post.comments.set(comment.id, entry);
    post.list.append(item);
  }
  // A decision is final: a late copy of the creation event does not undo it.
  if (entry.status && entry.status !== "pending" && comment.status === "pending") return;
  entry.status = comment.status;
  const { status, text } = entry.parts;
  setText(status, comment.status);
  status.className = "chip status-" + comment.status;
  entry.item.className = "comment comment-" + comment.status;
  if (comment.status === "rejected") setText(text, REJECTION_REASON);
  else if (comment.status === "pending") setText(text, `${comment.content} — awaiting moderation`);
  else setText(text, comment.content);
}
