// The live console's entry point: wires the REST client, the event stream, the
// sessions list, the session view, the feed, the counters and the cluster panel.
//
// For the devtools (and the browser tests), the parts are on `window.lokiConsole`.

import { Api } from './api.js';
import { TokenPrompt } from './dialogs.js';
import { byId, el, setText } from './dom.js';
import { LEVELS } from './format.js';
import { Feed } from './feed.js';
import { SessionView } from './session_view.js';
import { SessionList } from './sessions.js';
import { EventStream } from './stream.js';

const STATS_EVERY_MS = 2000;
const STATUS_EVERY_MS = 5000;
const CONNECTION_TEXT = {
  connecting: 'connecting',
  live: 'live',
  reconnecting: 'reconnecting…',
  unauthorized: 'token needed',
};

// Both level filters offer the same choices ("info+" shows info, warn and error).
for (const select of document.querySelectorAll('.level-select')) {
  select.append(...LEVELS.map((level, rank) => el('option', {
    value: level, text: rank < LEVELS.length - 1 ? `${level}+` : level,
  })));
}

const tokenPrompt = new TokenPrompt((token) => {
  api.token = token;
  restart();
});
const api = new Api({ onUnauthorized: (message) => tokenPrompt.ask(message) });
const feed = new Feed();
const view = new SessionView(api, {
  onChanged: () => sessions.refresh(),
  onGone: () => select(null),
});
const sessions = new SessionList(api, { onSelect: (id) => select(id) });
const stream = new EventStream(api, {
  onEvents: (events) => {
    feed.add(events);
    sessions.onEvents(events);
    view.onEvents(events);
  },
  onState: showConnection,
  onUnauthorized: (message) => tokenPrompt.ask(message),
});

function showConnection(state) {
  const node = byId('connection');
  node.className = `conn conn-${state in CONNECTION_TEXT ? state : 'connecting'}`;
  setText(node, CONNECTION_TEXT[state] || state);
}

/** The selected session lives in the URL (`#session=<id>`), so a reload keeps it. */
function select(id) {
  const hash = id ? `#session=${encodeURIComponent(id)}` : '';
  if (location.hash !== hash) history.replaceState(null, '', hash || location.pathname);
  sessions.select(id);
  view.show(id);
}

function selectedFromHash() {
  const match = /^#session=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// ------------------------------------------------------------------- counters

let lastStats = null;

async function pollStats() {
  try {
    const stats = await api.get('api/events/stats');
    const now = performance.now();
    if (lastStats !== null && now > lastStats.at) {
      const rate = Math.max(0, stats.published - lastStats.published) / ((now - lastStats.at) / 1000);
      setText(byId('rate'), rate >= 10 ? Math.round(rate).toLocaleString() : rate.toFixed(1));
    }
    lastStats = { at: now, published: stats.published };
    setText(byId('subscribers'), stats.subscribers.toLocaleString());
    setText(byId('published'), stats.published.toLocaleString());
  } catch {
    // The connection state says what is wrong.
  }
}

// ------------------------------------------------------------------ cluster panel

/**
 * The cluster's nodes as /api/status lists them (ClusterInfo.nodes: {node,
 * maxSessions, running, free, alive}); a cluster that lists none yet shows
 * the node answering, with its NATS link. null: not a cluster.
 */
function clusterNodes(cluster) {
  if (!cluster) return null;
  if (cluster.nodes.length > 0) return cluster.nodes;
  return [{ node: cluster.node, state: cluster.nats.connected ? 'up' : 'NATS down' }];
}

function natsText(nats) {
  const parts = [`NATS ${nats.connected ? 'connected' : 'disconnected'}`];
  if (nats.buffered) parts.push(`${nats.buffered} buffered`);
  if (nats.lost) parts.push(`${nats.lost} lost`);
  return parts.join(', ');
}

function renderCluster(status) {
  const cluster = status.cluster ?? null;
  const nodes = clusterNodes(cluster);
  const panel = byId('nodes-panel');
  panel.hidden = nodes === null;
  if (nodes === null) return;
  setText(byId('cluster-name'), `${cluster.name} · ${natsText(cluster.nats)}`);
  byId('node-list').replaceChildren(...nodes.map((node) => {
    const state = node.state ?? (node.alive ? 'up' : 'lost');
    const facts = node.running === undefined ? '' : [
      `${node.running} running of ${node.maxSessions}`,
      `${node.free} free`,
    ].join(' · ');
    return el('li', { class: 'node', dataset: { node: node.node } },
      el('span', { class: `dot ${state === 'up' ? 's-running' : 's-failed'}` }),
      el('span', { class: 'mono', text: node.node + (node.node === cluster.node ? ' (this node)' : '') }),
      el('span', { class: 'muted', text: `${state}${facts ? ` · ${facts}` : ''}` }));
  }));
}

async function pollStatus() {
  try {
    const status = await api.get('api/status');
    setText(byId('version'), `v${status.version}`);
    renderCluster(status);
  } catch {
    // Reported by the token prompt or the connection state.
  }
}

// ------------------------------------------------------------------------ start

function restart() {
  stream.start();
  sessions.refresh();
  pollStatus();
  pollStats();
  select(selectedFromHash());
}

window.addEventListener('hashchange', () => select(selectedFromHash()));
setInterval(pollStats, STATS_EVERY_MS);
setInterval(pollStatus, STATUS_EVERY_MS);
restart();

window.lokiConsole = { api, stream, feed, sessions, view, select };
