// The JSON API from the browser: tokens kept in sessionStorage for this tab,
// the access token refreshed before it expires (and once more on a 401).

const KEY = "tubelet.session";

export class SignedOut extends Error {}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null;
  }
}

export function signedIn() {
  return session() !== null;
}

export function storePair(pair) {
  const previous = session();
  sessionStorage.setItem(KEY, JSON.stringify({
    access: pair.access_token,
    refresh: pair.refresh_token,
    lifetime: pair.expires_in * 1000,
    expiresAt: Date.now() + pair.expires_in * 1000,
    user: previous ? previous.user : null,
  }));
}

export function storeUser(user) {
  const current = session();
  if (current) {
    const known = current.user || {};
    current.user = {
      id: user.id,
      name: user.name,
      email: user.email ?? known.email,
      role: user.role ?? known.role ?? "user",
    };
    sessionStorage.setItem(KEY, JSON.stringify(current));
  }
}

// The signed-in user as last heard of ({id, name, email, role}), or null.
export function currentUser() {
  const current = session();
  return current && current.user ? current.user : null;
}

// Sends a signed-out visitor to the login page, to come back here afterwards.
export function logInFirst() {
  location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

// Refresh tokens rotate and a reused one revokes the whole session, so one
// refresh at a time: everybody who needs a new token awaits the same promise.
let refreshing = null;

export function refresh() {
  if (refreshing === null) {
    refreshing = doRefresh().finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function doRefresh() {
  const current = session();
  if (!current) throw new SignedOut("not signed in");
  const response = await fetch("/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: current.refresh }),
  });
  if (response.status === 401) {
    forget();
    throw new SignedOut("session expired");
  }
  if (!response.ok) throw new Error(`refresh failed: HTTP ${response.status}`);
  storePair(await response.json());
}

// An access token that will still be valid when the request lands.
export async function accessToken() {
  const current = session();
  if (!current) throw new SignedOut("not signed in");
  const margin = Math.min(30000, current.lifetime / 5);
  if (Date.now() >= current.expiresAt - margin) await refresh();
  return session().access;
}

export async function errorOf(response) {
  try {
    const body = await response.clone().json();
    return body.error || {};
  } catch {
    return {};
  }
}

// fetch() with JSON in (or a raw `body` of `contentType`) and the Bearer token
// added; a 401 for an expired token (a clock ahead of ours) gets one refresh and
// one retry.
export async function api(path, { method = "GET", json, body: raw, contentType,
  auth = false } = {}) {
  const headers = new Headers({ Accept: "application/json" });
  let body = raw;
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (raw !== undefined && contentType) {
    headers.set("Content-Type", contentType);
  }
  const send = async () => {
    if (auth) headers.set("Authorization", `Bearer ${await accessToken()}`);
    return fetch(path, { method, headers, body });
  };
  let response = await send();
  if (auth && response.status === 401 && (await errorOf(response)).code === "invalid_token") {
    await refresh();
    response = await send();
  }
  return response;
}

export async function logOut() {
  if (signedIn()) {
    try {
      await api("/auth/logout", { method: "POST", auth: true });
    } catch {
      // Signed out here whatever the server said; its tokens expire anyway.
    }
  }
  forget();
}

// A path on this origin to go back to after signing in; anything else goes home.
// Checked as the browser will read it: URLs lose tabs and newlines before they are
// parsed, so "/\t/evil.example" is "//evil.example", another host.
export function nextPath(search = location.search) {
  const next = new URLSearchParams(search).get("next");
  if (!next || !/^\/(?![/\\])/.test(next.replace(/[\t\n\r]/g, ""))) return "/";
  let url;
  try {
    url = new URL(next, location.origin);
  } catch {
    return "/";
  }
  // A path such as "/.//evil.example" resolves to "//evil.example", which names
  // another host when handed on as a path: such paths go home too, and what is
  // followed is the absolute same-origin URL.
  if (url.origin !== location.origin || /^\/[/\\]/.test(url.pathname)) return "/";
  return url.href;
}
