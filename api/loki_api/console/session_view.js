// One session: status and phase, progress, controls, input, tasks by status, agents,
// and its live output (level filter, text search). The record and the tasks are read
// over REST whenever an event says they changed; agents and output come from the
// session's events (its history first, then live ones from the shared stream).

import { confirmAction } from './dialogs.js';
import { byId, el, setText, throttle } from './dom.js';
import { eventRow, fillEventRow } from './feed.js';
import { levelOf, levelRank, seqOf, statusClass, taskProgress } from './format.js';
import { VirtualList } from './vlist.js';

const TASK_GROUPS = [
  ['running', 'Running', ['running']],
  ['pending', 'Pending', ['pending', 'queued']],
  ['completed', 'Completed', ['completed']],
  ['failed', 'Failed', ['failed']],
  ['skipped', 'Skipped', ['skipped']],
];
const CAN = {
  pause: ['running'],
  resume: ['paused'],
  stop: ['starting', 'running', 'paused'],
  input: ['running', 'paused'],
};
const ACTIVE = ['starting', 'running', 'paused', 'stopping'];
const REFRESH_ON = /^(session|phase|task):/;
// Events of the open session held at most (the oldest are dropped past it).
const MAX_EVENTS = 100000;
// `stopping` ends when the process exits, which is announced by no event of its own
// (session:stopped went out when the stop began): look again until it settles.
const TRANSIENT = ['starting', 'stopping'];
const TRANSIENT_POLL_MS = 1000;

export class SessionView {
  constructor(api, { onChanged, onGone }) {
    this.api = api;
    this.onChanged = onChanged;
    this.onGone = onGone;
    this.id = null;
    this.session = null;
    this.events = [];
    this.seen = new Set();
    this.agents = new Map();
    this.outputTotal = 0;
    this.refreshSoon = throttle(() => this.refresh(), 250);
    this.output = [];
    this.outputList = new VirtualList(byId('output-list'), {
      rowHeight: 22, create: eventRow, update: fillEventRow,
    });
    this.outputList.setItems(this.output);
    byId('output-level').addEventListener('change', () => this.renderOutput());
    byId('output-search').addEventListener('input', () => this.renderOutput());
    this.wireControls();
  }

  async show(id) {
    this.id = id;
    this.session = null;
    this.events = [];
    this.seen = new Set();
    this.agents = new Map();
    byId('session-placeholder').hidden = id !== null;
    byId('session-detail').hidden = id === null;
    this.showError('');
    if (id === null) return;
    setText(byId('sv-id'), id);
    this.renderAgents();
    this.renderOutput();
    const [history] = await Promise.allSettled([
      this.api.get('api/events/history', { sessionId: id, limit: 1000 }),
      this.refresh(),
    ]);
    if (this.id === id && history.status === 'fulfilled') this.addEvents(history.value.events);
  }

  /** Events from the stream; the ones of this session update the view. */
  onEvents(events) {
    if (this.id === null) return;
    const mine = events.filter((event) => event.sessionId === this.id);
    if (mine.length === 0) return;
    this.addEvents(mine);
    if (mine.some((event) => REFRESH_ON.test(event.type))) this.refreshSoon();
  }

  addEvents(events) {
    const fresh = [];
    for (const event of events) {
      if (!event.id || this.seen.has(event.id)) continue;
      this.seen.add(event.id);
      fresh.push(event);
    }
    if (fresh.length === 0) return;
    const last = this.events.length ? seqOf(this.events[this.events.length - 1].id) : -1;
    fresh.sort((a, b) => seqOf(a.id) - seqOf(b.id));
    for (const event of fresh) this.events.push(event);
    if (seqOf(fresh[0].id) > last) {
      // The usual case: newer than everything held, so only the new events are looked at.
      if (fresh.some((event) => event.type.startsWith('agent:'))) this.updateAgents(fresh);
      this.appendOutput(fresh);
    } else {
      // History and live events interleaved while the history request was out.
      this.events.sort((a, b) => seqOf(a.id) - seqOf(b.id));
      this.agents = new Map();
      this.updateAgents(this.events);
      this.renderOutput();
    }
    if (this.events.length > MAX_EVENTS) {
      // Fold the oldest tenth away at once, so the rebuild happens once per 10,000 events.
      const dropped = this.events.splice(0, this.events.length - MAX_EVENTS + MAX_EVENTS / 10);
      for (const event of dropped) this.seen.delete(event.id);
      this.renderOutput();
    }
  }

  async refresh() {
    const id = this.id;
    if (id === null) return;
    try {
      const [detail, tasks] = await Promise.all([
        this.api.get(`api/sessions/${encodeURIComponent(id)}`),
        this.api.get(`api/sessions/${encodeURIComponent(id)}/tasks`, { limit: 1000 }),
      ]);
      if (this.id !== id) return;
      this.session = detail.session;
      this.renderHead(detail);
      this.renderTasks(tasks.tasks);
      if (TRANSIENT.includes(detail.session.status)) setTimeout(this.refreshSoon, TRANSIENT_POLL_MS);
    } catch (failure) {
      if (this.id !== id) return;
      if (failure.status === 404) this.onGone(id);
      else this.showError(failure.message);
    }
  }

  renderHead(detail) {
    const session = detail.session;
    const status = byId('sv-status');
    status.className = `badge ${statusClass(session.status)}`;
    setText(status, session.status);
    const meta = [session.provider, session.prdPath || 'no PRD',
      session.startedAt ? `started ${new Date(session.startedAt).toLocaleString()}` : '',
      session.pid ? `pid ${session.pid}` : '',
      session.exitCode !== null && session.exitCode !== undefined ? `exit ${session.exitCode}` : '']
      .filter(Boolean).join(' · ');
    setText(byId('sv-meta'), meta);
    setText(byId('sv-phase'), session.currentPhase || '–');
    const [done, total] = taskProgress(session);
    const counts = detail.tasks || {};
    const doneCount = Math.max(done, counts.completed || 0);
    const totalCount = Math.max(total, counts.total || 0);
    byId('sv-progress').style.width = `${totalCount ? Math.round((100 * doneCount) / totalCount) : 0}%`;
    setText(byId('sv-progress-text'), `${doneCount}/${totalCount} tasks`);
    byId('btn-pause').disabled = !CAN.pause.includes(session.status);
    byId('btn-resume').disabled = !CAN.resume.includes(session.status);
    byId('btn-stop').disabled = !CAN.stop.includes(session.status);
    byId('btn-delete').disabled = ACTIVE.includes(session.status);
    const inputOpen = CAN.input.includes(session.status);
    byId('input-text').disabled = !inputOpen;
    byId('btn-input').disabled = !inputOpen;
  }

  renderTasks(tasks) {
    const groups = TASK_GROUPS.map(([key, label, statuses]) => {
      const members = tasks.filter((task) => statuses.includes(task.status));
      if (members.length === 0) return null;
      return el('div', { class: `task-group g-${key}`, dataset: { group: key } },
        el('h4', { text: `${label} (${members.length})` }),
        el('ul', {}, ...members.map((task) => this.taskItem(task))));
    }).filter(Boolean);
    if (groups.length === 0) groups.push(el('p', { class: 'muted empty', text: 'No tasks yet.' }));
    byId('task-groups').replaceChildren(...groups);
  }

  taskItem(task) {
    const item = el('li', { class: `task ${statusClass(task.status)}`, dataset: { taskId: task.id } },
      el('span', { class: 'task-title', text: task.title }),
      el('span', { class: 'task-id muted mono', text: task.id }));
    if (typeof task.progress === 'number' && task.status === 'running') {
      const bar = el('div', { class: 'progress-bar' });
      bar.style.width = `${Math.round(Math.min(1, task.progress <= 1 ? task.progress : task.progress / 100) * 100)}%`;
      item.append(el('div', { class: 'progress small' }, bar));
    }
    if (task.error) item.append(el('span', { class: 'task-error', text: task.error }));
    return item;
  }

  updateAgents(events) {
    for (const event of events) {
      if (!event.type.startsWith('agent:') || !event.data) continue;
      const data = event.data;
      const agent = this.agents.get(data.agentId) || { id: data.agentId, status: 'active' };
      agent.type = data.type || agent.type;
      agent.model = data.model || agent.model;
      agent.task = data.task || agent.task;
      if (event.type === 'agent:completed') agent.status = 'completed';
      if (event.type === 'agent:failed') agent.status = 'failed';
      this.agents.set(data.agentId, agent);
    }
    this.renderAgents();
  }

  renderAgents() {
    byId('agents-empty').hidden = this.agents.size > 0;
    byId('agent-list').replaceChildren(...[...this.agents.values()].map((agent) => el('li', { class: 'agent' },
      el('span', { class: `badge ${agent.status === 'active' ? 's-running' : statusClass(agent.status)}`, text: agent.status }),
      el('span', { class: 'mono', text: agent.id }),
      el('span', { class: 'muted', text: [agent.type, agent.model, agent.task].filter(Boolean).join(' · ') }))));
  }

  /** Is this event an output line, and does it pass the level filter and the search? */
  outputFilter() {
    const minLevel = levelRank(byId('output-level').value);
    const needle = byId('output-search').value.trim().toLowerCase();
    return (event) => {
      const level = levelOf(event);
      if (level === null ? event.type !== 'agent:output' : levelRank(level) < minLevel) return false;
      if (!needle) return true;
      const data = event.data || {};
      return String(data.message ?? data.output ?? '').toLowerCase().includes(needle);
    };
  }

  appendOutput(events) {
    const keep = this.outputFilter();
    for (const event of events) {
      if (levelOf(event) !== null || event.type === 'agent:output') this.outputTotal += 1;
      if (keep(event)) this.output.push(event);
    }
    this.showOutputCount();
  }

  renderOutput() {
    const keep = this.outputFilter();
    this.output = this.events.filter(keep);
    this.outputList.setItems(this.output);
    this.outputTotal = this.events.filter((event) => levelOf(event) !== null || event.type === 'agent:output').length;
    this.showOutputCount();
  }

  showOutputCount() {
    this.outputList.schedule();
    const shown = this.output.length;
    const total = this.outputTotal;
    setText(byId('output-count'), shown === total ? `${total} lines` : `${shown} of ${total} lines`);
  }

  showError(message) {
    const node = byId('sv-error');
    node.textContent = message;
    node.hidden = !message;
  }

  async act(action, { confirm, body } = {}) {
    const id = this.id;
    if (id === null) return;
    if (confirm && !(await confirmAction(...confirm))) return;
    this.showError('');
    const path = `api/sessions/${encodeURIComponent(id)}`;
    try {
      if (action === 'delete') {
        await this.api.delete(path);
        this.onGone(id);
      } else {
        await this.api.post(`${path}/${action}`, body);
        await this.refresh();
      }
      this.onChanged();
    } catch (failure) {
      if (this.id === id) this.showError(failure.message);
    }
  }

  wireControls() {
    byId('btn-pause').addEventListener('click', () => this.act('pause'));
    byId('btn-resume').addEventListener('click', () => this.act('resume'));
    byId('btn-stop').addEventListener('click', () => this.act('stop', {
      confirm: ['Stop this session?', `${this.id} gets SIGTERM, then SIGKILL after the server's grace period.`, 'Stop'],
    }));
    byId('btn-delete').addEventListener('click', () => this.act('delete', {
      confirm: ['Delete this session?', `The record and state directory of ${this.id} are removed. This cannot be undone.`, 'Delete'],
    }));
    byId('input-form').addEventListener('submit', async (submit) => {
      submit.preventDefault();
      const field = byId('input-text');
      const text = field.value;
      if (!text.trim()) return;
      await this.act('input', { body: { input: text } });
      if (byId('sv-error').hidden) field.value = '';
    });
  }
}
