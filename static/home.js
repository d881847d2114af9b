// The home page: posters that fail to load fall back to the plain card, and a
// signed-in author sees their own uploads that are still processing or failed
// (nobody else may, and only this tab knows who is signed in).
import { SignedOut, api, signedIn } from "./api.js";
import { PagedList, say, videoCard } from "./ui.js";

const REFRESH_EVERY = 5000;
const MAX_BACKOFF = 60000;

function dropBrokenPoster(image) {
  image.hidden = true;
  const play = document.createElement("span");
  play.className = "thumb-play";
  play.setAttribute("aria-hidden", "true");
  play.textContent = "\u25B6";
  image.after(play);
}

for (const image of document.querySelectorAll(".thumb-image")) {
  // A lazy image may have failed before this module ran.
  if (image.complete && image.naturalWidth === 0 && image.currentSrc) dropBrokenPoster(image);
  else image.addEventListener("error", () => dropBrokenPoster(image), { once: true });
}

const NOTES = {
  processing: "Only you can see this until it is ready.",
  failed: "Only you can see this. Open it to see why it failed.",
  ready: "Ready: everyone can watch it now.",
};

const section = document.getElementById("my-uploads");
const list = document.getElementById("my-uploads-list");
const cards = new Map();

function listedAbove(id) {
  return document.querySelector(`#videos a[href="/watch/${id}"]`) !== null;
}

function statusText(video) {
  if (video.status === "failed") return "Failed";
  if (video.status === "ready") return "Ready";
  const progress = typeof video.progress === "number"
    ? ` ${Math.round(video.progress * 100)}%` : "";
  return `Processing…${progress}`;
}

function card(video) {
  const item = document.createElement("li");
  item.className = "card";
  const link = document.createElement("a");
  link.className = "card-link";
  link.href = `/watch/${video.id}`;
  const thumb = document.createElement("span");
  thumb.className = "thumb";
  const play = document.createElement("span");
  play.className = "thumb-play";
  play.setAttribute("aria-hidden", "true");
  play.textContent = "\u25B6";
  const badge = document.createElement("span");
  badge.className = "badge status";
  thumb.append(play, badge);
  const title = document.createElement("span");
  title.className = "card-title";
  title.textContent = video.title;
  link.append(thumb, title);
  const note = document.createElement("p");
  note.className = "meta";
  item.append(link, note);
  return { item, thumb, badge, note };
}

function paint(entry, video) {
  entry.badge.textContent = statusText(video);
  entry.badge.dataset.status = video.status;
  entry.note.textContent = NOTES[video.status] || NOTES.processing;
  if (video.status === "ready") {
    if (video.poster_url && !entry.thumb.querySelector("img")) {
      const image = document.createElement("img");
      image.className = "thumb-image";
      image.src = video.poster_url;
      image.alt = video.title;
      image.width = video.width || 320;
      image.height = video.height || 180;
      image.addEventListener("error", () => { image.hidden = true; }, { once: true });
      entry.thumb.querySelector(".thumb-play").replaceWith(image);
    }
  }
}

async function mine() {
  try {
    const response = await api("/videos?limit=100", { auth: true });
    if (!response.ok) return null;
    return (await response.json()).items;
  } catch (error) {
    if (error instanceof SignedOut) return [];
    return null;
  }
}

async function refresh() {
  const items = await mine();
  if (items === null) return null;
  let processing = false;
  for (const video of items) {
    const known = cards.get(video.id);
    if (known === undefined && (video.status === "ready" || listedAbove(video.id))) continue;
    const entry = known || card(video);
    if (known === undefined) {
      cards.set(video.id, entry);
      list.append(entry.item);
    }
    paint(entry, video);
    processing ||= video.status === "processing";
  }
  section.hidden = cards.size === 0;
  return processing;
}

async function follow() {
  let delay = REFRESH_EVERY;
  for (;;) {
    const processing = await refresh();
    if (processing === false) return;
    delay = processing === null ? Math.min(MAX_BACKOFF, delay * 2) : REFRESH_EVERY;
    await new Promise((resolve) => { setTimeout(resolve, delay); });
  }
}

if (section && signedIn()) follow();

// --- the feed tabs: newest (rendered with the page), trending and following ---

const tabs = document.getElementById("feed-tabs");
const feeds = new Map();

function feedOf(panel) {
  if (!feeds.has(panel.id)) {
    const list = new PagedList({
      list: panel.querySelector(".feed-list"),
      more: panel.querySelector(".feed-more"),
      empty: panel.querySelector(".feed-empty"),
      path: panel.dataset.feed,
      auth: panel.dataset.auth === "required" ? "required" : "optional",
      render: (video) => videoCard(video),
    });
    feeds.set(panel.id, list);
    list.load().catch((error) => {
      feeds.delete(panel.id);
      say(panel.querySelector(".message"), error instanceof SignedOut
        ? "Log in to see the videos of the channels you subscribe to." : error.message);
    });
  }
}

function choose(tab) {
  for (const other of tabs.querySelectorAll("[role=tab]")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
  }
  const panel = document.getElementById(tab.getAttribute("aria-controls"));
  if (panel.dataset.feed) feedOf(panel);
  const name = tab.id.replace("tab-", "");
  history.replaceState(null, "", name === "newest" ? location.pathname : `#${name}`);
}

if (tabs) {
  tabs.hidden = false;
  for (const tab of tabs.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => choose(tab));
  }
  const wanted = document.getElementById(`tab-${location.hash.slice(1)}`);
  if (wanted && (wanted.id !== "tab-following" || signedIn())) choose(wanted);
}
