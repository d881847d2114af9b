// The header: which links show depends on whether this tab is signed in, and the
// moderation link on the signed-in user's role (GET /users/me, asked once a page).
import { SignedOut, api, currentUser, logOut, session, storeUser } from "./api.js";

const STAFF = new Set(["moderator", "admin"]);

function paint() {
  const current = session();
  document.documentElement.dataset.auth = current ? "in" : "out";
  const user = document.getElementById("nav-user");
  if (user) user.textContent = current && current.user ? current.user.name : "";
  const moderation = document.getElementById("nav-moderation");
  const me = currentUser();
  if (moderation) moderation.hidden = !(me && STAFF.has(me.role));
}

async function learnWhoIAm() {
  if (!session()) return;
  try {
    const response = await api("/users/me", { auth: true });
    if (!response.ok) return;
    storeUser(await response.json());
    paint();
  } catch (error) {
    // Signed out meanwhile, or the server is unreachable: the header stays as it is.
    if (error instanceof SignedOut) paint();
  }
}

paint();
learnWhoIAm();
document.getElementById("logout")?.addEventListener("click", async (event) => {
  event.currentTarget.disabled = true;
  await logOut();
  location.assign("/");
});
// Another page of this tab (back/forward cache) may have signed in or out.
window.addEventListener("pageshow", paint);
