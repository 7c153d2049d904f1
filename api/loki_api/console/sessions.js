// The sessions list (live status) and the start form.

import { byId, el, setText, throttle } from './dom.js';
import { shortId, statusClass, taskProgress } from './format.js';

// Events after which the list is read again (status, phase or task counts changed).
const REFRESH_ON = /^(session|phase):|^task:(created|completed|failed)$/;
// Statuses that change without an event of their own (see session_view.js).
const TRANSIENT = ['starting', 'stopping'];
const TRANSIENT_POLL_MS = 1000;

export class SessionList {
  constructor(api, { onSelect }) {
    this.api = api;
    this.onSelect = onSelect;
    this.sessions = [];
    this.selected = null;
    this.list = byId('session-list');
    this.empty = byId('sessions-empty');
    this.count = byId('session-count');
    this.refreshSoon = throttle(() => this.refresh(), 300);
    this.setUpStartForm();
  }

  async refresh() {
    try {
      const answer = await this.api.get('api/sessions', { limit: 1000 });
      this.sessions = answer.sessions;
      this.render();
      if (this.sessions.some((session) => TRANSIENT.includes(session.status))) {
        setTimeout(this.refreshSoon, TRANSIENT_POLL_MS);
      }
    } catch {
      // Shown by the connection state or the token prompt; the next event retries.
    }
  }

  onEvents(events) {
    if (events.some((event) => REFRESH_ON.test(event.type))) this.refreshSoon();
  }

  select(id) {
    this.selected = id;
    for (const item of this.list.children) item.classList.toggle('selected', item.dataset.id === id);
  }

  render() {
    const sessions = [...this.sessions].sort((a, b) => String(b.startedAt || '').localeCompare(String(a.startedAt || '')));
    this.empty.hidden = sessions.length > 0;
    setText(this.count, sessions.length ? `(${sessions.length})` : '');
    this.list.replaceChildren(...sessions.map((session) => this.item(session)));
  }

  item(session) {
    const [done, total] = taskProgress(session);
    const button = el('button', { type: 'button', class: 'session-item', title: session.id },
      el('span', { class: `dot ${statusClass(session.status)}` }),
      el('span', { class: 'session-name mono', text: shortId(session.id) }),
      el('span', { class: `badge ${statusClass(session.status)}`, text: session.status }),
      el('span', { class: 'session-sub muted', text: `${session.currentPhase || '–'} · ${done}/${total} tasks · ${session.provider || ''}` }));
    button.addEventListener('click', () => this.onSelect(session.id));
    const item = el('li', { dataset: { id: session.id, status: String(session.status) } }, button);
    if (session.id === this.selected) item.classList.add('selected');
    return item;
  }

  setUpStartForm() {
    const form = byId('start-form');
    const error = byId('start-error');
    const button = byId('start-button');
    form.addEventListener('submit', async (submit) => {
      submit.preventDefault();
      error.hidden = true;
      button.disabled = true;
      const prdPath = byId('prd-path').value.trim();
      const body = {
        provider: byId('provider').value,
        options: { dryRun: byId('opt-dry-run').checked, verbose: byId('opt-verbose').checked },
      };
      if (prdPath) body.prdPath = prdPath;
      try {
        const started = await this.api.post('api/sessions', body);
        await this.refresh();
        this.onSelect(started.sessionId);
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    });
  }
}
