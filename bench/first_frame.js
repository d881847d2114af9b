// Row f of `python -m bench`, installed before any script of the page runs: the page's
// first <video> to start loading is started muted at once, and the bench is told
// (through its `benchMark` binding) when that element has its metadata, its first data
// and its first frame on screen. The page's own scripts are left to do as they do.
(() => {
  if (window.top !== window) return;
  const seen = new Set();
  const mark = (name, detail) => {
    if (seen.has(name) || typeof window.benchMark !== "function") return;
    seen.add(name);
    window.benchMark(name, performance.now(), detail === undefined ? null : String(detail));
  };
  let video = null;

  function start(element) {
    if (video !== null) return;
    video = element;
    video.muted = true;
    if (typeof video.requestVideoFrameCallback === "function") {
      // Called when a frame of the video is first handed to the compositor.
      video.requestVideoFrameCallback((_now, frame) => {
        mark("frame", `${frame.width}x${frame.height}`);
      });
    } else {
      mark("no-frame-callback");
    }
    video.play().catch((error) => mark("error", `play(): ${error}`));
  }

  // Media events do not bubble, but capturing listeners on the document see them,
  // however early they come: a player often has its data before the page's
  // deferred scripts have run.
  const capture = { capture: true };
  document.addEventListener("loadstart", (event) => {
    if (event.target instanceof HTMLVideoElement) start(event.target);
  }, capture);
  for (const name of ["loadedmetadata", "loadeddata"]) {
    document.addEventListener(name, (event) => {
      if (event.target === video) mark(name);
    }, capture);
  }
  document.addEventListener("error", (event) => {
    if (event.target === video) {
      mark("error", `media error ${video.error ? video.error.code : "?"}`);
    }
  }, capture);
  document.addEventListener("DOMContentLoaded", () => {
    const element = document.querySelector("video");
    if (element) start(element);
    else mark("error", "no <video> on the page");
  });
})();
