// Under the player: like and dislike with their counts, the comments (newest or
// top first) with one level of replies, and report buttons.
import { SignedOut, api, currentUser, logInFirst, signedIn } from "./api.js";
import { fetchVideo } from "./processing.js";
import { reportButton, wireReportButtons } from "./report.js";
import { PagedList, el, failure, formatCount, plural, say, timeElement } from "./ui.js";

const section = document.getElementById("comments");
const videoId = section.dataset.videoId;
const maxLength = Number(section.dataset.maxLength) || 2000;

// --- reactions ---------------------------------------------------------------

const like = document.getElementById("like");
const dislike = document.getElementById("dislike");
const likeCount = document.getElementById("like-count");
const dislikeCount = document.getElementById("dislike-count");
const reactionMessage = document.getElementById("reaction-message");
let myReaction = null;

function showReactions({ like_count: likes, dislike_count: dislikes, my_reaction: mine }) {
  if (Number.isInteger(likes)) likeCount.textContent = formatCount(likes);
  if (Number.isInteger(dislikes)) dislikeCount.textContent = formatCount(dislikes);
  myReaction = mine ?? null;
  like.setAttribute("aria-pressed", String(myReaction === "like"));
  dislike.setAttribute("aria-pressed", String(myReaction === "dislike"));
}

async function react(kind) {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  like.disabled = true;
  dislike.disabled = true;
  say(reactionMessage, "");
  try {
    // Pressing the pressed button takes the reaction back.
    const response = myReaction === kind
      ? await api(`/videos/${videoId}/reaction`, { method: "DELETE", auth: true })
      : await api(`/videos/${videoId}/reaction`, { method: "PUT", auth: true, json: { kind } });
    if (response.ok) showReactions(await response.json());
    else say(reactionMessage, await failure(response, "That did not work; please try again."));
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(reactionMessage, "The server could not be reached.");
  } finally {
    like.disabled = false;
    dislike.disabled = false;
  }
}

like.addEventListener("click", () => react("like"));
dislike.addEventListener("click", () => react("dislike"));

async function loadMyReaction() {
  if (!signedIn()) return;
  try {
    const response = await fetchVideo(videoId);
    if (response.ok) showReactions(await response.json());
  } catch {
    // The counts the page came with stay.
  }
}

// --- comments ----------------------------------------------------------------

const list = document.getElementById("comment-list");
const countLabel = document.getElementById("comment-count");
const sortSelect = document.getElementById("comment-sort");
const form = document.getElementById("comment-form");
const formMessage = document.getElementById("comment-message");
let commentCount = Number(section.dataset.count) || 0;

function showCount(delta) {
  commentCount = Math.max(0, commentCount + delta);
  countLabel.textContent = plural(commentCount, "comment");
}

function mine(comment) {
  const me = currentUser();
  return me !== null && me.id === comment.author_id;
}

// A form with a textarea and a submit button, for a reply or an edit.
function textForm(className, label, value, submitText) {
  const area = el("textarea", { attrs: { name: "body", rows: 2, maxlength: maxLength, required: true,
    "aria-label": label } });
  area.value = value;
  const message = el("p", { className: "message", attrs: { role: "alert", hidden: true } });
  const submit = el("button", { className: "button small", text: submitText, attrs: { type: "submit" } });
  const cancel = el("button", { className: "button small ghost", text: "Cancel", attrs: { type: "button" } });
  const node = el("form", { className: `form compact ${className}` }, area, message,
    el("div", { className: "row" }, submit, cancel));
  cancel.addEventListener("click", () => node.remove());
  return { node, area, message, submit };
}

async function send(path, method, body, { message, submit }) {
  submit.disabled = true;
  say(message, "");
  try {
    const response = await api(path, { method, auth: true, json: body });
    if (response.ok) return response.status === 204 ? {} : response.json();
    say(message, await failure(response, "That did not work; please try again."));
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(message, "The server could not be reached.");
  } finally {
    submit.disabled = false;
  }
  return null;
}

function bodyOf(comment) {
  if (comment.removed) return el("p", { className: "comment-body gone", text: "This comment was removed by a moderator." });
  if (comment.deleted) return el("p", { className: "comment-body gone", text: "This comment was deleted." });
  return el("p", { className: "comment-body", text: comment.body });
}

function commentItem(comment) {
  const item = el("li", { className: "comment", attrs: { "data-comment-id": comment.id } });
  const head = el("p", { className: "comment-head meta" },
    el("a", { className: "comment-author", text: comment.author_name, attrs: { href: `/@${comment.author_id}` } }),
    " \u00B7 ", timeElement(comment.created_at),
    comment.edited_at ? el("span", { className: "edited", text: " (edited)" }) : null);
  let body = bodyOf(comment);
  const actions = el("div", { className: "comment-actions" });
  item.append(head, body, actions);
  const gone = comment.deleted || comment.removed;
  const topLevel = comment.parent_id === null || comment.parent_id === undefined;

  if (topLevel) {
    const replies = el("ol", { className: "replies" });
    for (const reply of comment.replies || []) replies.append(commentItem(reply));
    item.append(replies);
    const hiddenReplies = (comment.reply_count || 0) - replies.childElementCount;
    if (hiddenReplies > 0) {
      const more = el("button", { className: "link-button more-replies",
        text: comment.reply_count === 1 ? "Show the reply"
          : `Show all ${formatCount(comment.reply_count)} replies`, attrs: { type: "button" } });
      item.append(more);
      const paged = new PagedList({ list: replies, path: `/comments/${comment.id}/replies`,
        render: commentItem });
      more.addEventListener("click", async () => {
        more.remove();
        paged.more = el("button", { className: "link-button more-replies", text: "More replies",
          attrs: { type: "button" } });
        paged.more.addEventListener("click", () => paged.load());
        item.append(paged.more);
        await paged.reset();
      });
    }
    if (!gone) {
      const reply = el("button", { className: "link-button", text: "Reply", attrs: { type: "button" } });
      reply.addEventListener("click", () => {
        if (!signedIn()) {
          logInFirst();
          return;
        }
        if (item.querySelector(":scope > .reply-form")) return;
        const parts = textForm("reply-form", "Your reply", "", "Reply");
        parts.node.addEventListener("submit", async (event) => {
          event.preventDefault();
          const text = parts.area.value.trim();
          if (!text) return;
          const created = await send(`/videos/${videoId}/comments`, "POST",
            { body: text, parent_id: comment.id }, parts);
          if (created) {
            replies.append(commentItem(created));
            parts.node.remove();
            showCount(1);
          }
        });
        replies.before(parts.node);
        parts.area.focus();
      });
      actions.append(reply);
    }
  }

  if (!gone && mine(comment)) {
    const edit = el("button", { className: "link-button", text: "Edit", attrs: { type: "button" } });
    edit.addEventListener("click", () => {
      if (item.querySelector(":scope > .edit-form")) return;
      const parts = textForm("edit-form", "Edit your comment", comment.body, "Save");
      parts.node.addEventListener("submit", async (event) => {
        event.preventDefault();
        const text = parts.area.value.trim();
        if (!text) return;
        const updated = await send(`/comments/${comment.id}`, "PATCH", { body: text }, parts);
        if (updated) {
          comment.body = updated.body ?? text;
          const fresh = bodyOf(comment);
          body.replaceWith(fresh);
          body = fresh;
          if (!head.querySelector(".edited")) head.append(el("span", { className: "edited", text: " (edited)" }));
          parts.node.remove();
        }
      });
      body.after(parts.node);
      parts.area.focus();
    });
    // Deleting asks once more, in place.
    const remove = el("button", { className: "link-button danger", text: "Delete", attrs: { type: "button" } });
    remove.addEventListener("click", async () => {
      if (remove.dataset.armed !== "true") {
        remove.dataset.armed = "true";
        remove.textContent = "Delete for good?";
        return;
      }
      remove.disabled = true;
      try {
        const response = await api(`/comments/${comment.id}`, { method: "DELETE", auth: true });
        if (response.ok) {
          showCount(-1);
          const replies = item.querySelector(":scope > .replies");
          if (replies && replies.childElementCount > 0) {
            item.replaceWith(commentItem({ ...comment, deleted: true, body: "", replies: [],
              reply_count: 0 }));
            // The replies stay under the placeholder.
            list.querySelector(`[data-comment-id="${comment.id}"] > .replies`)?.replaceWith(replies);
          } else {
            item.remove();
          }
          return;
        }
        remove.textContent = await failure(response, "Could not delete it.");
      } catch {
        remove.textContent = "The server could not be reached.";
      }
      remove.disabled = false;
    });
    actions.append(edit, remove);
  } else if (!gone) {
    actions.append(reportButton("comment", comment.id));
  }
  return item;
}

const comments = new PagedList({
  list,
  more: document.getElementById("more-comments"),
  empty: document.getElementById("no-comments"),
  path: `/videos/${videoId}/comments?sort=${sortSelect.value}`,
  render: commentItem,
});

async function loadComments() {
  try {
    await comments.reset(`/videos/${videoId}/comments?sort=${sortSelect.value}`);
  } catch (error) {
    say(formMessage, error.message || "The comments could not be loaded.");
  }
}

sortSelect.addEventListener("change", loadComments);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!signedIn()) {
    logInFirst();
    return;
  }
  const area = form.elements.body;
  const text = area.value.trim();
  if (!text) return;
  const created = await send(`/videos/${videoId}/comments`, "POST", { body: text },
    { message: formMessage, submit: form.querySelector("button[type=submit]") });
  if (created) {
    area.value = "";
    list.prepend(commentItem({ ...created, replies: [], reply_count: 0 }));
    document.getElementById("no-comments").hidden = true;
    showCount(1);
  }
});

wireReportButtons(document.querySelector(".watch-actions"));
loadMyReaction();
loadComments();
