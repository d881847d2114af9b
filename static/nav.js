// The header: which links show depends on whether this tab is signed in.
import { logOut, session } from "./api.js";

function paint() {
  const current = session();
  document.documentElement.dataset.auth = current ? "in" : "out";
  const user = document.getElementById("nav-user");
  if (user) user.textContent = current && current.user ? current.user.name : "";
}

paint();
document.getElementById("logout")?.addEventListener("click", async (event) => {
  event.currentTarget.disabled = true;
  await logOut();
  location.assign("/");
});
// Another page of this tab (back/forward cache) may have signed in or out.
window.addEventListener("pageshow", paint);
