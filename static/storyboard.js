// Seek previews over the browser's own controls. The storyboard is a WebVTT file
// whose cues each name a tile of one sprite image (`sprite.jpg#xywh=x,y,w,h`);
// pointing at (or dragging along) the progress bar shows the tile for the time
// under the pointer, and any seek (keyboard, touch, a drag) shows the tile for
// where it lands.

// Where the native progress bar lies, in CSS pixels from the edges of the video
// box: `band` is the height of the strip at the bottom that holds it. Chromium's
// was measured by clicking along its bar; the others are estimates, and a seek
// shows the exact frame whatever the engine.
const TIMELINES = {
  blink: { left: 22, right: 22, band: 30 },
  gecko: { left: 48, right: 190, band: 40 },
  webkit: { left: 64, right: 130, band: 44 },
};
// A seek's preview stays up this long once the seeking is over.
const SEEK_LINGER = 1000;
const EDGE = 4;

function engine() {
  if (navigator.userAgentData) return "blink";
  return /Firefox\//.test(navigator.userAgent) ? "gecko" : "webkit";
}

// "01:02:03.500", "02:03.5" or "3.5" seconds into the video; NaN if malformed.
export function parseTime(text) {
  const match = /^(?:(\d+):)?(?:(\d{1,2}):)?(\d{1,2}(?:\.\d+)?)$/.exec(text.trim());
  if (!match) return NaN;
  const [, a, b, s] = match;
  const hours = b === undefined ? 0 : Number(a);
  const minutes = b === undefined ? Number(a || 0) : Number(b);
  return hours * 3600 + minutes * 60 + Number(s);
}

// The cues of a storyboard: [{ start, end, image, x, y, w, h }] in time order.
// Cues that do not name a tile are skipped; URLs are read relative to `base`.
export function parseStoryboard(text, base) {
  const blocks = text.replace(/^\uFEFF/, "").replace(/\r\n?/g, "\n").split(/\n\s*\n/);
  if (!/^WEBVTT(?:[ \t]|$)/.test(blocks[0] || "")) return [];
  const cues = [];
  for (const block of blocks.slice(1)) {
    const lines = block.split("\n");
    const timing = lines.findIndex((line) => line.includes("-->"));
    if (timing < 0) continue;
    const [from, rest] = lines[timing].split("-->");
    const start = parseTime(from);
    const end = parseTime(rest.trim().split(/\s+/)[0]);
    const payload = lines.slice(timing + 1).join("").trim();
    if (!Number.isFinite(start) || !Number.isFinite(end) || !payload) continue;
    let url;
    try {
      url = new URL(payload, base);
    } catch {
      continue;
    }
    const tile = /^#xywh=(?:pixel:)?(\d+),(\d+),(\d+),(\d+)$/.exec(url.hash);
    if (!tile) continue;
    url.hash = "";
    const [x, y, w, h] = tile.slice(1).map(Number);
    cues.push({ start, end, image: url.href, x, y, w, h });
  }
  return cues.sort((a, b) => a.start - b.start);
}

// The cue showing at `time`: the last one that starts at or before it, so the
// very end of the video (time == duration) still has its frame.
export function cueAt(cues, time) {
  let low = 0;
  let high = cues.length - 1;
  let found = cues.length ? cues[0] : null;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (cues[middle].start <= time) {
      found = cues[middle];
      low = middle + 1;
    } else {
      high = middle - 1;
    }
  }
  return found;
}

export function formatTime(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// The preview for `player`, drawn inside `frame` (its positioned parent).
export class Storyboard {
  constructor(player, frame, url) {
    this.player = player;
    this.frame = frame;
    this.url = new URL(url, location.href).href;
    this.timeline = TIMELINES[engine()];
    this.cues = null;
    this.loading = null;
    this.lastPointer = null;
    this.hovering = false;
    this.dragging = false;
    this.hideTimer = null;

    this.box = document.createElement("div");
    this.box.className = "storyboard";
    this.box.hidden = true;
    this.box.setAttribute("aria-hidden", "true");
    this.tile = document.createElement("div");
    this.tile.className = "storyboard-tile";
    this.label = document.createElement("span");
    this.label.className = "storyboard-time";
    this.box.append(this.tile, this.label);
    frame.append(this.box);

    // Fetched on first interest: a viewer who never points at the bar costs nothing.
    const want = () => { this.load(); };
    player.addEventListener("pointerenter", want);
    player.addEventListener("focus", want);
    player.addEventListener("pointermove", (event) => this.pointer(event));
    player.addEventListener("pointerleave", () => {
      this.lastPointer = null;
      this.hovering = false;
      if (!this.dragging) this.hide();
    });
    player.addEventListener("pointerdown", (event) => {
      this.dragging = this.onTimeline(event);
    });
    window.addEventListener("pointerup", () => this.endDrag());
    window.addEventListener("pointercancel", () => this.endDrag());
    player.addEventListener("seeking", () => {
      this.load();
      this.showTime(player.currentTime, true);
    });
    player.addEventListener("seeked", () => {
      if (!this.dragging && !this.hovering) this.hideSoon();
    });
  }

  load() {
    if (this.loading === null) {
      this.loading = this.fetchCues().catch(() => {
        // No previews this time; the next hover tries again.
        this.loading = null;
      });
    }
    return this.loading;
  }

  async fetchCues() {
    const response = await fetch(this.url, { headers: { Accept: "text/vtt" } });
    if (!response.ok) throw new Error(`storyboard: HTTP ${response.status}`);
    this.cues = parseStoryboard(await response.text(), this.url);
    // The sprite is fetched now so that the first tile does not arrive blank.
    const sprites = new Set(this.cues.map((cue) => cue.image));
    for (const image of sprites) new Image().src = image;
    if (this.lastPointer !== null) this.pointer(this.lastPointer);
  }

  duration() {
    const { duration } = this.player;
    return Number.isFinite(duration) && duration > 0 ? duration : 0;
  }

  // The bar's extent inside the video box, in page pixels.
  track() {
    const rect = this.player.getBoundingClientRect();
    const { left, right, band } = this.timeline;
    return { rect, start: rect.left + left, width: Math.max(1, rect.width - left - right), band };
  }

  onTimeline(event) {
    const { rect, start, width, band } = this.track();
    return event.clientY >= rect.bottom - band && event.clientY <= rect.bottom
      && event.clientX >= start && event.clientX <= start + width;
  }

  pointer(event) {
    this.lastPointer = { clientX: event.clientX, clientY: event.clientY };
    this.hovering = this.onTimeline(event);
    if (!this.dragging && !this.hovering) {
      this.hide();
      return;
    }
    const { start, width } = this.track();
    const fraction = Math.min(1, Math.max(0, (event.clientX - start) / width));
    this.showTime(fraction * this.duration(), false);
  }

  endDrag() {
    if (!this.dragging) return;
    this.dragging = false;
    if (!this.hovering) this.hide();
  }

  showTime(time, fromSeek) {
    const duration = this.duration();
    const cue = this.cues && duration ? cueAt(this.cues, time) : null;
    if (cue === null) return;
    clearTimeout(this.hideTimer);
    const { style } = this.tile;
    style.width = `${cue.w}px`;
    style.height = `${cue.h}px`;
    style.backgroundImage = `url("${cue.image}")`;
    style.backgroundPosition = `-${cue.x}px -${cue.y}px`;
    this.label.textContent = formatTime(time);
    this.box.dataset.time = time.toFixed(3);
    this.box.hidden = false;

    // Centred over the time's place on the bar, kept inside the frame.
    const { rect, start, width, band } = this.track();
    const frame = this.frame.getBoundingClientRect();
    const x = start + (time / duration) * width - frame.left;
    const boxWidth = this.box.offsetWidth || cue.w;
    const left = Math.min(Math.max(EDGE, x - boxWidth / 2), frame.width - boxWidth - EDGE);
    this.box.style.left = `${Math.max(EDGE, left)}px`;
    this.box.style.bottom = `${frame.bottom - rect.bottom + band + EDGE}px`;
    if (fromSeek && !this.dragging && !this.hovering) this.hideSoon();
  }

  hideSoon() {
    clearTimeout(this.hideTimer);
    this.hideTimer = setTimeout(() => this.hide(), SEEK_LINGER);
  }

  hide() {
    clearTimeout(this.hideTimer);
    this.box.hidden = true;
  }
}
