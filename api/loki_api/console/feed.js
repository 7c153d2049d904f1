// The global event feed: every event the stream delivers, filtered by type and level,
// in a virtualised list. Holds at most MAX_EVENTS; past that the oldest are folded
// away (counted, not shown) so memory stays bounded however long the page stays open.

import { byId, el, setText } from './dom.js';
import {
  EVENT_TYPES, clock, domainClass, domainOf, levelOf, levelRank, shortId, summary,
} from './format.js';
import { VirtualList } from './vlist.js';

const MAX_EVENTS = 100000;
const FOLD = 10000;
const ROW_HEIGHT = 22;

/** A row: time, type, session, summary; filled from an event with textContent only. */
export function eventRow() {
  return el('div', { class: 'vrow' },
    el('span', { class: 'c-time' }), el('span', { class: 'c-type' }),
    el('span', { class: 'c-session' }), el('span', { class: 'c-text' }));
}

export function fillEventRow(row, event) {
  const [time, type, session, text] = row.children;
  row.className = `vrow ${domainClass(event.type)}${event.type === 'gap' ? ' gap-row' : ''}`;
  setText(time, clock(event.timestamp));
  setText(type, event.type);
  setText(session, shortId(event.sessionId));
  session.title = event.sessionId || '';
  setText(text, summary(event));
  text.title = text.textContent;
}

export class Feed {
  constructor() {
    this.all = [];
    this.shown = [];
    this.folded = 0;
    this.typeFilter = '';
    this.minLevel = 'debug';
    this.typeSelect = byId('feed-type');
    this.levelSelect = byId('feed-level');
    this.follow = byId('feed-follow');
    this.count = byId('feed-count');
    this.list = new VirtualList(byId('feed-list'), {
      rowHeight: ROW_HEIGHT,
      create: eventRow,
      update: fillEventRow,
      onFollow: (following) => { this.follow.checked = following; },
    });
    this.list.setItems(this.shown);
    this.fillTypeOptions();
    this.typeSelect.addEventListener('change', () => this.setFilter(this.typeSelect.value, this.minLevel));
    this.levelSelect.addEventListener('change', () => this.setFilter(this.typeFilter, this.levelSelect.value));
    this.follow.addEventListener('change', () => this.list.setFollowing(this.follow.checked));
  }

  fillTypeOptions() {
    const groups = new Map();
    for (const type of EVENT_TYPES) {
      const domain = domainOf(type);
      if (!groups.has(domain)) groups.set(domain, []);
      groups.get(domain).push(type);
    }
    this.typeSelect.append(el('option', { value: '', text: 'all types' }));
    for (const [domain, types] of groups) {
      const group = el('optgroup', { label: domain });
      if (types.length > 1) group.append(el('option', { value: `${domain}:*`, text: `${domain}:*` }));
      for (const type of types) group.append(el('option', { value: type, text: type }));
      this.typeSelect.append(group);
    }
    this.typeSelect.append(el('option', { value: 'gap', text: 'gap' }));
  }

  matches(event) {
    const filter = this.typeFilter;
    if (filter) {
      if (filter.endsWith(':*') ? domainOf(event.type) !== filter.slice(0, -2) : event.type !== filter) {
        return false;
      }
    }
    const level = levelOf(event);
    return level === null || levelRank(level) >= levelRank(this.minLevel);
  }

  /** New events from the stream, oldest first. */
  add(events) {
    for (const event of events) {
      this.all.push(event);
      if (this.matches(event)) this.shown.push(event);
    }
    if (this.all.length > MAX_EVENTS) this.fold();
    this.list.schedule();
    this.showCount();
  }

  fold() {
    const dropped = this.all.length - MAX_EVENTS + FOLD;
    const oldest = new Set(this.all.splice(0, dropped));
    this.folded += dropped;
    let keepFrom = 0;
    while (keepFrom < this.shown.length && oldest.has(this.shown[keepFrom])) keepFrom += 1;
    this.shown.splice(0, keepFrom);
  }

  setFilter(type, minLevel) {
    this.typeFilter = type;
    this.minLevel = minLevel;
    this.shown = this.all.filter((event) => this.matches(event));
    this.list.setItems(this.shown);
    this.showCount();
  }

  showCount() {
    const folded = this.folded ? ` (${this.folded.toLocaleString()} older folded)` : '';
    const total = this.all.length.toLocaleString();
    setText(this.count, this.shown.length === this.all.length
      ? `${total} events${folded}`
      : `${this.shown.length.toLocaleString()} of ${total} events${folded}`);
  }

  /** Ids of every event held, oldest first (gap rows have none). */
  ids() {
    return this.all.filter((event) => event.id).map((event) => event.id);
  }
}
