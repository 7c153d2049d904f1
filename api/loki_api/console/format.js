// How events and sessions read as text. Pure functions: no DOM here.

export const LEVELS = ['debug', 'info', 'warn', 'error'];

export const EVENT_TYPES = [
  'session:started', 'session:paused', 'session:resumed', 'session:stopped',
  'session:completed', 'session:failed',
  'phase:started', 'phase:completed', 'phase:failed',
  'task:created', 'task:started', 'task:progress', 'task:completed', 'task:failed',
  'agent:spawned', 'agent:output', 'agent:completed', 'agent:failed',
  'log:debug', 'log:info', 'log:warn', 'log:error',
  'metrics:update', 'input:requested', 'heartbeat',
];

// CSS classes are picked from fixed tables, never built from API strings.
const DOMAINS = new Set(['session', 'phase', 'task', 'agent', 'log', 'metrics', 'input', 'heartbeat', 'gap']);
const STATUSES = new Set([
  'starting', 'running', 'paused', 'stopping', 'stopped', 'failed', 'completed',
  'pending', 'queued', 'skipped',
]);

export function domainOf(type) {
  const domain = String(type).split(':')[0];
  return DOMAINS.has(domain) ? domain : 'other';
}

export function domainClass(type) {
  return `d-${domainOf(type)}`;
}

export function statusClass(status) {
  return STATUSES.has(status) ? `s-${status}` : 's-other';
}

/** `evt_42_1732341234567` -> 42 (-1 when it is not one of our ids). */
export function seqOf(id) {
  const match = /^evt_(\d+)_\d+$/.exec(id || '');
  return match ? Number(match[1]) : -1;
}

/** The level of a log event, or null for other types. */
export function levelOf(event) {
  if (!event.type.startsWith('log:')) return null;
  const level = event.type.slice(4);
  return LEVELS.includes(level) ? level : 'info';
}

export function levelRank(level) {
  const rank = LEVELS.indexOf(level);
  return rank < 0 ? 1 : rank;
}

/** `12:03:04.123` in local time from an ISO timestamp. */
export function clock(timestamp) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return String(timestamp || '');
  const pad = (n, width = 2) => String(n).padStart(width, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

export function shortId(id) {
  if (!id) return '';
  const text = String(id);
  const match = /^session_\d+_([0-9a-z]+)$/i.exec(text);
  return match ? match[1] : text.length > 14 ? `${text.slice(0, 13)}…` : text;
}

function str(value) {
  return value === undefined || value === null ? '' : String(value);
}

function percent(progress) {
  if (typeof progress !== 'number' || !Number.isFinite(progress)) return '';
  const value = progress <= 1 ? progress * 100 : progress;
  return ` ${Math.round(value)}%`;
}

/** One line describing an event's data (what the feed and the output show). */
export function summary(event) {
  const data = event.data && typeof event.data === 'object' ? event.data : {};
  const domain = domainOf(event.type);
  switch (domain) {
    case 'session':
      return [str(data.status), str(data.message), data.exitCode != null ? `exit ${data.exitCode}` : '']
        .filter(Boolean).join(' · ');
    case 'phase':
      return `${str(data.phase)}${data.previousPhase ? ` (after ${data.previousPhase})` : ''}${percent(data.progress)}`;
    case 'task':
      return `${str(data.title)} [${str(data.status)}]${percent(data.progress)}${data.error ? ` · ${data.error}` : ''}`;
    case 'agent':
      return [str(data.agentId), str(data.type), str(data.model), str(data.task), str(data.output)]
        .filter(Boolean).join(' · ');
    case 'log':
      return data.source ? `[${data.source}] ${str(data.message)}` : str(data.message);
    case 'metrics':
      return Object.entries(data).map(([key, value]) => `${key}=${str(value)}`).join(' ');
    case 'input':
      return `asks: ${str(data.prompt)}`;
    case 'heartbeat':
      return `uptime ${Math.round(Number(data.uptime) || 0)}s · ${str(data.activeAgents)} agents · ${str(data.queuedTasks)} queued`;
    case 'gap':
      return gapText(data);
    default:
      return JSON.stringify(data);
  }
}

export function gapText(data) {
  const missed = typeof data.missed === 'number' ? `${data.missed} event(s)` : 'an unknown number of events';
  return `missed ${missed}: history no longer holds what followed ${str(data.lastEventId) || 'the last event seen'}; resumed from ${str(data.resumedFrom)}`;
}

/** Progress of a session as [done, total]. */
export function taskProgress(session) {
  return [Number(session.completedTasks) || 0, Number(session.taskCount) || 0];
}
