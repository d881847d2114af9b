// A video's record as this viewer may see it, and waiting for a video that is
// still being processed.
import { SignedOut, api, signedIn } from "./api.js";

const POLL_EVERY = 2000;
const MAX_BACKOFF = 30000;

// GET /videos/{id}, with this tab's token when it has one: only the author is
// told why a video failed. A token that cannot be refreshed reads anonymously.
export async function fetchVideo(videoId) {
  const path = `/videos/${videoId}`;
  if (signedIn()) {
    try {
      return await api(path, { auth: true });
    } catch (error) {
      if (!(error instanceof SignedOut)) throw error;
    }
  }
  return api(path);
}

function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

function visible() {
  if (!document.hidden) return Promise.resolve();
  return new Promise((resolve) => {
    document.addEventListener("visibilitychange", function seen() {
      if (document.hidden) return;
      document.removeEventListener("visibilitychange", seen);
      resolve();
    });
  });
}

// Polls until the video is ready, failed or gone, reporting progress meanwhile.
// Errors (a server restarting, a dropped link) back off, jittered, up to 30 s.
export async function waitWhileProcessing(videoId, { onProgress, onReady, onFailed, onGone }) {
  let delay = POLL_EVERY;
  for (;;) {
    await sleep(delay);
    await visible();
    let video = null;
    try {
      const response = await fetchVideo(videoId);
      if (response.status === 404) {
        onGone();
        return;
      }
      if (response.ok) video = await response.json();
    } catch {
      // Unreachable for now: tried again below, less often.
    }
    if (video === null) {
      const ceiling = Math.min(MAX_BACKOFF, delay * 2);
      delay = ceiling / 2 + Math.random() * (ceiling / 2);
      continue;
    }
    delay = POLL_EVERY;
    if (video.status === "ready") {
      onReady(video);
      return;
    }
    if (video.status === "failed") {
      onFailed(video);
      return;
    }
    onProgress(video);
  }
}
