// The session (tokens) and every REST call the UI makes.
//
// The access token lives in memory; the refresh token in sessionStorage, so a reload of the
// tab stays signed in but closing it signs out. Requests carry `Authorization: Bearer …`;
// a 401 triggers one refresh and one retry. Errors arrive as `{"error":{"code","message"}}`
// and are thrown as `ApiError`.

const REFRESH_KEY = 'switchyard.refresh';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let session = null; // {access_token, expires_at_ms, tenant_id, user_id, role}
let refreshing = null;
const listeners = new Set();

/** Called with the new session (or null) whenever it changes. */
export function onSessionChange(fn) { listeners.add(fn); }

function setSession(body) {
  if (body) {
    session = {
      access_token: body.access_token,
      expires_at_ms: Date.now() + (body.expires_in ?? 900) * 1000,
      tenant_id: body.tenant_id,
      user_id: body.user_id,
      role: body.role,
    };
    sessionStorage.setItem(REFRESH_KEY, body.refresh_token);
  } else {
    session = null;
    sessionStorage.removeItem(REFRESH_KEY);
  }
  for (const fn of listeners) fn(session);
}

export function currentSession() { return session; }

async function parse(response) {
  if (response.status === 204) return null;
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? 'http_' + response.status,
      error.message ?? `request failed with HTTP ${response.status}`);
  }
  return body;
}

export async function login(email, password, totpCode) {
  const payload = { email, password };
  if (totpCode) payload.totp_code = totpCode;
  const response = await fetch('/api/v1/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(payload),
  });
  setSession(await parse(response));
  return session;
}

/** Trades the stored refresh token for a new session; false when there is none or it failed. */
export async function refresh() {
  if (refreshing) return refreshing;
  const token = sessionStorage.getItem(REFRESH_KEY);
  if (!token) return false;
  refreshing = (async () => {
    try {
      const response = await fetch('/api/v1/auth/refresh', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: token }),
      });
      setSession(await parse(response));
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) setSession(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export async function logout() {
  if (session) {
    try { await fetch('/api/v1/auth/logout', { method: 'POST', headers: authHeaders() }); } catch { /* signed out locally anyway */ }
  }
  setSession(null);
}

function authHeaders() {
  return session ? { authorization: `Bearer ${session.access_token}` } : {};
}

/** An access token valid for at least the next 30 s (refreshing if needed), or null. */
export async function freshToken() {
  if (!session || session.expires_at_ms - Date.now() < 30_000) await refresh();
  return session?.access_token ?? null;
}

/** `api('GET', '/api/v1/conversations')`: JSON in, JSON out, one refresh-and-retry on 401. */
export async function api(method, path, body) {
  await freshToken();
  const send = () => fetch(path, {
    method,
    headers: { ...authHeaders(), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  let response = await send();
  if (response.status === 401 && await refresh()) response = await send();
  return parse(response);
}
