// The watch page: the live viewer widget, and progress reports while playing
// so that real watching counts as a view.
import { accessToken, api, signedIn } from "./api.js";
import { LiveSocket } from "./live.js";

// The server expects a report at least every 5 s while playing.
const REPORT_EVERY = 4000;

const article = document.querySelector("[data-video-id]");
const videoId = article.dataset.videoId;
const player = document.getElementById("player");
const widget = document.getElementById("live");
const viewers = document.getElementById("active-viewers");
const views = document.getElementById("views");
const viewsUnit = document.getElementById("views-unit");
// One id per page view: it names this playback session when reports go over HTTP.
const session = Array.from(crypto.getRandomValues(new Uint8Array(16)),
  (b) => b.toString(16).padStart(2, "0")).join("");

function show(message) {
  if (Number.isInteger(message.active_viewers)) viewers.textContent = String(message.active_viewers);
  if (Number.isInteger(message.views)) {
    views.textContent = String(message.views);
    viewsUnit.textContent = message.views === 1 ? "view" : "views";
  }
}

const socket = new LiveSocket(`/videos/${videoId}/active-viewers`, {
  onMessage: show,
  onState: (state) => { widget.dataset.state = state; },
  onOpen: async () => {
    // Signed-in viewers are told apart by account rather than by address.
    if (signedIn()) {
      try {
        socket.send({ type: "auth", token: await accessToken() });
      } catch {
        // Watching anonymously is fine.
      }
    }
    // After a reconnect the server hears straight away where we are.
    if (playing()) report();
  },
});

function playing() {
  return !player.paused && !player.ended;
}

function report() {
  const position = Number.isFinite(player.currentTime) ? player.currentTime : 0;
  const message = { type: "progress", position, playing: playing() };
  if (socket.send(message)) return;
  // No socket right now: the HTTP endpoint keeps the view honest meanwhile.
  api(`/videos/${videoId}/views`, {
    method: "POST",
    json: { position, playing: message.playing, session },
    auth: signedIn(),
  }).catch(() => {});
}

let ticker = null;

function startReporting() {
  report();
  if (ticker === null) ticker = setInterval(report, REPORT_EVERY);
}

function stopReporting() {
  if (ticker !== null) {
    clearInterval(ticker);
    ticker = null;
  }
  report();
}

player.addEventListener("playing", startReporting);
player.addEventListener("pause", stopReporting);
player.addEventListener("ended", stopReporting);
player.addEventListener("seeked", () => { if (playing()) report(); });
window.addEventListener("pagehide", () => {
  if (ticker !== null) stopReporting();
  socket.close();
});
window.addEventListener("pageshow", (event) => { if (event.persisted) socket.reopen(); });
