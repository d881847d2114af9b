// Small pieces the pages share: building elements (text only ever goes in as
// textContent), counts and times as the server renders them, video cards, and
// lists that grow page by page with the API's cursors.
import { SignedOut, api, errorOf, signedIn } from "./api.js";

// An element with a class, text and attributes; children appended in order.
export function el(tag, { className, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function formatCount(value) {
  return Number(value || 0).toLocaleString("en-US");
}

export function plural(count, word) {
  return `${formatCount(count)} ${word}${count === 1 ? "" : "s"}`;
}

const UNITS = [["year", 365 * 86400], ["month", 30 * 86400], ["week", 7 * 86400],
  ["day", 86400], ["hour", 3600], ["minute", 60]];

export function ago(iso) {
  const seconds = Math.floor((Date.now() - Date.parse(iso)) / 1000);
  for (const [unit, size] of UNITS) {
    if (seconds >= size) {
      const count = Math.floor(seconds / size);
      return `${count} ${unit}${count === 1 ? "" : "s"} ago`;
    }
  }
  return "just now";
}

export function timeElement(iso) {
  return el("time", { text: ago(iso), attrs: { datetime: iso, title: new Date(iso).toLocaleString() } });
}

export function formatDuration(seconds) {
  if (typeof seconds !== "number") return "";
  const total = Math.round(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

function thumb(video) {
  const box = el("span", { className: "thumb" });
  if (video.poster_url) {
    const image = el("img", {
      className: "thumb-image",
      attrs: { src: video.poster_url, alt: video.title, loading: "lazy", decoding: "async",
        width: video.width || 320, height: video.height || 180 },
    });
    image.addEventListener("error", () => {
      image.replaceWith(el("span", { className: "thumb-play", text: "\u25B6", attrs: { "aria-hidden": "true" } }));
    }, { once: true });
    box.append(image);
  } else {
    box.append(el("span", { className: "thumb-play", text: "\u25B6", attrs: { "aria-hidden": "true" } }));
  }
  if (video.duration) box.append(el("span", { className: "badge", text: formatDuration(video.duration) }));
  return box;
}

// A video card as on the home page: poster, title, author (a link to the channel), views.
export function videoCard(video, { showAuthor = true } = {}) {
  const item = el("li", { className: "card", attrs: { "data-video-id": video.id } });
  const link = el("a", { className: "card-link", attrs: { href: `/watch/${video.id}` } },
    thumb(video), el("span", { className: "card-title", text: video.title }));
  item.append(link);
  if (showAuthor) {
    item.append(el("p", { className: "meta" },
      el("a", { className: "author-link", text: video.author_name, attrs: { href: `/@${video.author_id}` } })));
  }
  item.append(el("p", { className: "meta" },
    el("span", { text: plural(video.views, "view") }), " \u00B7 ", timeElement(video.created_at)));
  return item;
}

// GET with this tab's token when it has one; a token that cannot be refreshed reads anonymously.
export async function read(path) {
  if (signedIn()) {
    try {
      return await api(path, { auth: true });
    } catch (error) {
      if (!(error instanceof SignedOut)) throw error;
    }
  }
  return api(path);
}

export async function failure(response, fallback) {
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After");
    return `Too many tries; please wait${wait ? ` ${wait} s` : " a moment"} and try again.`;
  }
  return (await errorOf(response)).message || fallback;
}

export function say(node, text, ok = false) {
  node.textContent = text;
  node.classList.toggle("ok", ok);
  node.hidden = !text;
}

// A list that shows one page of a `{items, next_cursor}` API list at a time, with a
// "More" button for the next. `render(item)` makes each list item.
export class PagedList {
  constructor({ list, more, empty, path, render, auth = "optional", onPage = () => {} }) {
    Object.assign(this, { list, more, empty, path, render, auth, onPage });
    this.cursor = null;
    this.more?.addEventListener("click", () => this.load());
  }

  url() {
    if (this.cursor === null) return this.path;
    const joiner = this.path.includes("?") ? "&" : "?";
    return `${this.path}${joiner}cursor=${encodeURIComponent(this.cursor)}`;
  }

  async fetchPage() {
    if (this.auth === "required") return api(this.url(), { auth: true });
    return read(this.url());
  }

  // Starts again from the first page.
  async reset(path = this.path) {
    this.path = path;
    this.cursor = null;
    this.list.replaceChildren();
    return this.load();
  }

  async load() {
    if (this.more) this.more.disabled = true;
    let response;
    try {
      response = await this.fetchPage();
    } catch (error) {
      if (this.more) this.more.disabled = false;
      throw error;
    }
    if (!response.ok) {
      if (this.more) this.more.disabled = false;
      throw new Error(await failure(response, `Loading failed (HTTP ${response.status}).`));
    }
    const page = await response.json();
    for (const item of page.items) this.list.append(this.render(item));
    this.cursor = page.next_cursor || null;
    if (this.more) {
      this.more.hidden = this.cursor === null;
      this.more.disabled = false;
    }
    if (this.empty) this.empty.hidden = this.list.childElementCount > 0;
    this.list.dataset.loaded = "true";
    this.onPage(page);
    return page;
  }
}
