// The live rooms page: the open rooms (GET /rooms, page by page) and, for a signed-in
// user, a form that starts one (POST /rooms) and goes to it.
import { SignedOut, api, logInFirst } from "./api.js";
import { PagedList, el, failure, formatCount, say, timeElement } from "./ui.js";

const listMessage = document.getElementById("rooms-message");

function inRoom(count) {
  if (count === 0) return "nobody in it yet";
  return `${formatCount(count)} ${count === 1 ? "person" : "people"} in it`;
}

function roomItem(room) {
  const item = el("li", { className: "room-item", attrs: { "data-room-id": room.id } });
  item.append(el("a", { className: "room-link", text: room.name, attrs: { href: `/rooms/${room.id}` } }));
  const meta = el("p", { className: "meta" }, "Started ", timeElement(room.created_at));
  const count = Array.isArray(room.participants) ? room.participants.length : room.participant_count;
  if (typeof count === "number") meta.append(" \u00B7 ", inRoom(count));
  item.append(meta);
  return item;
}

const rooms = new PagedList({
  list: document.getElementById("room-list"),
  more: document.getElementById("more-rooms"),
  empty: document.getElementById("no-rooms"),
  path: "/rooms",
  render: roomItem,
});
rooms.load().catch((error) => say(listMessage, error.message || "The rooms could not be loaded."));

const form = document.getElementById("room-form");
const formMessage = document.getElementById("room-form-message");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = form.elements.name.value.trim();
  if (!name) {
    say(formMessage, "Please give the room a name.");
    return;
  }
  const body = { name };
  const most = form.elements.max_participants.value.trim();
  if (most) body.max_participants = Number(most);
  const submit = form.querySelector("button[type=submit]");
  submit.disabled = true;
  say(formMessage, "");
  try {
    const response = await api("/rooms", { method: "POST", json: body, auth: true });
    if (!response.ok) {
      say(formMessage, await failure(response, `The room could not be started (HTTP ${response.status}).`));
      return;
    }
    const room = await response.json();
    location.assign(`/rooms/${room.id}`);
  } catch (error) {
    if (error instanceof SignedOut) {
      logInFirst();
      return;
    }
    say(formMessage, "The server could not be reached; please try again.");
  } finally {
    submit.disabled = false;
  }
});
