// Following /api/events with EventSource.
//
// The browser resumes by itself after a dropped connection or a server restart: it
// reconnects after the server's `retry:` hint and sends `Last-Event-ID`, and the server
// replays what it still holds after that id. Only when the browser gives up (an HTTP
// error answer, e.g. 401 or 503) does this module open a new EventSource, passing the
// last id as `?lastEventId=` since a new EventSource starts without one. Ids carry a
// sequence number, so an event already shown is never shown twice. A `gap` event (the
// server no longer holds what followed our last id) is handed on to be shown as such.
// Events are delivered in batches, one per animation frame.

import { EVENT_TYPES, seqOf } from './format.js';

const HISTORY = 1000; // events replayed on the first connection (the server caps it)
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
const HIDDEN_FLUSH_MS = 250; // animation frames stop in a background tab

export class EventStream {
  /**
   * @param {import('./api.js').Api} api
   * @param {{onEvents: (events: object[]) => void,
   *          onState: (state: string) => void, onUnauthorized: (message: string) => void}} handlers
   */
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.source = null;
    this.lastId = null;
    this.lastSeq = -1;
    this.queue = [];
    this.flushing = null;
    this.retryMs = RETRY_MIN_MS;
    this.retryTimer = null;
    this.state = 'connecting';
    this.duplicates = 0;
  }

  start() {
    this.close();
    const params = this.lastId ? { lastEventId: this.lastId } : { history: HISTORY };
    const source = new EventSource(this.api.streamUrl(params));
    this.source = source;
    source.addEventListener('open', () => {
      this.retryMs = RETRY_MIN_MS;
      this.setState('live');
    });
    source.addEventListener('error', () => this.failed(source));
    const receive = (message) => this.receive(message);
    for (const type of EVENT_TYPES) source.addEventListener(type, receive);
    source.addEventListener('gap', (message) => this.gap(message));
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.source !== null) this.source.close();
    this.source = null;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.handlers.onState(state);
  }

  receive(message) {
    const seq = seqOf(message.lastEventId);
    if (seq !== -1 && seq <= this.lastSeq) {
      this.duplicates += 1;
      return;
    }
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (seq !== -1) {
      this.lastSeq = seq;
      this.lastId = message.lastEventId;
    }
    this.queue.push(event);
    this.scheduleFlush();
  }

  gap(message) {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      data = {};
    }
    // The replay restarts at `resumedFrom`; after a reset state directory that may be
    // below what we saw, and those events are new ones, not repeats.
    const resumed = seqOf(data.resumedFrom);
    if (resumed !== -1) this.lastSeq = Math.min(this.lastSeq, resumed - 1);
    this.queue.push({ id: null, type: 'gap', timestamp: new Date().toISOString(), sessionId: null, data });
    this.scheduleFlush();
  }

  scheduleFlush() {
    if (this.flushing !== null) return;
    const flush = () => {
      if (this.flushing === null) return;
      cancelAnimationFrame(this.flushing.frame);
      clearTimeout(this.flushing.timer);
      this.flushing = null;
      const batch = this.queue;
      this.queue = [];
      this.handlers.onEvents(batch);
    };
    this.flushing = { frame: requestAnimationFrame(flush), timer: setTimeout(flush, HIDDEN_FLUSH_MS) };
  }

  async failed(source) {
    if (source !== this.source) return;
    if (source.readyState === EventSource.CONNECTING) {
      this.setState('reconnecting'); // the browser retries by itself, with Last-Event-ID
      return;
    }
    // The browser gave up: find out why with a HEAD of the same request.
    this.setState('reconnecting');
    const status = await this.api.streamStatus(this.lastId ? { lastEventId: this.lastId } : {});
    if (source !== this.source) return;
    if (status === 401) {
      this.setState('unauthorized');
      this.handlers.onUnauthorized('The event stream needs a token');
      return;
    }
    this.retryTimer = setTimeout(() => this.start(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }
}
