// "My videos": every video of the signed-in user (GET /users/{id}/videos with the
// token lists private, unlisted, processing and removed ones too), each with a form
// to edit its title, description, visibility and tags (PATCH /videos/{id}) and a
// delete button that asks once more.
import { SignedOut, api, currentUser, logInFirst, signedIn, storeUser } from "./api.js";
import { PagedList, el, failure, say } from "./ui.js";

const pageMessage = document.getElementById("my-videos-message");
const template = document.getElementById("video-row-template");

// "music, #Live cats" -> ["music", "live", "cats"]: the server normalises them too.
export function parseTags(text) {
  const tags = text.split(/[\s,]+/).map((tag) => tag.replace(/^#+/, "").trim()).filter(Boolean);
  return [...new Set(tags)];
}

function statusOf(video) {
  const parts = [];
  if (video.removed) {
    parts.push(`Removed by a moderator${video.removed_reason ? `: ${video.removed_reason}` : ""}`);
  } else if (video.status === "processing") {
    parts.push("Processing");
  } else if (video.status === "failed") {
    parts.push(`Failed${video.failure_reason ? `: ${video.failure_reason}` : ""}`);
  }
  parts.push(`${video.views || 0} view${video.views === 1 ? "" : "s"}`);
  return parts.join(" \u00B7 ");
}

function row(video) {
  const item = template.content.firstElementChild.cloneNode(true);
  item.dataset.videoId = video.id;
  const link = item.querySelector("[data-field=link]");
  link.href = `/watch/${video.id}`;
  link.append(el("span", { className: "card-title", text: video.title }));
  item.querySelector("[data-field=status]").textContent = statusOf(video);
  const form = item.querySelector("form");
  form.elements.title.value = video.title;
  form.elements.description.value = video.description || "";
  form.elements.visibility.value = video.visibility || "public";
  form.elements.tags.value = (video.tags || []).join(", ");
  const message = form.querySelector(".message");
  const save = form.querySelector("button[type=submit]");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = form.elements.title.value.trim();
    if (!title) {
      say(message, "Please give the video a title.");
      return;
    }
    save.disabled = true;
    say(message, "");
    try {
      const response = await api(`/videos/${video.id}`, {
        method: "PATCH",
        auth: true,
        json: {
          title,
          description: form.elements.description.value.trim(),
          visibility: form.elements.visibility.value,
          tags: parseTags(form.elements.tags.value),
        },
      });
      if (response.ok) {
        const saved = await response.json();
        link.querySelector(".card-title").textContent = saved.title;
        form.elements.tags.value = (saved.tags || []).join(", ");
        say(message, "Saved.", true);
      } else {
        say(message, await failure(response, "Could not save the changes."));
      }
    } catch (error) {
      if (error instanceof SignedOut) logInFirst();
      else say(message, "The server could not be reached.");
    }
    save.disabled = false;
  });

  const remove = item.querySelector("[data-field=delete]");
  remove.addEventListener("click", async () => {
    if (remove.dataset.armed !== "true") {
      remove.dataset.armed = "true";
      remove.textContent = "Delete for good?";
      return;
    }
    remove.disabled = true;
    try {
      const response = await api(`/videos/${video.id}`, { method: "DELETE", auth: true });
      if (response.ok || response.status === 404) {
        item.remove();
        return;
      }
      say(message, await failure(response, "Could not delete the video."));
    } catch {
      say(message, "The server could not be reached.");
    }
    remove.disabled = false;
  });
  return item;
}

async function myId() {
  const known = currentUser();
  if (known && known.id) return known.id;
  const response = await api("/users/me", { auth: true });
  if (!response.ok) throw new Error(await failure(response, "Could not tell who you are."));
  const me = await response.json();
  storeUser(me);
  return me.id;
}

async function start() {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  try {
    const videos = new PagedList({
      list: document.getElementById("my-video-list"),
      more: document.getElementById("more-my-videos"),
      empty: document.getElementById("no-my-videos"),
      path: `/users/${await myId()}/videos`,
      auth: "required",
      render: row,
    });
    await videos.load();
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(pageMessage, error.message);
  }
}

start();
