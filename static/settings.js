// Profile settings: name and bio (PATCH /users/me) and a picture (PUT
// /users/me/avatar with the image as the body; the server re-encodes it).
import { SignedOut, api, logInFirst, signedIn, storeUser } from "./api.js";
import { el, failure, say } from "./ui.js";

const profileForm = document.getElementById("profile-form");
const profileMessage = document.getElementById("profile-message");
const avatarForm = document.getElementById("avatar-form");
const avatarMessage = document.getElementById("avatar-message");
const preview = document.getElementById("avatar-preview");
// More than any picture needs; the server has the final word.
const MAX_AVATAR_BYTES = 10 * 1024 * 1024;

function showAvatar(me) {
  if (me.avatar_url) {
    preview.replaceChildren(el("img", { className: "avatar-image", attrs: { src: me.avatar_url, alt: "" } }));
  } else {
    preview.replaceChildren(el("span", { className: "avatar-letter", text: (me.name || "?").slice(0, 1).toUpperCase() }));
  }
}

function fill(me) {
  profileForm.elements.name.value = me.name || "";
  profileForm.elements.bio.value = me.bio || "";
  document.getElementById("my-channel-link").href = `/@${me.id}`;
  showAvatar(me);
}

async function guarded(message, work) {
  try {
    await work();
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(message, "The server could not be reached.");
  }
}

profileForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = profileForm.elements.name.value.trim();
  if (!name) {
    say(profileMessage, "Please enter a name.");
    return;
  }
  const submit = profileForm.querySelector("button[type=submit]");
  submit.disabled = true;
  guarded(profileMessage, async () => {
    const response = await api("/users/me", {
      method: "PATCH", auth: true, json: { name, bio: profileForm.elements.bio.value.trim() },
    });
    if (response.ok) {
      const me = await response.json();
      storeUser(me);
      fill(me);
      document.getElementById("nav-user").textContent = me.name;
      say(profileMessage, "Saved.", true);
    } else {
      say(profileMessage, await failure(response, "Could not save your profile."));
    }
  }).finally(() => { submit.disabled = false; });
});

avatarForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const file = avatarForm.elements.avatar.files[0];
  if (!file) {
    say(avatarMessage, "Please choose a picture.");
    return;
  }
  if (file.size > MAX_AVATAR_BYTES) {
    say(avatarMessage, "That picture is too large.");
    return;
  }
  const submit = avatarForm.querySelector("button[type=submit]");
  submit.disabled = true;
  guarded(avatarMessage, async () => {
    const response = await api("/users/me/avatar", {
      method: "PUT", auth: true, body: file, contentType: file.type || "application/octet-stream",
    });
    if (response.ok) {
      const body = response.status === 204 ? null : await response.json().catch(() => null);
      if (body && body.avatar_url) showAvatar(body);
      else await start();
      avatarForm.reset();
      say(avatarMessage, "Your new picture is saved.", true);
    } else {
      say(avatarMessage, await failure(response, "Could not use that picture."));
    }
  }).finally(() => { submit.disabled = false; });
});

async function start() {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  await guarded(profileMessage, async () => {
    const response = await api("/users/me", { auth: true });
    if (response.ok) fill(await response.json());
    else say(profileMessage, await failure(response, "Could not load your profile."));
  });
}

start();
