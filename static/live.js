// A WebSocket that comes back: reconnects with capped, jittered exponential backoff.

const FIRST_DELAY = 500;
const MAX_DELAY = 30000;
// Close codes the server uses: the video was deleted (final), and too many
// sockets from this address (worth trying again only after a long while).
const VIDEO_GONE = 4404;
const TOO_MANY = 4429;

export class LiveSocket {
  constructor(path, { onMessage, onOpen, onState } = {}) {
    this.path = path;
    this.onMessage = onMessage || (() => {});
    this.onOpen = onOpen || (() => {});
    this.onState = onState || (() => {});
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.ws = null;
    window.addEventListener("online", () => this.retryNow());
    this.connect();
  }

  url() {
    // Same host and scheme as the page, so the server's same-origin check passes.
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.path}`;
  }

  connect() {
    this.timer = null;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.onState("live");
      this.onOpen();
    });
    ws.addEventListener("message", (event) => {
      // Backoff resets only once the server has said something: a socket
      // accepted and dropped at once must not turn into a tight loop.
      this.failures = 0;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onMessage(message);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      if (event.code === VIDEO_GONE) {
        this.stopped = true;
        this.onState("gone");
        return;
      }
      if (event.code === TOO_MANY) this.failures = Math.max(this.failures, 6);
      this.onState("reconnecting");
      this.schedule();
    });
  }

  schedule() {
    const ceiling = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.failures);
    this.failures += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  retryNow() {
    if (this.timer === null || this.stopped) return;
    clearTimeout(this.timer);
    this.failures = 0;
    this.connect();
  }

  // True when the message went out on an open socket.
  send(message) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  close() {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.ws !== null) this.ws.close(1000);
    this.ws = null;
  }

  // After close(), e.g. for a page restored from the back/forward cache.
  reopen() {
    if (!this.stopped) return;
    this.stopped = false;
    this.failures = 0;
    this.onState("connecting");
    this.connect();
  }
}
