// The demo page's script (served as /app.js; the page's Content-Security-Policy allows no
// inline script). Every call uses the session cookie, which is HttpOnly: this script never
// sees the token.
"use strict";

const $ = (id) => document.getElementById(id);

/** How often the session list refreshes by itself while the page is visible. */
const REFRESH_MS = 10000;

/** Whether this page last saw the device signed in (to tell "signed out elsewhere"). */
let signedIn = false;
/** The refresh in progress, so that timers, focus and clicks do not overlap. */
let refreshing = null;

function say(text, kind) {
  const status = $("status");
  status.textContent = text || "";
  status.className = kind || "";
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (_) {
    return { status: 0, ok: false, data: { message: "The server cannot be reached; retrying shortly." } };
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (_) { data = null; }
  }
  return { status: response.status, ok: response.ok, data, retryAfter: response.headers.get("Retry-After") };
}

function fail(reply) {
  if (reply.status === 401 && signedIn) return showSignedOut(true);
  let message = reply.data && reply.data.message ? reply.data.message : "request failed (" + reply.status + ")";
  if (reply.status === 429 && reply.retryAfter) {
    message += " (about " + Math.ceil(Number(reply.retryAfter) / 60) + " min)";
  }
  say(message, "error");
}

function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return "just now";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
  return new Date(iso).toLocaleString();
}

function label(s) {
  return s.device_name ? s.device_name + " \u2014 " + s.device : s.device;
}

// `newLocations`: session id → the address it was last used from, where that is not the
// address it signed in from (the library's anomaly hook noted it).
function renderSessions(sessions, newLocations) {
  const list = $("sessions");
  list.replaceChildren();
  for (const s of sessions) {
    const item = document.createElement("li");
    item.className = "session" + (s.current ? " current" : "");
    item.dataset.id = s.id;
    const text = document.createElement("div");
    const title = document.createElement("div");
    title.className = "device";
    title.textContent = label(s);
    if (s.current) {
      const badge = document.createElement("span");
      badge.className = "badge this-device";
      badge.textContent = "this device";
      title.append(badge);
    }
    const moved = newLocations[s.id];
    if (moved) {
      const badge = document.createElement("span");
      badge.className = "badge new-location";
      badge.textContent = "new location: " + moved;
      title.append(badge);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = (s.ip_address || "unknown IP") + " \u00b7 " + s.device_type +
      " \u00b7 last active " + ago(s.last_active_at) + " \u00b7 signed in " + new Date(s.created_at).toLocaleString();
    text.append(title, meta);
    item.append(text);
    if (!s.current) {
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "danger revoke";
      revoke.textContent = "Revoke";
      revoke.addEventListener("click", () => revokeSession(s));
      item.append(revoke);
    }
    list.append(item);
  }
}

/** Shows the sign-in form; `elsewhere`: this device was signed in and has been signed out. */
function showSignedOut(elsewhere) {
  const notice = $("signed-out-notice");
  if (elsewhere) {
    notice.textContent = "This device was signed out (from another device, or the session ended). Sign in again to continue.";
    notice.hidden = false;
    say("");
  }
  signedIn = false;
  $("signed-in").hidden = true;
  $("signed-out").hidden = false;
  $("whoami").textContent = "";
  $("sessions").replaceChildren();
}

function showSignedIn(email, sessions, newLocations) {
  signedIn = true;
  $("signed-out-notice").hidden = true;
  $("whoami").textContent = "Signed in as " + email;
  renderSessions(sessions, newLocations);
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
}

async function load() {
  const me = await api("GET", "/api/me");
  if (me.status === 401) return showSignedOut(signedIn);
  if (!me.ok) return fail(me);
  const list = await api("GET", "/api/sessions");
  if (list.status === 401) return showSignedOut(signedIn);
  if (!list.ok) return fail(list);
  showSignedIn(me.data.email, list.data.sessions, list.data.new_locations || {});
}

/** Reloads who is signed in and the session list; background calls share one load. */
function refresh() {
  if (!refreshing) {
    refreshing = load().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** After an action: a load that starts after it (not one already under way). */
async function reload() {
  if (refreshing) await refreshing;
  return refresh();
}

async function signIn(event) {
  event.preventDefault();
  const reply = await api("POST", "/api/auth/login", {
    email: $("email").value,
    password: $("password").value,
    device_name: $("device-name").value || null,
    transport: "cookie",
  });
  if (!reply.ok) return fail(reply);
  $("password").value = "";
  say("Signed in.", "ok");
  await reload();
}

async function register() {
  const reply = await api("POST", "/api/auth/register", { email: $("email").value, password: $("password").value });
  if (!reply.ok) return fail(reply);
  say("Account created; signing you in\u2026", "ok");
  await signIn(new Event("submit"));
}

async function revokeSession(session) {
  if (!window.confirm("Sign out \u201c" + label(session) + "\u201d? It will have to sign in again.")) return;
  const reply = await api("DELETE", "/api/sessions/" + encodeURIComponent(session.id));
  if (!reply.ok && reply.status !== 404) return fail(reply);
  say("That device was signed out.", "ok");
  await reload();
}

async function revokeOthers() {
  if (!window.confirm("Sign out every other device? They will have to sign in again.")) return;
  const reply = await api("POST", "/api/sessions/revoke-others");
  if (!reply.ok) return fail(reply);
  say("Signed out " + reply.data.revoked + " other session(s).", "ok");
  await reload();
}

async function logout() {
  const reply = await api("POST", "/api/auth/logout");
  if (!reply.ok && reply.status !== 401) return fail(reply);
  signedIn = false;
  say("Signed out.", "ok");
  await reload();
}

async function changePassword(event) {
  event.preventDefault();
  const reply = await api("POST", "/api/auth/password", {
    current_password: $("current-password").value,
    new_password: $("new-password").value,
  });
  if (!reply.ok) return fail(reply);
  $("current-password").value = "";
  $("new-password").value = "";
  say("Password changed; your other devices were signed out.", "ok");
  await reload();
}

$("auth-form").addEventListener("submit", signIn);
$("register").addEventListener("click", register);
$("revoke-others").addEventListener("click", revokeOthers);
$("logout").addEventListener("click", logout);
$("password-form").addEventListener("submit", changePassword);
// The list stays current by itself: every few seconds while visible, and when the window
// comes back into view.
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
window.addEventListener("focus", () => refresh());
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
refresh();
