// Resumable uploads with tus-js-client (vendored: window.tus) to the server's /uploads.
// A dropped connection is retried where it stopped; after a reload, choosing the same
// file again resumes it (tus-js-client keeps each upload's URL in localStorage, keyed
// by the file's name, type, size and modification time).
import { SignedOut, accessToken, refresh, signedIn } from "./api.js";

const form = document.getElementById("upload-form");
const message = document.getElementById("form-message");
const submit = form.querySelector("button[type=submit]");
const status = document.getElementById("upload-status");
const bar = document.getElementById("upload-progress");
const percent = document.getElementById("upload-percent");
const resumeNote = document.getElementById("upload-resume");
const maxBytes = Number(form.dataset.maxBytes);
const ENDPOINT = "/uploads";
// Waits between attempts after a failure, in ms: about two minutes in all, longer
// than a server's upload lease (30 s) outlives a crashed server.
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
// Metadata travels base64-encoded in one header, which servers cap at about 8 KB.
const MAX_METADATA_BYTES = 6000;

if (!signedIn()) location.replace("/login?next=/upload");

function show(text, ok = false) {
  message.textContent = text;
  message.classList.toggle("ok", ok);
  message.hidden = !text;
}

function progress(fraction) {
  const value = Math.floor(fraction * 100);
  bar.value = value;
  percent.textContent = `${value}%`;
}

function formatBytes(bytes) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

function tooLarge() {
  return `That file is too large: the limit is ${formatBytes(maxBytes)}.`;
}

function errorBody(response) {
  try {
    return JSON.parse(response.getBody() || "{}").error || {};
  } catch {
    return {};
  }
}

function explain(error) {
  const response = error.originalResponse;
  if (!response) return "The connection was lost and the upload could not go on. "
    + "Choose the same file again to resume it.";
  const status = response.getStatus();
  const detail = errorBody(response);
  switch (status) {
    case 413: return tooLarge();
    case 415: return "That file is not a video we can play. Try MP4, WebM, MOV, Matroska or Ogg.";
    case 422: return detail.message || "Please check the form.";
    default: return detail.message || `The upload failed (HTTP ${status}).`;
  }
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

// The earlier, unfinished upload of this file, if this browser started one.
async function previousUpload(file) {
  const probe = new tus.Upload(file, { endpoint: ENDPOINT });
  const previous = await probe.findPreviousUploads();
  previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime));
  return previous[0] || null;
}

form.elements.file.addEventListener("change", async () => {
  const file = form.elements.file.files[0];
  resumeNote.hidden = true;
  if (!file) return;
  const previous = await previousUpload(file);
  if (!previous) return;
  const title = previous.metadata && previous.metadata.title;
  if (title && !form.elements.title.value.trim()) form.elements.title.value = title;
  resumeNote.textContent = "This file was partly uploaded before: the upload will resume "
    + "where it stopped.";
  resumeNote.hidden = false;
});

function start(file, title, description) {
  return new Promise((resolve, reject) => {
    // A token that expired mid-upload is refreshed before the next attempt.
    let stale = false;
    const upload = new tus.Upload(file, {
      endpoint: ENDPOINT,
      chunkSize: Number(form.dataset.chunkBytes) || Infinity,
      retryDelays: RETRY_DELAYS,
      removeFingerprintOnSuccess: true,
      metadata: { title, description, filename: file.name, filetype: file.type },
      async onBeforeRequest(request) {
        if (stale) {
          stale = false;
          await refresh();
        }
        request.setHeader("Authorization", `Bearer ${await accessToken()}`);
      },
      onShouldRetry(error, attempt) {
        const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
        if (status === 401) {
          stale = errorBody(error.originalResponse).code === "invalid_token";
          return stale && attempt === 0;
        }
        // Network failures, 5xx, 409 (offset moved on) and 423 (still locked) pass.
        return !(status >= 400 && status < 500) || status === 409 || status === 423;
      },
      onProgress(sent, total) {
        progress(total ? sent / total : 0);
      },
      onSuccess({ lastResponse }) {
        resolve(lastResponse.getHeader("Tubelet-Video-Id"));
      },
      onError: reject,
    });
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) {
        previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime));
        upload.resumeFromPreviousUpload(previous[0]);
        show("Resuming the earlier upload of this file…", true);
      }
      upload.start();
    }, reject);
  });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = form.elements.file.files[0];
  const title = String(form.elements.title.value || "").trim();
  const description = String(form.elements.description.value || "").trim();
  if (!title) return show("Please give the video a title.");
  if (!file) return show("Please choose a video file.");
  if (file.size === 0) return show("That file is empty.");
  // Refused here rather than after minutes of uploading.
  if (file.size > maxBytes) return show(tooLarge());
  if ((utf8Length(title) + utf8Length(description) + utf8Length(file.name)) * 4 / 3
      > MAX_METADATA_BYTES) {
    return show("The description is too long for an upload; please shorten it.");
  }

  show("");
  submit.disabled = true;
  status.hidden = false;
  progress(0);
  try {
    await accessToken();
    const videoId = await start(file, title, description);
    progress(1);
    if (videoId) {
      const link = document.createElement("a");
      link.href = `/watch/${videoId}`;
      link.textContent = "Open the video";
      show("Uploaded. It is being processed and will play shortly. ", true);
      message.append(link);
      location.assign(link.href);
    } else {
      show("Uploaded.", true);
    }
    return;
  } catch (error) {
    if (error instanceof SignedOut) {
      location.assign("/login?next=/upload");
      return;
    }
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    if (status === 401) {
      location.assign("/login?next=/upload");
      return;
    }
    show(explain(error));
  }
  submit.disabled = false;
  status.hidden = true;
});
