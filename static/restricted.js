// The page of a video nobody else may see (private, removed, or its author banned).
// Its author, signed in, gets the video from GET /videos/{id}: a private one plays
// from the signed stream_url in that answer, and a removed one says why.
import { currentUser } from "./api.js";
import { fetchVideo } from "./processing.js";
import { PlaybackProblems } from "./playback.js";

const article = document.querySelector("[data-video-id]");
const videoId = article.dataset.videoId;
const player = document.getElementById("player");
const panel = document.getElementById("restricted");
const panelTitle = document.getElementById("restricted-title");
const detail = document.getElementById("restricted-detail");
const title = document.getElementById("watch-title");
const note = document.getElementById("owner-note");
const description = document.getElementById("watch-description");

function show(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function showAsOwner(video) {
  show(title, video.title);
  show(description, video.description || "");
  document.title = `${video.title} · Tubelet`;
  if (video.removed) {
    show(detail, video.removed_reason ? `Why: ${video.removed_reason}` : "");
    show(note, "Only you can see this page.");
    return;
  }
  if (video.status !== "ready") {
    panelTitle.textContent = video.status === "failed" ? "This video could not be processed."
      : "This video is still being processed; reload the page in a little while.";
    show(detail, video.failure_reason ? `Why: ${video.failure_reason}` : "");
    show(note, "Private: only you can see this video.");
    return;
  }
  show(note, video.visibility === "private" ? "Private: only you can see this video." : "");
  panel.hidden = true;
  if (video.poster_url) player.poster = video.poster_url;
  // Signed and short-lived: a <video> element cannot send the Bearer token.
  player.src = video.stream_url;
  player.hidden = false;
  new PlaybackProblems(player);
}

async function start() {
  const me = currentUser();
  if (me === null) return;
  let response;
  try {
    response = await fetchVideo(videoId);
  } catch {
    return;
  }
  if (!response.ok) return;
  const video = await response.json();
  // Anybody else allowed to read the record is told no more than the page says.
  if (video.author_id === me.id) showAsOwner(video);
}

start();
