// A virtualised list: however many items it holds, only the rows in view (plus a few)
// exist in the DOM, re-filled in place as the list scrolls or grows. Renders at most
// once per animation frame, so a burst of thousands of events costs one layout.

import { el } from './dom.js';

const OVERSCAN = 8;

export class VirtualList {
  /**
   * @param {HTMLElement} container a scrollable element (CSS: overflow-y auto, fixed height)
   * @param {{rowHeight: number, create: () => HTMLElement, update: (row: HTMLElement, item: any) => void,
   *          onFollow?: (following: boolean) => void}} options
   */
  constructor(container, { rowHeight, create, update, onFollow }) {
    this.container = container;
    this.rowHeight = rowHeight;
    this.create = create;
    this.update = update;
    this.onFollow = onFollow || (() => {});
    this.items = [];
    this.following = true;
    this.pending = false;
    this.spacer = el('div', { class: 'vlist-spacer' });
    this.rows = el('div', { class: 'vlist-rows' });
    this.pool = [];
    container.append(this.spacer, this.rows);
    container.addEventListener('scroll', () => this.scrolled(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(container);
  }

  /** Show `items` (the list keeps the array; call `schedule()` after pushing to it). */
  setItems(items) {
    this.items = items;
    this.schedule();
  }

  /** Keep the newest row in view as items arrive (or stop doing so). */
  setFollowing(following) {
    if (this.following === following) return;
    this.following = following;
    this.onFollow(following);
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.render());
  }

  scrolled() {
    const { scrollTop, clientHeight, scrollHeight } = this.container;
    const atBottom = scrollTop + clientHeight >= scrollHeight - this.rowHeight;
    if (atBottom !== this.following) this.setFollowing(atBottom);
    this.schedule();
  }

  render() {
    this.pending = false;
    const { container, rowHeight, items } = this;
    const total = items.length * rowHeight;
    if (this.spacer.style.height !== `${total}px`) this.spacer.style.height = `${total}px`;
    const view = container.clientHeight;
    if (this.following && container.scrollTop < total - view) container.scrollTop = total - view;
    const top = container.scrollTop;
    const first = Math.max(0, Math.floor(top / rowHeight) - OVERSCAN);
    const last = Math.min(items.length, Math.ceil((top + view) / rowHeight) + OVERSCAN);
    while (this.pool.length < last - first) {
      const row = this.create();
      this.pool.push(row);
      this.rows.append(row);
    }
    this.rows.style.transform = `translateY(${first * rowHeight}px)`;
    this.pool.forEach((row, index) => {
      const item = index < last - first ? items[first + index] : undefined;
      if (item === undefined) {
        if (!row.hidden) row.hidden = true;
        row.item = undefined;
        return;
      }
      if (row.hidden) row.hidden = false;
      if (row.item !== item) {
        row.item = item;
        this.update(row, item);
      }
    });
  }

  /** The items whose rows are in the DOM now (what a person can see, give or take). */
  visibleItems() {
    return this.pool.filter((row) => !row.hidden && row.item !== undefined).map((row) => row.item);
  }
}
