// The watch page: the player (or, until the video is ready, what is happening to
// it), the live viewer widget, and progress reports while playing so that real
// watching counts as a view.
import { accessToken, api, signedIn } from "./api.js";
import { LiveSocket } from "./live.js";
import { PlaybackProblems } from "./playback.js";
import { fetchVideo, waitWhileProcessing } from "./processing.js";
import { Storyboard } from "./storyboard.js";

// The server expects a report at least every 5 s while playing.
const REPORT_EVERY = 4000;

const article = document.querySelector("[data-video-id]");
const videoId = article.dataset.videoId;
const player = document.getElementById("player");
const frame = document.getElementById("player-frame");
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

// --- the player and the video's state -------------------------------------

function startStoryboard(url) {
  if (url) new Storyboard(player, frame, url);
}

// After a media error: a deleted video, or one being processed again, says so.
async function explainError() {
  const response = await fetchVideo(videoId);
  if (response.status === 404) return "This video was deleted.";
  if (!response.ok) return null;
  const video = await response.json();
  if (video.status === "processing") {
    return "This video is being processed again. Reload the page in a little while.";
  }
  return null;
}

function showFailure(video) {
  document.getElementById("processing")?.remove();
  document.getElementById("failed").hidden = false;
  article.dataset.status = "failed";
  // Only the author's copy of the record carries the reason.
  if (video && video.failure_reason) {
    const reason = document.getElementById("failure-reason");
    reason.textContent = `Why: ${video.failure_reason}`;
    reason.hidden = false;
  }
}

function showProgress(video) {
  const bar = document.getElementById("processing-progress");
  const percent = document.getElementById("processing-percent");
  if (typeof video.progress === "number") {
    bar.value = video.progress;
    percent.textContent = `${Math.round(video.progress * 100)}%`;
  }
}

function becomeReady(video) {
  document.getElementById("processing")?.remove();
  article.dataset.status = "ready";
  if (video.poster_url) player.poster = video.poster_url;
  player.src = video.stream_url;
  player.hidden = false;
  player.load();
  startStoryboard(video.storyboard_url);
}

function gone() {
  document.getElementById("processing")?.remove();
  const panel = document.getElementById("failed");
  panel.querySelector(".panel-title").textContent = "This video was deleted.";
  panel.hidden = false;
}

new PlaybackProblems(player, { explain: explainError });

switch (article.dataset.status) {
  case "ready":
    startStoryboard(player.dataset.storyboard);
    break;
  case "processing":
    waitWhileProcessing(videoId, {
      onProgress: showProgress,
      onReady: becomeReady,
      onFailed: showFailure,
      onGone: gone,
    });
    break;
  case "failed":
    fetchVideo(videoId)
      .then((response) => (response.ok ? response.json() : null))
      .then(showFailure, () => {});
    break;
  default:
    break;
}
