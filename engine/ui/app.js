// Entry point: signs in (or restores the session from the refresh token), then routes by
// the URL fragment: `#/chat`, `#/chat/<conversation id>`, `#/admin`.

import { login, logout, refresh, onSessionChange, currentSession, api, ApiError } from './api.js';
import { $ } from './dom.js';
import { initChat, showChat, closeChat } from './chat.js';
import { initAdmin, showAdmin, hideAdmin, resetAdmin } from './admin.js';

let me = null; // GET /api/v1/auth/me

function showView(name) {
  for (const view of ['login', 'chat', 'admin']) $(`#${view}-view`).hidden = view !== name;
  $('#nav-chat').toggleAttribute('aria-current', name === 'chat');
  $('#nav-admin').toggleAttribute('aria-current', name === 'admin');
  if (name === 'chat') $('#nav-chat').setAttribute('aria-current', 'page');
  if (name === 'admin') $('#nav-admin').setAttribute('aria-current', 'page');
}

async function route() {
  if (!currentSession()) {
    hideAdmin();
    closeChat();
    showView('login');
    document.title = 'Sign in — Switchyard';
    $('#login-email').focus();
    return;
  }
  const hash = location.hash || '#/chat';
  if (hash.startsWith('#/admin')) {
    showView('admin');
    document.title = 'Admin — Switchyard';
    showAdmin();
  } else {
    hideAdmin();
    showView('chat');
    document.title = 'Chat — Switchyard';
    const match = /^#\/chat\/(.+)$/.exec(hash);
    await showChat(match ? decodeURIComponent(match[1]) : null);
  }
}

async function onSignedIn() {
  try {
    me = await api('GET', '/api/v1/auth/me');
  } catch {
    me = null;
  }
  const admin = !!me?.superadmin;
  $('#nav').hidden = false;
  $('#nav-admin').hidden = !admin;
  $('#logout').hidden = false;
  $('#whoami').textContent = me ? `${me.role ?? 'api key'}${admin ? ' · platform admin' : ''}` : '';
}

function onSignedOut() {
  me = null;
  resetAdmin();
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#whoami').textContent = '';
}

async function main() {
  initChat();
  initAdmin();
  // Signed out by the server (refresh refused, session revoked): back to the login form.
  onSessionChange((s) => { if (!s) { onSignedOut(); route(); } });

  $('#login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('#login-error');
    error.textContent = '';
    const button = $('#login-submit');
    button.disabled = true;
    try {
      await login($('#login-email').value.trim(), $('#login-password').value, $('#login-totp').value.trim());
      $('#login-password').value = '';
      await onSignedIn();
      await route();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401
        ? 'Wrong email, password or authenticator code.'
        : `Sign-in failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  $('#logout').addEventListener('click', async () => {
    await logout();
    location.hash = '#/chat';
    await route();
  });
  window.addEventListener('hashchange', route);

  if (await refresh()) await onSignedIn();
  await route();
}

main();
