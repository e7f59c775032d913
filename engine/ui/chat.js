// The chat client: the conversation list, the new-conversation form, and one open
// conversation streaming over its WebSocket.
//
// Opening a conversation renders its stored history (REST), then opens a ConversationSocket
// that resumes after the history's last seq, so nothing between the two is lost or shown
// twice. Replies are rebuilt from Markdown into DOM nodes as deltas arrive; each finished
// reply shows which model answered, whether it was a cache hit or failed over, its tokens
// and its cost.

import { api, freshToken, ApiError } from './api.js';
import { $, h, announce, formatMicros, formatTime, replaceChildren } from './dom.js';
import { renderMarkdown } from './markdown.js';
import { ConversationSocket } from './socket.js';

const STATE_TEXT = {
  connecting: 'Connecting…',
  open: 'Connected',
  reconnecting: 'Reconnecting…',
  closed: 'Disconnected',
};

let open = null; // the OpenConversation on screen
let listCursor = null;
let modelsLoaded = false;

export function initChat() {
  $('#new-conversation-form').addEventListener('submit', onCreate);
  $('#composer').addEventListener('submit', (e) => { e.preventDefault(); open?.sendFromComposer(); });
  $('#composer-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      open?.sendFromComposer();
    } else if (e.key === 'Escape') {
      open?.cancel();
    }
  });
  $('#cancel').addEventListener('click', () => open?.cancel());
  $('#load-more').addEventListener('click', () => loadConversations(true));
  // A hook for the end-to-end tests and for trying resume by hand: cut the socket as a
  // network failure would (it reconnects and resumes by itself).
  window.switchyard = {
    dropSocket: () => open?.socket?.drop(),
    lastSeq: () => open?.socket?.lastSeq ?? null,
  };
}

/** Shows the chat page, opening `conversationId` if given. */
export async function showChat(conversationId) {
  if (open && open.id !== conversationId && conversationId) {
    // Leave the previous conversation at once, so nothing typed meanwhile goes to it.
    open.close();
    open = null;
    setEmptyState();
  }
  if (!modelsLoaded) loadModels();
  await loadConversations(false);
  if (conversationId && open?.id !== conversationId) {
    await openConversation(conversationId);
  } else if (!conversationId && !open) {
    setEmptyState();
  }
}

/** Closes the open conversation's socket (on logout or leaving the page). */
export function closeChat() {
  open?.close();
  open = null;
  setEmptyState();
}

function setEmptyState() {
  $('#chat-title').textContent = 'No conversation open';
  $('#chat-settings').textContent = 'Create one, or pick one from the list.';
  replaceChildren($('#messages'));
  setComposerEnabled(false);
  setConnState(null);
}

async function loadModels() {
  try {
    const models = await api('GET', '/ui/models');
    const select = $('#new-model');
    const options = [];
    for (const alias of Object.keys(models.aliases ?? {})) {
      options.push(h('option', { value: alias }, `${alias} (route: ${models.aliases[alias].join(' → ')})`));
    }
    for (const model of models.models ?? []) {
      const chain = model.fallbacks?.length ? ` (fallback: ${model.fallbacks.join(' → ')})` : '';
      const label = model.name === models.default ? `${model.name} — default${chain}` : `${model.name}${chain}`;
      options.push(h('option', { value: model.name }, label));
    }
    replaceChildren(select, h('option', { value: '' }, 'Engine default'), options);
    modelsLoaded = true;
  } catch {
    // The select keeps "Engine default"; creation still works.
  }
}

async function loadConversations(more) {
  const list = $('#conversation-list');
  const query = more && listCursor ? `?limit=50&cursor=${encodeURIComponent(listCursor)}` : '?limit=50';
  let page;
  try {
    page = await api('GET', `/api/v1/conversations${query}`);
  } catch (e) {
    replaceChildren(list, h('li', { class: 'error' }, `Could not load conversations: ${e.message}`));
    return;
  }
  if (!more) list.replaceChildren();
  for (const c of page.items ?? []) list.append(conversationItem(c));
  if (!more && (page.items ?? []).length === 0) list.append(h('li', { class: 'muted' }, 'No conversations yet.'));
  listCursor = page.next_cursor ?? null;
  $('#load-more').hidden = !listCursor;
  markCurrent();
}

function conversationItem(c) {
  const title = c.settings?.title || 'Untitled conversation';
  const model = c.settings?.model || 'default model';
  return h('li', { dataset: { id: c.id } },
    h('a', { href: `#/chat/${encodeURIComponent(c.id)}`, class: 'conv-link' },
      h('span', { class: 'conv-title' }, title),
      h('span', { class: 'conv-sub' }, `${model} · ${formatTime(c.updated_at_ms)}`)));
}

function markCurrent() {
  for (const li of $('#conversation-list').children) {
    const link = li.querySelector('a');
    if (!link) continue;
    if (open && li.dataset.id === open.id) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function onCreate(event) {
  event.preventDefault();
  const error = $('#new-error');
  error.textContent = '';
  const body = {};
  const title = $('#new-title').value.trim();
  const model = $('#new-model').value;
  const temperature = $('#new-temperature').value.trim();
  const system = $('#new-system').value.trim();
  if (title) body.title = title;
  if (model) body.model = model;
  if (temperature !== '') body.temperature = Number(temperature);
  if (system) body.system_prompt = system;
  try {
    const created = await api('POST', '/api/v1/conversations', body);
    event.target.reset();
    location.hash = `#/chat/${encodeURIComponent(created.id)}`;
  } catch (e) {
    error.textContent = `Could not create the conversation: ${e.message}`;
  }
}

async function openConversation(id) {
  open?.close();
  open = null;
  setEmptyState();
  $('#chat-title').textContent = 'Loading…';
  let data;
  try {
    data = await api('GET', `/api/v1/conversations/${encodeURIComponent(id)}`);
  } catch (e) {
    $('#chat-title').textContent = 'Conversation unavailable';
    $('#chat-settings').textContent = e instanceof ApiError && e.status === 404 ? 'It does not exist, or is not yours.' : e.message;
    return;
  }
  open = new OpenConversation(data);
  markCurrent();
  $('#composer-input').focus();
}

function setComposerEnabled(enabled) {
  $('#composer-input').disabled = !enabled;
  $('#send').disabled = !enabled;
}

function setConnState(state) {
  const node = $('#conn-status');
  node.dataset.state = state ?? 'none';
  node.textContent = state ? STATE_TEXT[state] : '';
}

class OpenConversation {
  constructor({ conversation, messages }) {
    this.id = conversation.id;
    this.list = $('#messages');
    this.pending = new Map(); // client_id → {li}
    this.reply = null; // the reply being streamed
    this.awaiting = 0; // acknowledged user messages whose reply has not ended
    this.clientSeq = 0;

    const s = conversation.settings ?? {};
    $('#chat-title').textContent = s.title || 'Untitled conversation';
    const bits = [`model: ${s.model || 'engine default'}`];
    if (s.temperature !== null && s.temperature !== undefined) bits.push(`temperature: ${s.temperature}`);
    if (s.system_prompt) bits.push(`system prompt: “${s.system_prompt}”`);
    $('#chat-settings').textContent = bits.join(' · ');

    // A reply still streaming is left to the socket: resume from just before it, and render
    // nothing from that point on, so the replay fills it in exactly once.
    let resumeAfter = conversation.last_seq ?? 0;
    for (const m of messages) {
      if (m.role === 'assistant' && m.status === 'streaming') resumeAfter = Math.min(resumeAfter, Math.max(0, (m.first_seq ?? 1) - 1));
    }
    for (const m of messages) {
      if ((m.first_seq ?? 0) > resumeAfter) continue;
      this.list.append(m.role === 'user' ? userItem(m.content, m.id) : storedReplyItem(m));
    }
    this.scrollToEnd(true);
    setComposerEnabled(true);
    this.socket = new ConversationSocket({
      conversationId: this.id,
      afterSeq: resumeAfter,
      token: freshToken,
      onEvent: (e) => this.onEvent(e),
      onState: (state) => this.onState(state),
    });
  }

  close() {
    this.socket?.close();
  }

  onState(state) {
    setConnState(state);
    if (state === 'open') {
      // Messages sent on a socket that died before their ack: the resume replays the ack if
      // the server stored them; any still unacknowledged shortly after are marked for retry.
      setTimeout(() => {
        for (const [clientId, p] of this.pending) {
          if (p.sentOn !== undefined && p.sentOn !== this.socketGeneration) markUndelivered(clientId, p, this);
        }
      }, 3000);
      this.socketGeneration = (this.socketGeneration ?? 0) + 1;
    }
  }

  sendFromComposer() {
    const input = $('#composer-input');
    const content = input.value.trim();
    if (!content) return;
    input.value = '';
    this.send(content);
  }

  send(content) {
    this.clientSeq += 1;
    const clientId = `ui-${Date.now().toString(36)}-${this.clientSeq}`;
    const li = userItem(content, null);
    li.dataset.state = 'sending';
    li.dataset.clientId = clientId;
    setBadge(li, 'status', 'Sending…');
    this.list.append(li);
    this.pending.set(clientId, { li, content, sentOn: this.socket.connected ? this.socketGeneration : undefined });
    this.socket.send({ type: 'user_message', client_id: clientId, content });
    this.scrollToEnd(true);
    this.updateBusy();
  }

  cancel() {
    if (!this.busy()) return;
    this.socket.send({ type: 'cancel' });
    announce('Stopping the reply');
  }

  busy() {
    return this.reply !== null || this.awaiting > 0;
  }

  updateBusy() {
    const busy = this.busy();
    $('#cancel').hidden = !busy;
    this.list.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  onEvent(e) {
    switch (e.type) {
      case 'ack': this.onAck(e); break;
      case 'delta': {
        const reply = this.currentReply();
        reply.text += e.text ?? '';
        this.scheduleRender(reply);
        break;
      }
      case 'failover': {
        const reply = this.currentReply();
        reply.li.dataset.failover = 'true';
        addBadge(reply.li, 'failover', `Failover: ${e.from} → ${e.to}`, `The reply moved from ${e.from} to ${e.to} (${e.reason}); the text continues seamlessly.`);
        announce(`Provider failover from ${e.from} to ${e.to}`);
        break;
      }
      case 'retract': {
        const reply = this.currentReply();
        reply.text = '';
        this.scheduleRender(reply);
        addBadge(reply.li, 'retract', `Restarted after ${e.from} failed`);
        break;
      }
      case 'done': this.finishReply(e, 'done'); break;
      case 'interrupted': this.finishReply(e, 'interrupted'); break;
      case 'error':
        if (typeof e.seq === 'number') this.finishReply(e, e.code === 'cancelled' ? 'cancelled' : 'error');
        else this.onRefused(e);
        break;
      default: break; // pong, and anything newer than this UI
    }
  }

  onAck(e) {
    this.awaiting += 1;
    let p = e.client_id ? this.pending.get(e.client_id) : undefined;
    if (!p && e.client_id) {
      // Marked "not confirmed" too early: it did arrive after all.
      const li = this.list.querySelector(`li[data-client-id="${CSS.escape(e.client_id)}"]`);
      if (li) { li.querySelector('.retry')?.remove(); p = { li }; }
    }
    if (p) {
      this.pending.delete(e.client_id);
      p.li.dataset.state = 'sent';
      p.li.dataset.messageId = e.message_id;
      setBadge(p.li, 'status', null);
    } else {
      // Sent from another tab or device: fetch its text.
      const li = userItem('…', e.message_id);
      this.list.append(li);
      this.fillFromHistory(li, e.message_id);
    }
    this.updateBusy();
  }

  async fillFromHistory(li, messageId) {
    try {
      const data = await api('GET', `/api/v1/conversations/${encodeURIComponent(this.id)}`);
      const m = data.messages.find((x) => x.id === messageId);
      if (m) replaceChildren(li.querySelector('.msg-body'), m.content);
    } catch { /* the placeholder stays */ }
  }

  onRefused(e) {
    if (e.code === 'resync_required') {
      // The conversation is behind what we showed (e.g. restored from an older backup):
      // reload it from the store rather than guess.
      openConversation(this.id);
      return;
    }
    // A refused frame: nothing was stored. Attribute it to the oldest unacknowledged message.
    const first = this.pending.entries().next();
    if (!first.done && ['overloaded', 'tenant_concurrency', 'unavailable', 'rate_limited', 'message_too_large', 'invalid_frame', 'forbidden'].includes(e.code)) {
      const [clientId, p] = first.value;
      markUndelivered(clientId, p, this, `${e.code}: ${e.message}`);
    } else {
      showToast(`${e.code}: ${e.message}`);
    }
    this.updateBusy();
  }

  currentReply() {
    if (!this.reply) {
      const li = replyItem();
      li.dataset.state = 'streaming';
      setBadge(li, 'status', 'Streaming…');
      this.list.append(li);
      this.reply = { li, text: '', frame: 0 };
      this.updateBusy();
    }
    return this.reply;
  }

  scheduleRender(reply) {
    if (reply.frame) return;
    reply.frame = requestAnimationFrame(() => {
      reply.frame = 0;
      const follow = this.nearEnd();
      replaceChildren(reply.li.querySelector('.msg-body'), renderMarkdown(reply.text));
      if (follow) this.scrollToEnd(false);
    });
  }

  finishReply(e, outcome) {
    const reply = this.currentReply();
    if (reply.frame) cancelAnimationFrame(reply.frame);
    reply.frame = 0;
    this.reply = null;
    this.awaiting = Math.max(0, this.awaiting - 1);
    const li = reply.li;
    li.dataset.state = outcome;
    if (e.message_id) li.dataset.messageId = e.message_id;
    replaceChildren(li.querySelector('.msg-body'), renderMarkdown(reply.text));
    if (outcome === 'done') {
      setBadge(li, 'status', null);
      li.dataset.model = e.model ?? '';
      li.dataset.cache = e.cache ?? 'miss';
      if (e.cache && e.cache !== 'miss') addBadge(li, 'cache', `Cache hit (${e.cache})`, `Answered from the ${e.cache} cache`);
      setMeta(li, { model: e.model, usage: e.usage, cost: e.cost_micros, finish: e.finish_reason });
      announce(`Reply complete from ${e.model}${e.cache && e.cache !== 'miss' ? ', cache hit' : ''}`);
    } else if (outcome === 'cancelled') {
      setBadge(li, 'status', 'Stopped');
      announce('Reply stopped');
    } else if (outcome === 'interrupted') {
      setBadge(li, 'status', 'Interrupted');
    } else {
      setBadge(li, 'status', `Failed: ${e.code}`);
      li.querySelector('.msg-body').append(h('p', { class: 'error' }, e.message ?? 'The reply failed.'));
      announce(`The reply failed: ${e.message ?? e.code}`);
    }
    this.updateBusy();
    if (this.nearEnd()) this.scrollToEnd(false);
  }

  nearEnd() {
    const box = this.list;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  scrollToEnd(force) {
    if (force || this.nearEnd()) this.list.scrollTop = this.list.scrollHeight;
  }
}

function markUndelivered(clientId, p, conversation, reason) {
  conversation.pending.delete(clientId);
  p.li.dataset.state = 'undelivered';
  setBadge(p.li, 'status', reason ? `Not sent — ${reason}` : 'Not confirmed');
  const retry = h('button', { type: 'button', class: 'retry' }, 'Send again');
  retry.addEventListener('click', () => { p.li.remove(); conversation.send(p.content); });
  p.li.querySelector('.msg-body').append(retry);
}

function userItem(content, id) {
  const li = messageShell('user', 'You');
  if (id) li.dataset.messageId = id;
  li.querySelector('.msg-body').textContent = content;
  return li;
}

function replyItem() {
  return messageShell('assistant', 'Assistant');
}

function storedReplyItem(m) {
  const li = replyItem();
  li.dataset.messageId = m.id;
  li.dataset.state = m.status === 'complete' ? 'done' : m.status;
  li.dataset.model = m.model ?? '';
  li.querySelector('.msg-body').append(renderMarkdown(m.content ?? ''));
  if (m.status !== 'complete') setBadge(li, 'status', m.status === 'cancelled' ? 'Stopped' : m.status[0].toUpperCase() + m.status.slice(1));
  setMeta(li, { model: m.model, usage: m.usage, cost: m.cost_micros, finish: m.finish_reason });
  return li;
}

function messageShell(role, who) {
  return h('li', { class: `msg ${role}`, dataset: { role } },
    h('div', { class: 'msg-head' }, h('span', { class: 'who' }, who), h('span', { class: 'badges' })),
    h('div', { class: 'msg-body' }),
    h('div', { class: 'msg-meta' }));
}

/** The one badge of `kind` (replaced), or none when `text` is null. */
function setBadge(li, kind, text) {
  li.querySelector(`.badge.${kind}`)?.remove();
  if (text) addBadge(li, kind, text);
}

function addBadge(li, kind, text, title) {
  li.querySelector('.badges').append(h('span', { class: `badge ${kind}`, title }, text));
}

function setMeta(li, { model, usage, cost, finish }) {
  const parts = [];
  if (model) parts.push(h('span', { class: 'meta-model' }, model));
  if (usage) parts.push(h('span', { class: 'meta-usage' }, `${usage.input_tokens} in / ${usage.output_tokens} out tokens`));
  parts.push(h('span', { class: 'meta-cost' }, cost === null || cost === undefined ? 'cost n/a' : formatMicros(cost)));
  if (finish && finish !== 'stop') parts.push(h('span', {}, `finish: ${finish}`));
  replaceChildren(li.querySelector('.msg-meta'), parts);
}

function showToast(text) {
  const toast = $('#toast');
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(showToast.timer);
  showToast.timer = setTimeout(() => { toast.hidden = true; }, 6000);
}
