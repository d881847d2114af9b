// A live room: who is in it, joining it (POST /rooms/{id}/join), the video and sound
// through LiveKit's own client (static/vendor/livekit-client) with the token the
// API issued, and the chat beside it (history from GET /rooms/{id}/messages, live
// over the WebSocket /rooms/{id}/chat). The chat needs only our server: when
// LiveKit is not configured or cannot be reached, the chat still works.
import { SignedOut, api, currentUser, signedIn } from "./api.js";
import { el, failure, read, say, timeElement } from "./ui.js";

const root = document.getElementById("room");
const roomId = root.dataset.roomId;
const $ = (id) => document.getElementById(id);
const nameHeading = $("room-name");
const statusLine = $("room-status");
const joinButton = $("join");
const leaveButton = $("leave");
const endButton = $("end-room");
const guestName = $("guest-name");
const cameraButton = $("toggle-camera");
const microphoneButton = $("toggle-microphone");
const screenButton = $("toggle-screen");
const startAudioButton = $("start-audio");
const mediaMessage = $("media-message");
const tileList = $("tiles");
const people = $("people");
const nobody = $("nobody");
const chatList = $("chat-list");
const chatHint = $("chat-hint");
const chatForm = $("chat-form");
const chatBody = $("chat-body");
const chatMessage = $("chat-message");
const olderButton = $("older-messages");

const STAFF = new Set(["moderator", "admin"]);
let room = null; // GET /rooms/{id}
let chat = null; // ChatSocket while joined
let media = null; // LivekitClient.Room while connected or connecting

// --- the room ---------------------------------------------------------------

function showStatus(text, status) {
  statusLine.textContent = text;
  statusLine.dataset.status = status;
}

function showPeople(list) {
  people.replaceChildren(...list.map((person) => el("li", { className: "person" },
    el("span", { className: "person-name", text: person.name || person.identity }),
    " ", el("span", { className: "hint" }, "joined ", timeElement(person.joined_at)))));
  nobody.hidden = list.length > 0;
}

function showRoom(next) {
  room = next;
  nameHeading.textContent = room.name;
  document.title = `${room.name} \u00B7 Tubelet`;
  const ended = room.status !== "active";
  showStatus(ended ? "This room has ended." : "Open", ended ? "ended" : "active");
  showPeople(Array.isArray(room.participants) ? room.participants : []);
  const me = currentUser();
  endButton.hidden = ended || !me || (me.id !== room.owner_id && !STAFF.has(me.role));
  if (ended) {
    joinButton.disabled = true;
    endChat("The room has ended; its chat is kept as it was.");
  } else if (!chat) {
    joinButton.disabled = false;
  }
}

async function loadRoom() {
  let response;
  try {
    response = await read(`/rooms/${roomId}`);
  } catch {
    showStatus("The server could not be reached; reload to try again.", "error");
    return;
  }
  if (response.status === 404) {
    showStatus("There is no such room.", "missing");
    return;
  }
  if (!response.ok) {
    showStatus(await failure(response, `The room could not be loaded (HTTP ${response.status}).`), "error");
    return;
  }
  showRoom(await response.json());
}

// The participants list comes from LiveKit's webhooks, a moment after the media
// itself says somebody came or went.
let peopleTimer = null;
function refreshPeopleSoon() {
  clearTimeout(peopleTimer);
  peopleTimer = setTimeout(loadRoom, 1500);
}

// --- joining ----------------------------------------------------------------

async function askToJoin() {
  const path = `/rooms/${roomId}/join`;
  if (signedIn()) {
    try {
      return await api(path, { method: "POST", auth: true });
    } catch (error) {
      // A session that cannot be refreshed joins as a guest, if guests may.
      if (!(error instanceof SignedOut)) throw error;
    }
  }
  const name = guestName.value.trim();
  return api(path, { method: "POST", json: name ? { name } : {} });
}

async function join() {
  joinButton.disabled = true;
  say(mediaMessage, "");
  let response;
  try {
    response = await askToJoin();
  } catch {
    say(mediaMessage, "The server could not be reached; please try again.");
    joinButton.disabled = false;
    return;
  }
  if (!response.ok) {
    const why = response.status === 401 && !signedIn()
      ? "Please log in to join this room."
      : await failure(response, `Joining failed (HTTP ${response.status}).`);
    say(mediaMessage, why);
    joinButton.disabled = response.status === 409;
    if (response.status === 409) loadRoom();
    return;
  }
  const grant = await response.json();
  joinButton.hidden = true;
  guestName.closest("label").hidden = true;
  leaveButton.hidden = false;
  openChat(grant.token);
  connectMedia(grant);
}

async function leave() {
  leaveButton.hidden = true;
  closeChat();
  const leaving = media;
  media = null;
  if (leaving) await leaving.disconnect();
  clearTiles();
  updateButtons();
  joinButton.hidden = false;
  joinButton.disabled = !room || room.status !== "active";
  guestName.closest("label").hidden = false;
}

async function endRoom() {
  endButton.disabled = true;
  try {
    const response = await api(`/rooms/${roomId}/end`, { method: "POST", auth: true });
    if (!response.ok) {
      say(mediaMessage, await failure(response, `The room could not be ended (HTTP ${response.status}).`));
      return;
    }
    await leave();
    await loadRoom();
  } catch {
    say(mediaMessage, "The server could not be reached; please try again.");
  } finally {
    endButton.disabled = false;
  }
}

// --- video and sound ----------------------------------------------------------

const tiles = new Map(); // identity -> <li>
const established = new WeakSet(); // LiveKit rooms that did connect

function tileFor(participant, local = false) {
  let tile = tiles.get(participant.identity);
  if (!tile) {
    const name = participant.name || participant.identity;
    tile = el("li", { className: "tile", attrs: { "data-identity": participant.identity, "data-local": local } },
      el("div", { className: "tile-media" }),
      el("p", { className: "tile-name", text: local ? `${name} (you)` : name }));
    tiles.set(participant.identity, tile);
    tileList.append(tile);
  }
  return tile;
}

function removeTile(participant) {
  const tile = tiles.get(participant.identity);
  if (!tile) return;
  for (const publication of participant.trackPublications.values()) {
    publication.track?.detach().forEach((node) => node.remove());
  }
  tile.remove();
  tiles.delete(participant.identity);
}

function clearTiles() {
  for (const tile of tiles.values()) tile.remove();
  tiles.clear();
}

function attachTrack(track, participant, local = false) {
  // Our own microphone is never played back to us.
  if (local && track.kind !== "video") return;
  if (track.attachedElements.length > 0) return;
  const node = track.attach();
  node.classList.add(`tile-${track.kind}`);
  if (track.source === "screen_share") node.classList.add("tile-screen");
  tileFor(participant, local).querySelector(".tile-media").append(node);
}

function detachTrack(track) {
  track?.detach().forEach((node) => node.remove());
}

function updateButtons() {
  const me = media?.localParticipant;
  const connected = media !== null && media.state === "connected";
  const publish = connected && Boolean(me.permissions?.canPublish);
  for (const [button, on] of [[cameraButton, me?.isCameraEnabled],
    [microphoneButton, me?.isMicrophoneEnabled], [screenButton, me?.isScreenShareEnabled]]) {
    button.disabled = !publish || button.dataset.busy === "true";
    button.setAttribute("aria-pressed", String(Boolean(connected && on)));
  }
}

async function toggle(button, change) {
  if (!media) return;
  button.dataset.busy = "true";
  updateButtons();
  try {
    await change(media.localParticipant);
  } catch (error) {
    const what = error && error.name === "NotAllowedError" ? "permission was refused" : error?.message;
    say(mediaMessage, `That did not work${what ? `: ${what}` : "."}`);
  } finally {
    delete button.dataset.busy;
    updateButtons();
  }
}

function wire(lk, livekit) {
  const E = livekit.RoomEvent;
  lk.on(E.TrackSubscribed, (track, _publication, participant) => attachTrack(track, participant))
    .on(E.TrackUnsubscribed, (track) => detachTrack(track))
    .on(E.LocalTrackPublished, (publication, participant) => {
      if (publication.track) attachTrack(publication.track, participant, true);
      updateButtons();
    })
    .on(E.LocalTrackUnpublished, (publication) => {
      detachTrack(publication.track);
      updateButtons();
    })
    .on(E.TrackMuted, updateButtons)
    .on(E.TrackUnmuted, updateButtons)
    .on(E.ParticipantConnected, (participant) => {
      tileFor(participant);
      refreshPeopleSoon();
    })
    .on(E.ParticipantDisconnected, (participant) => {
      removeTile(participant);
      refreshPeopleSoon();
    })
    .on(E.AudioPlaybackStatusChanged, () => { startAudioButton.hidden = lk.canPlaybackAudio; })
    .on(E.MediaDevicesError, (error) => say(mediaMessage, `Camera or microphone: ${error.message}`))
    .on(E.Disconnected, () => {
      // Not after we left, nor while connecting: connectMedia() tells of that failure.
      if (media !== lk || !established.has(lk)) return;
      media = null;
      clearTiles();
      updateButtons();
      say(mediaMessage, "Video and sound were disconnected; the chat still works.");
    });
}

async function connectMedia(grant) {
  if (!grant.livekit_url) return; // the page says media is unavailable here
  const livekit = window.LivekitClient;
  if (!livekit) {
    say(mediaMessage, "The video client did not load; the chat still works.");
    return;
  }
  const lk = new livekit.Room({ adaptiveStream: true, dynacast: true });
  media = lk;
  wire(lk, livekit);
  say(mediaMessage, "Connecting video and sound\u2026", true);
  try {
    // Exactly the token the API issued: LiveKit checks its grants, not us.
    await lk.connect(grant.livekit_url, grant.token);
  } catch {
    if (media !== lk) return;
    media = null;
    say(mediaMessage, "Video and sound could not connect; the chat still works.");
    updateButtons();
    return;
  }
  if (media !== lk) return;
  established.add(lk);
  say(mediaMessage, lk.localParticipant.permissions?.canPublish
    ? "" : "You can watch, listen and chat here.", true);
  tileFor(lk.localParticipant, true);
  for (const participant of lk.remoteParticipants.values()) {
    tileFor(participant);
    for (const publication of participant.trackPublications.values()) {
      if (publication.track && publication.isSubscribed) attachTrack(publication.track, participant);
    }
  }
  startAudioButton.hidden = lk.canPlaybackAudio;
  updateButtons();
}

// --- the chat -------------------------------------------------------------------

const FIRST_DELAY = 500;
const MAX_DELAY = 30000;
// Close codes after which trying again with the same token cannot help.
const FINAL = new Set([4401, 4403, 4409]);

// The chat's WebSocket: authenticates with the join token, comes back after a drop
// with capped, jittered backoff, and gives up on the codes above.
class ChatSocket {
  constructor(token, { onMessage, onFinal, onState }) {
    Object.assign(this, { token, onMessage, onFinal, onState });
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.ws = null;
    this.connect();
  }

  connect() {
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/rooms/${roomId}/chat`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      // In the first frame, not the URL: access logs keep URLs.
      ws.send(JSON.stringify({ type: "auth", token: this.token }));
      this.onState("open");
    });
    ws.addEventListener("message", (event) => {
      this.failures = 0;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      if (FINAL.has(event.code)) {
        this.stopped = true;
        this.onFinal(event.code);
        return;
      }
      this.onState("reconnecting");
      const ceiling = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.failures);
      this.failures += 1;
      this.timer = setTimeout(() => this.connect(), ceiling / 2 + Math.random() * (ceiling / 2));
    });
  }

  send(frame) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws !== null) this.ws.close(1000);
    this.ws = null;
  }
}

const shown = new Set(); // message ids on the list
let pending = null; // the last message sent, until it comes back or is refused
let olderBefore = null;
let historyStarted = false;

function messageItem(message) {
  return el("li", { className: "chat-item", attrs: { "data-message-id": message.id, "data-identity": message.identity } },
    el("p", { className: "chat-head" },
      el("span", { className: "chat-author", text: message.name || message.identity }), " ",
      timeElement(message.created_at)),
    // Text only, whatever it looks like.
    el("p", { className: "chat-text", text: message.body }));
}

// In order of id, wherever it belongs: live messages from other servers and history
// pages may arrive in any order.
function addMessage(message) {
  if (typeof message.id !== "number" || shown.has(message.id)) return;
  shown.add(message.id);
  const atBottom = chatList.scrollHeight - chatList.scrollTop - chatList.clientHeight < 40;
  let after = chatList.lastElementChild;
  while (after && Number(after.dataset.messageId) > message.id) after = after.previousElementSibling;
  const item = messageItem(message);
  if (after) after.after(item);
  else chatList.prepend(item);
  if (atBottom) chatList.scrollTop = chatList.scrollHeight;
}

// Newest first, a page at a time: `before` is the id the next page starts below.
function historyPath(before) {
  return before === null ? `/rooms/${roomId}/messages`
    : `/rooms/${roomId}/messages?before=${encodeURIComponent(before)}`;
}

async function loadHistory(before = null) {
  let response;
  try {
    response = await read(historyPath(before));
  } catch {
    say(chatMessage, "The chat's history could not be loaded.");
    return;
  }
  if (!response.ok) {
    if (response.status !== 404) say(chatMessage, await failure(response, "The chat's history could not be loaded."));
    return;
  }
  const page = await response.json();
  for (const message of page.messages || []) addMessage(message);
  // Where older messages start is learnt once and then page by page; a refresh of
  // the newest page after a reconnect keeps it.
  if (before !== null || !historyStarted) olderBefore = page.next ?? null;
  historyStarted = true;
  olderButton.hidden = olderBefore === null;
}

function openChat(token) {
  chat = new ChatSocket(token, {
    onState: (state) => { chatList.dataset.state = state; },
    onMessage: (frame) => {
      if (frame.type === "message") {
        if (frame.body === pending) pending = null;
        addMessage(frame);
      } else if (frame.type === "ready") {
        // The token was accepted: from now on every new message comes here.
        chatList.dataset.state = "ready";
        chatForm.hidden = false;
        chatHint.hidden = true;
        // Whatever was said while we were away (after a reconnect, or a leave and a
        // join); messages are merged by id, so a page already shown adds nothing.
        if (historyStarted) loadHistory();
      } else if (frame.type === "error") {
        say(chatMessage, frame.message || "The chat refused that.");
        // A refused message is not lost: it goes back in the box to send again.
        if (pending !== null && !chatBody.value) chatBody.value = pending;
        pending = null;
      } else if (frame.type === "warning" && frame.code === "not_shared") {
        say(chatMessage, "Your message was kept, but people on other servers see it only later.", true);
      }
    },
    onFinal: (code) => {
      chat = null;
      chatList.dataset.state = "closed";
      if (code === 4409) {
        endChat("The room has ended; its chat is kept as it was.");
        loadRoom();
      } else {
        endChat("Your place in the chat has expired; leave and join again.");
      }
    },
  });
}

function endChat(text) {
  chatForm.hidden = true;
  chatHint.textContent = text;
  chatHint.hidden = false;
}

function closeChat() {
  if (chat) chat.close();
  chat = null;
  chatList.dataset.state = "closed";
  endChat("Join the room to chat.");
}

function sendMessage() {
  const body = chatBody.value.trim();
  if (!body) return;
  if (!chat || !chat.send({ type: "message", body })) {
    say(chatMessage, "The chat is reconnecting; try again in a moment.");
    return;
  }
  say(chatMessage, "");
  pending = body;
  chatBody.value = "";
}

// --- wiring -------------------------------------------------------------------------

joinButton.addEventListener("click", join);
leaveButton.addEventListener("click", leave);
endButton.addEventListener("click", endRoom);
cameraButton.addEventListener("click", () => toggle(cameraButton,
  (me) => me.setCameraEnabled(!me.isCameraEnabled)));
microphoneButton.addEventListener("click", () => toggle(microphoneButton,
  (me) => me.setMicrophoneEnabled(!me.isMicrophoneEnabled)));
screenButton.addEventListener("click", () => toggle(screenButton,
  (me) => me.setScreenShareEnabled(!me.isScreenShareEnabled)));
startAudioButton.addEventListener("click", async () => {
  await media?.startAudio();
  startAudioButton.hidden = Boolean(media?.canPlaybackAudio);
});
olderButton.addEventListener("click", () => loadHistory(olderBefore));
chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
chatBody.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter starts a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

loadRoom();
loadHistory();
