// Log in and register through the JSON API; the new tokens stay in this tab.
import { api, errorOf, nextPath, storePair, storeUser } from "./api.js";

const form = document.getElementById("auth-form");
const message = document.getElementById("form-message");
const submit = form.querySelector("button[type=submit]");

function show(text) {
  message.textContent = text;
  message.hidden = !text;
}

async function failure(response, fallback) {
  const error = await errorOf(response);
  return error.message || fallback;
}

async function logIn(email, password) {
  const response = await api("/auth/login", { method: "POST", json: { email, password } });
  if (!response.ok) {
    throw new Error(await failure(response, "Could not log in. Please try again."));
  }
  storePair(await response.json());
  const me = await api("/auth/me", { auth: true });
  if (me.ok) storeUser(await me.json());
}

async function register(email, password, name) {
  const response = await api("/auth/register", {
    method: "POST",
    json: name ? { email, password, name } : { email, password },
  });
  if (!response.ok) {
    throw new Error(await failure(response, "Could not create the account. Please try again."));
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const email = String(data.get("email") || "").trim();
  const password = String(data.get("password") || "");
  if (!email || !password) {
    show("Please enter your email and password.");
    return;
  }
  show("");
  submit.disabled = true;
  try {
    if (form.dataset.mode === "register") {
      await register(email, password, String(data.get("name") || "").trim());
    }
    await logIn(email, password);
    location.assign(nextPath());
  } catch (error) {
    show(error instanceof TypeError ? "The server could not be reached." : error.message);
    submit.disabled = false;
  }
});
