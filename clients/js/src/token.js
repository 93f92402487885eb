/**
 * The caller's token: fetched with `getToken()`, refreshed before its `exp`
 * and after a 401, so a stream is reopened with a fresh one before the
 * server ends it at `exp`.
 */

/** A JWT's claims, or null when it is not a readable JWT (it is then used as is). */
export function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const text = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

export class TokenSource {
  /**
   * @param {object} options
   * @param {(() => string | null | Promise<string | null>) | undefined} options.getToken
   * @param {string | undefined} options.token a fixed token (no refresh)
   * @param {{setTimeout: Function, clearTimeout: Function, now: () => number}} options.env
   * @param {(token: string | null) => void} [options.onFresh] a refreshed token arrived
   */
  constructor({getToken, token, env, onFresh = () => {}}) {
    this.getToken = getToken;
    this.env = env;
    this.onFresh = onFresh;
    /** The last token obtained, for synchronous uses (`sendBeacon` on pagehide). */
    this.value = token ?? null;
    this._expires = null;
    this._refreshAt = null;
    this._fetching = null;
    this._timer = null;
    this._stopped = false;
    /** Only the leading tab refreshes ahead of `exp`; the others adopt what it sends. */
    this.refreshing = false;
    this._track(this.value);
  }

  /** Refresh ahead of `exp` (this tab leads) or not (another tab does). */
  lead(refreshing) {
    this.refreshing = refreshing;
    this._track(this.value);
  }

  /** A token another tab obtained. */
  adopt(token) {
    if (token === this.value) return;
    this.value = token;
    this._track(token);
  }

  get enabled() {
    return Boolean(this.getToken) || this.value !== null;
  }

  /** A token valid now (fetching one first when there is none, or it has expired). */
  async get() {
    if (!this.getToken) return this.value;
    if (this.value === null || this._expired()) return this.refresh();
    return this.value;
  }

  /** The server refused the token (401): the next `get()` asks for a new one. */
  invalidate() {
    if (this.getToken) this._expires = 0;
  }

  /** Ask `getToken()` now; concurrent callers share one call. */
  refresh() {
    if (!this.getToken) return Promise.resolve(this.value);
    if (!this._fetching) {
      this._fetching = (async () => {
        try {
          const token = (await this.getToken()) ?? null;
          if (this._stopped) return token;
          const renewed = token !== this.value;
          this.value = token;
          this._track(token);
          if (renewed) this.onFresh(token);
          return token;
        } finally {
          this._fetching = null;
        }
      })();
    }
    return this._fetching;
  }

  stop() {
    this._stopped = true;
    if (this._timer !== null) this.env.clearTimeout(this._timer);
    this._timer = null;
  }

  /**
   * Refresh now if it is past time (the timer of a background tab may fire a
   * minute late; the stream's keep-alives call this).
   */
  refreshIfDue() {
    if (this.getToken && this.refreshing && !this._fetching && this._refreshAt !== null
        && this.env.now() >= this._refreshAt) {
      this.refresh().catch(() => {});
    }
  }

  /** Whether the token has expired, or will within `ms`. */
  expiring(ms = 0) {
    return this._expires !== null && this.env.now() + ms >= this._expires;
  }

  _expired() {
    return this._expires !== null && this.env.now() >= this._expires;
  }

  /**
   * Refresh a quarter of the token's remaining life before its `exp` (at most
   * 30 s before): late enough to use it, early enough to reopen the stream
   * with no gap.
   */
  _track(token) {
    if (this._timer !== null) this.env.clearTimeout(this._timer);
    this._timer = null;
    const exp = tokenClaims(token)?.exp;
    if (typeof exp !== "number") {
      this._expires = this._refreshAt = null;
      return;
    }
    const now = this.env.now();
    this._expires = exp * 1000;
    const margin = Math.min(30000, Math.max(0, this._expires - now) / 4);
    this._refreshAt = this._expires - margin;
    if (!this.getToken || this._stopped || !this.refreshing) return;
    const delay = Math.max(0, this._refreshAt - now);
    this._timer = this.env.setTimeout(() => {
      this._timer = null;
      this.refresh().catch(() => this.env.setTimeout(() => this.refresh().catch(() => {}), 1000));
    }, delay);
  }
}
