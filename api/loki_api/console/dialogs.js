// The two modal dialogs: confirming a destructive action, and asking for the token.
// Native <dialog> elements, so no window.confirm/prompt (and nothing blocks the page).

import { byId } from './dom.js';

/** Resolves true when the person confirms, false when they cancel or press Escape. */
export function confirmAction(title, text, okLabel) {
  const dialog = byId('confirm-dialog');
  byId('confirm-title').textContent = title;
  byId('confirm-text').textContent = text;
  byId('confirm-ok').textContent = okLabel;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

/** Asks for the API token once per 401 wave; `onToken` runs with what was entered. */
export class TokenPrompt {
  constructor(onToken) {
    this.dialog = byId('token-dialog');
    this.input = byId('token-input');
    this.reason = byId('token-reason');
    this.dialog.addEventListener('close', () => {
      const token = this.input.value.trim();
      this.input.value = '';
      if (token) onToken(token);
    });
    // Escape would leave the page with no way to ask again.
    this.dialog.addEventListener('cancel', (event) => event.preventDefault());
  }

  ask(message) {
    this.reason.textContent = message || 'This server needs a token.';
    if (!this.dialog.open) {
      this.dialog.showModal();
      this.input.focus();
    }
  }
}
