// What the page says when the player cannot go on: a media error gets a message
// instead of a dead player, and a lost connection or a long stall a way to retry.

// Waiting for data this long while trying to play counts as stuck.
const STALL_AFTER = 10000;

const MEDIA_ERRORS = {
  1: ["Loading the video was stopped.", true],
  2: ["The video stopped loading: the connection was lost.", true],
  3: ["This video can't be played in your browser: its data could not be decoded.", false],
  4: ["This video can't be played in your browser: the file or its format is not supported.",
    false],
};

export class PlaybackProblems {
  // `explain(error)` may return a better message (say, that the video was deleted), or null.
  constructor(player, { explain = async () => null } = {}) {
    this.player = player;
    this.explain = explain;
    this.panel = document.getElementById("playback-problem");
    this.message = document.getElementById("playback-message");
    this.detail = document.getElementById("playback-detail");
    this.retryButton = document.getElementById("playback-retry");
    this.watchdog = null;
    this.resumeAt = null;
    // Whether the viewer asked to play: an error may leave `paused` either way.
    this.wantsToPlay = false;

    player.addEventListener("play", () => { this.wantsToPlay = true; });
    player.addEventListener("pause", () => { this.wantsToPlay = false; });
    player.addEventListener("error", () => this.failed());
    player.addEventListener("waiting", () => this.watch());
    player.addEventListener("stalled", () => this.watch());
    player.addEventListener("loadedmetadata", () => this.restorePosition());
    this.retryButton.addEventListener("click", () => this.retry());
    // The player starts loading while the page is parsed, before this module
    // runs: it may have failed already.
    if (player.error) this.failed();
  }

  async failed() {
    const error = this.player.error;
    if (!error) return;
    this.stopWatching();
    const [text, retriable] = MEDIA_ERRORS[error.code] || ["This video can't be played.", true];
    const codes = `Media error ${error.code}${error.message ? `: ${error.message}` : ""}`;
    this.show("error", text, codes, retriable);
    const better = await this.explain(error).catch(() => null);
    if (better) this.show("error", better, "", false);
  }

  // The browser retries a broken download quietly and for ever; the viewer is
  // told once playback has waited for data for STALL_AFTER.
  watch() {
    if (this.watchdog !== null) return;
    const since = Date.now();
    this.watchdog = setInterval(() => {
      const { player } = this;
      if (player.error) {
        this.stopWatching();
      } else if (player.paused || player.readyState >= HTMLMediaElement.HAVE_FUTURE_DATA) {
        this.stopWatching();
        if (this.panel.dataset.kind === "stall") this.hide();
      } else if (Date.now() - since >= STALL_AFTER && this.panel.hidden) {
        this.show("stall", "The video stopped loading.", "The connection may be slow or lost.",
          true);
      }
    }, 1000);
  }

  stopWatching() {
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
  }

  show(kind, text, detail, retriable) {
    this.message.textContent = text;
    this.detail.textContent = detail;
    this.detail.hidden = !detail;
    this.retryButton.hidden = !retriable;
    this.panel.dataset.kind = kind;
    this.panel.hidden = false;
    this.player.classList.add("has-problem");
  }

  hide() {
    this.panel.hidden = true;
    delete this.panel.dataset.kind;
    this.player.classList.remove("has-problem");
  }

  // Loads the video again and carries on from where it was.
  retry() {
    const { player } = this;
    const position = Number.isFinite(player.currentTime) ? player.currentTime : 0;
    this.resumeAt = { position, play: this.wantsToPlay };
    this.stopWatching();
    this.hide();
    player.load();
  }

  restorePosition() {
    if (this.resumeAt === null) return;
    const { position, play } = this.resumeAt;
    this.resumeAt = null;
    if (position > 0) this.player.currentTime = position;
    if (play) this.player.play().catch(() => {});
  }
}
