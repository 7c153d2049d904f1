// REST calls to the Loki API, with the token (if any) as `Authorization: Bearer`.
//
// The token lives in sessionStorage (this tab only). A 401 anywhere asks the person
// for it once (`onUnauthorized`); the caller retries after they answer.

const TOKEN_KEY = 'loki.token';

export class ApiError extends Error {
  constructor(message, code, status, details) {
    super(message);
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

export class Api {
  constructor({ onUnauthorized }) {
    this.onUnauthorized = onUnauthorized;
  }

  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  /** An absolute URL for an API path, relative to the page (works behind a path prefix). */
  url(path, params = {}) {
    const url = new URL(path.replace(/^\//, ''), document.baseURI);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, String(value));
    }
    return url;
  }

  /** The event stream's URL: `?token=` because EventSource cannot send headers. */
  streamUrl(params = {}) {
    return this.url('api/events', { ...params, token: this.token || undefined });
  }

  async request(method, path, { params, body } = {}) {
    const headers = { Accept: 'application/json' };
    const token = this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(this.url(path, params), init);
    } catch {
      throw new ApiError('The server cannot be reached', 'NETWORK_ERROR', 0);
    }
    const data = await response.json().catch(() => null);
    if (response.ok) return data;
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    const error = new ApiError(message, (data && data.code) || 'HTTP_ERROR', response.status, data && data.details);
    // A 401 to a request sent before the person gave a new token is no reason to ask again.
    if (response.status === 401 && this.token === token) this.onUnauthorized(message);
    throw error;
  }

  get(path, params) {
    return this.request('GET', path, { params });
  }

  post(path, body) {
    return this.request('POST', path, { body });
  }

  delete(path) {
    return this.request('DELETE', path);
  }

  /** The status the stream would answer with, without subscribing (HEAD). */
  async streamStatus(params) {
    try {
      const response = await fetch(this.streamUrl(params), { method: 'HEAD', cache: 'no-store' });
      return response.status;
    } catch {
      return 0;
    }
  }
}
