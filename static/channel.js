// A channel: its avatar, a subscribe button (with the count it answers), and the
// channel's videos page by page (its owner, signed in, also sees their private,
// unlisted, processing and removed ones).
import { SignedOut, api, currentUser, logInFirst, signedIn } from "./api.js";
import { wireReportButtons } from "./report.js";
import { PagedList, el, failure, formatCount, say, videoCard } from "./ui.js";

const root = document.getElementById("channel");
const userId = Number(root.dataset.userId);
const subscribe = document.getElementById("subscribe");
const subscribers = document.getElementById("subscriber-count");
const message = document.getElementById("channel-message");
const me = currentUser();
const own = me !== null && me.id === userId;
// GET /users/me/subscriptions is paged; this many pages are looked through at most.
const SUBSCRIPTION_PAGES = 10;

const VISIBILITY_NOTES = { private: "Private", unlisted: "Unlisted" };

function card(video) {
  const item = videoCard(video, { showAuthor: false });
  const notes = [];
  if (video.removed) notes.push("Removed by a moderator");
  else if (video.status && video.status !== "ready") notes.push(video.status === "failed" ? "Failed" : "Processing");
  if (VISIBILITY_NOTES[video.visibility]) notes.push(VISIBILITY_NOTES[video.visibility]);
  if (notes.length) item.append(el("p", { className: "meta owner-note", text: notes.join(" \u00B7 ") }));
  return item;
}

function showSubscribed(subscribed) {
  subscribe.setAttribute("aria-pressed", String(subscribed));
  subscribe.textContent = subscribed ? "Subscribed" : "Subscribe";
  subscribe.classList.toggle("ghost", subscribed);
}

async function alreadySubscribed() {
  let cursor = null;
  for (let page = 0; page < SUBSCRIPTION_PAGES; page += 1) {
    const query = cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`;
    const response = await api(`/users/me/subscriptions?limit=100${query}`, { auth: true });
    if (!response.ok) return false;
    const body = await response.json();
    if (body.items.some((item) => (item.id ?? item.channel_id ?? item.user_id) === userId)) return true;
    cursor = body.next_cursor;
    if (!cursor) return false;
  }
  return false;
}

async function toggle() {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  const subscribed = subscribe.getAttribute("aria-pressed") === "true";
  subscribe.disabled = true;
  say(message, "");
  try {
    const response = await api(`/users/${userId}/subscription`,
      { method: subscribed ? "DELETE" : "PUT", auth: true });
    if (response.ok) {
      const body = await response.json();
      showSubscribed(body.subscribed);
      if (Number.isInteger(body.subscriber_count)) subscribers.textContent = formatCount(body.subscriber_count);
    } else {
      say(message, await failure(response, "That did not work; please try again."));
    }
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(message, "The server could not be reached.");
  } finally {
    subscribe.disabled = false;
  }
}

async function start() {
  if (own) {
    document.getElementById("edit-profile").hidden = false;
  } else {
    subscribe.hidden = false;
    document.getElementById("report-user").hidden = false;
    wireReportButtons(root);
    subscribe.addEventListener("click", toggle);
    if (signedIn()) {
      try {
        showSubscribed(await alreadySubscribed());
      } catch {
        // Shown as not subscribed; pressing it tells the truth.
      }
    }
  }
  const videos = new PagedList({
    list: document.getElementById("channel-videos"),
    more: document.getElementById("more-videos"),
    empty: document.getElementById("no-videos"),
    path: `/users/${userId}/videos`,
    render: card,
  });
  try {
    await videos.load();
  } catch (error) {
    say(message, error.message);
  }
}

start();
