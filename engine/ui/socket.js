// One conversation's WebSocket (docs/websocket.md), kept alive across network drops.
//
// The token travels in `Sec-WebSocket-Protocol` (`switchyard.v1, bearer.<token>`), never in
// the URL. Every conversation event carries a gap-free `seq`; the socket remembers the last
// one it delivered and, on every (re)connect, first sends `resume {after_seq}` — so the
// server replays exactly what was missed, and anything at or below the last seq (a replay
// overlapping what we already have) is dropped here. Frames sent while disconnected wait in
// a queue and go out after the resume.

const PING_EVERY_MS = 20_000;

export class ConversationSocket {
  /**
   * @param {object} o
   * @param {string} o.conversationId
   * @param {number} o.afterSeq the last seq already shown (from the REST history)
   * @param {() => Promise<string|null>} o.token a fresh access token
   * @param {(event: object) => void} o.onEvent every new event, in seq order, plus seq-less ones
   * @param {(state: string) => void} o.onState 'connecting' | 'open' | 'reconnecting' | 'closed'
   */
  constructor({ conversationId, afterSeq, token, onEvent, onState }) {
    this.conversationId = conversationId;
    this.lastSeq = afterSeq;
    this.token = token;
    this.onEvent = onEvent;
    this.onState = onState;
    this.queue = [];
    this.ws = null;
    this.closed = false;
    this.attempt = 0;
    this.timer = null;
    this.pinger = null;
    this.connect();
  }

  async connect() {
    if (this.closed) return;
    this.onState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const token = await this.token();
    if (this.closed) return;
    if (!token) { this.onState('closed'); return; }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/ws/${encodeURIComponent(this.conversationId)}`;
    let ws;
    try {
      ws = new WebSocket(url, ['switchyard.v1', `bearer.${token}`]);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (ws !== this.ws) return;
      this.attempt = 0;
      ws.send(JSON.stringify({ type: 'resume', after_seq: this.lastSeq }));
      const waiting = this.queue.splice(0);
      for (const frame of waiting) ws.send(JSON.stringify(frame));
      this.pinger = setInterval(() => this.sendNow({ type: 'ping' }), PING_EVERY_MS);
      this.onState('open');
    });
    ws.addEventListener('message', (message) => {
      if (ws !== this.ws) return;
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      if (typeof event.seq === 'number') {
        if (event.seq <= this.lastSeq) return; // already shown: a replay overlap
        this.lastSeq = event.seq;
      }
      this.onEvent(event);
    });
    ws.addEventListener('close', () => {
      if (ws !== this.ws) return;
      clearInterval(this.pinger);
      this.ws = null;
      if (!this.closed) this.scheduleReconnect();
    });
  }

  scheduleReconnect() {
    this.onState('reconnecting');
    // 250 ms, 500 ms, 1 s … capped at 5 s, with jitter so a restarted node is not stampeded.
    const delay = Math.min(5000, 250 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Sends now if connected, else after the next resume. */
  send(frame) {
    if (!this.sendNow(frame)) this.queue.push(frame);
  }

  sendNow(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  /** Drops the connection as a network failure would; the socket reconnects and resumes. */
  drop() {
    this.ws?.close(4000, 'dropped');
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    this.ws?.close(1000, 'bye');
    this.ws = null;
    this.onState('closed');
  }
}
