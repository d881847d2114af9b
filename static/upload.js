// Upload with XMLHttpRequest, the one browser API that reports upload progress.
import { SignedOut, accessToken, refresh, signedIn } from "./api.js";

const form = document.getElementById("upload-form");
const message = document.getElementById("form-message");
const submit = form.querySelector("button[type=submit]");
const status = document.getElementById("upload-status");
const bar = document.getElementById("upload-progress");
const percent = document.getElementById("upload-percent");
const maxBytes = Number(form.dataset.maxBytes);

if (!signedIn()) location.replace("/login?next=/upload");

function show(text, ok = false) {
  message.textContent = text;
  message.classList.toggle("ok", ok);
  message.hidden = !text;
}

function progress(fraction) {
  const value = Math.round(fraction * 100);
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

function send(data, token) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/videos/upload");
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => resolve({ status: xhr.status, body: xhr.response }));
    xhr.addEventListener("error", () => reject(new TypeError("network error")));
    xhr.send(data);
  });
}

function explain(result) {
  const error = (result.body && result.body.error) || {};
  switch (result.status) {
    case 413: return tooLarge();
    case 415: return "That file is not a video we can play. Try MP4, WebM, MOV, Matroska or Ogg.";
    case 422: return error.message || "Please check the form.";
    default: return error.message || `The upload failed (HTTP ${result.status}).`;
  }
}

async function upload(data) {
  let result = await send(data, await accessToken());
  if (result.status === 401 && result.body?.error?.code === "invalid_token") {
    await refresh();
    result = await send(data, await accessToken());
  }
  return result;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const file = form.elements.file.files[0];
  if (!String(data.get("title") || "").trim()) return show("Please give the video a title.");
  if (!file) return show("Please choose a video file.");
  if (file.size === 0) return show("That file is empty.");
  // Refused here rather than after minutes of uploading.
  if (file.size > maxBytes) return show(tooLarge());

  show("");
  submit.disabled = true;
  status.hidden = false;
  progress(0);
  try {
    const result = await upload(data);
    if (result.status === 201) {
      progress(1);
      show("Uploaded. Opening the video…", true);
      location.assign(`/watch/${result.body.id}`);
      return;
    }
    if (result.status === 401) throw new SignedOut("session expired");
    show(explain(result));
  } catch (error) {
    if (error instanceof SignedOut) {
      location.assign("/login?next=/upload");
      return;
    }
    show(error instanceof TypeError
      ? "The connection was lost during the upload. Please try again."
      : error.message);
  }
  submit.disabled = false;
  status.hidden = true;
});
