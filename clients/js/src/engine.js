/**
 * What the leading tab does for the whole browser: hold the one stream, keep
 * the device present (a presence stream, else pings), reconnect.
 *
 * The engine knows nothing of tabs: the `host` (the `Heartbeat` of the
 * leading tab) tells it whom to watch and with which status, and takes the
 * events it reads.
 */

import {Backoff, retryAfter} from "./backoff.js";
import {SseParser} from "./sse.js";

/** The server's `PRESENCE_TIMEOUT` when it does not say (SPEC §6 default). */
export const DEFAULT_PRESENCE_TIMEOUT = 60;
const TIMEOUT_HEADER = "Heartbeat-Presence-Timeout";
/** A stream that stayed up this long ends the backoff: the next failure starts again small. */
const STABLE_MS = 10000;

/**
 * One event object of a stream, or one entry of a snapshot, as the map keeps it.
 * @returns {{userid: string, time: number, status: string, online: boolean} | null}
 */
export function presenceState(userid, value) {
  if (!value || value.erased) return null;
  return {userid, time: value.time, status: value.status, online: value.online ?? true};
}

/**
 * The changes one SSE event carries: `[userid, state]` pairs, and whether they
 * are the stream's whole state (a snapshot).
 */
export function eventChanges(event) {
  let body;
  try {
    body = JSON.parse(event.data);
  } catch {
    return null;
  }
  if (!body || typeof body !== "object") return null;
  if (event.type === "snapshot") {
    const users = body.users ?? {};
    return {changes: Object.keys(users).map((id) => [id, presenceState(id, users[id])]), reset: true};
  }
  if (event.type === "batch") {
    const list = Array.isArray(body.changes) ? body.changes : [];
    return {changes: list.filter((c) => c && typeof c.userid === "string")
      .map((c) => [c.userid, presenceState(c.userid, c)]), reset: false};
  }
  if (event.type === "message" && typeof body.userid === "string") {
    if (body.clientid !== undefined) return null;  // a device event: not the user's state
    return {changes: [[body.userid, presenceState(body.userid, body)]], reset: false};
  }
  return null;
}

export class Engine {
  /**
   * @param {object} host the leading tab: `streamUsers()`, `status()`, `present()`,
   *   `resumeId(key)`, `apply(changes, reset, lastEventId, key)`, `connection(info)`
   * @param {object} options the client's options
   * @param {object} env fetch, timers, clock, random
   * @param {import("./token.js").TokenSource} tokens
   */
  constructor(host, options, env, tokens) {
    this.host = host;
    this.options = options;
    this.env = env;
    this.tokens = tokens;
    this.backoff = new Backoff({...options.backoff, random: env.random});
    this.pingBackoff = new Backoff({...options.backoff, random: env.random});
    this.timeout = options.presenceTimeout ?? DEFAULT_PRESENCE_TIMEOUT;
    /** Whether the server holds presence streams (null: not known yet). */
    this.presenceStreams = options.presence === "stream" ? true : null;
    this.postUnsupported = false;
    this.current = null;   // the open stream
    this.pending = null;   // a stream being opened (it replaces `current` once answered)
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastPing = -Infinity;
    this.pinging = false;
    this.stopped = false;
    this.opens = 0;
    this.state = null;
    this.refused = 0;      // 401s in a row
    this.probing = false;
  }

  /**
   * Lead: open the stream and ping at once (whether the server will hold a
   * presence stream is known only once it answers; one ping too many is cheap).
   */
  start() {
    this.update();
    if (this.host.present()) this.ping();
  }

  stop() {
    this.stopped = true;
    for (const attempt of [this.current, this.pending]) attempt?.controller.abort();
    this.current = this.pending = null;
    this._clear("retryTimer");
    this._clear("pingTimer");
  }

  /** Whom to watch, or whether to be present, changed: reopen if the stream must differ. */
  update() {
    if (this.stopped) return;
    const wanted = this.wanted();
    const have = this.pending ?? this.current;
    if (wanted === null) {
      if (this.state === "idle") return;
      for (const attempt of [this.current, this.pending]) attempt?.controller.abort();
      this.current = this.pending = null;
      this._clear("retryTimer");
      this.report("idle");
      this.pingSoon(this.pingDue());
      return;
    }
    if (have && have.key === wanted.key) return;
    if (!have && this.retryTimer !== null) {
      // Waiting out a backoff: the new set is used when it ends.
      return;
    }
    this.open(wanted);
  }

  /** The token changed: a stream opened with the old one is replaced before it ends at `exp`. */
  tokenRefreshed() {
    if (this.stopped || !this.current || this.pending) return;
    this.open(this.wanted());
  }

  /** The network is back (the browser's `online` event): no need to wait out the backoff. */
  retryNow() {
    if (this.stopped || this.retryTimer === null || this.current) return;
    this.retry(0);
  }

  /** The status changed, or a tab came into view: tell the server now. */
  pingNow() {
    if (this.stopped || !this.host.present()) return;
    this.ping();
  }

  /** The stream the browser needs now, or null for none. */
  wanted() {
    const users = this.host.streamUsers();
    if (users.length === 0) return null;
    const usesPresence = this.host.present() && this.options.presence !== "ping";
    const key = users.join("\n");
    return {users, usersKey: key, presence: usesPresence, key: `${key}\n${usesPresence}`};
  }

  /** The device is kept online by an open presence stream (no pings needed). */
  presenceHeld() {
    return Boolean(this.current?.presenceHeld);
  }

  async open(wanted, afterFailure = false) {
    if (this.stopped || wanted === null) return;
    this._clear("retryTimer");
    this.pending?.controller.abort();
    const attempt = {...wanted, controller: new AbortController(), presenceHeld: false, openedAt: 0};
    this.pending = attempt;
    if (!this.current) this.report(afterFailure ? "reconnecting" : "connecting");
    let response;
    try {
      const token = await this.tokens.get();
      if (attempt !== this.pending) return;
      response = await this.env.fetch(...this.request(attempt, token));
    } catch (error) {
      if (attempt === this.pending) this.failed(attempt, 0, error);
      return;
    }
    if (attempt !== this.pending) {
      attempt.controller.abort();
      return;
    }
    if (!response.ok) {
      response.body?.cancel?.().catch?.(() => {});
      this.refusedWith(attempt, response);
      return;
    }
    this.refused = 0;
    this.pending = null;
    const previous = this.current;
    this.current = attempt;
    previous?.controller.abort();
    attempt.openedAt = this.env.now();
    this.readTimeout(response);
    attempt.presenceHeld = attempt.presence && this.presenceStreams === true;
    if (attempt.presence && this.presenceStreams === null) this.probe(attempt);
    this.opens += 1;
    this.report("live");
    if (attempt.presenceHeld) this._clear("pingTimer");
    else this.pingSoon(this.pingDue());
    this.read(attempt, response);
  }

  /**
   * Whether the server holds presence streams, asked in a way only such a
   * server understands: `presence=` with a status no ping may have is `400`
   * there (SPEC §2), and an ignored parameter (a `200` stream, closed at once)
   * on a server without them. Asked once per leading tab; pings go on until
   * the answer is yes. (Not the stream's Heartbeat-Presence-Timeout header:
   * it tells the pace, and a server may send it without presence streams.)
   */
  async probe(attempt) {
    if (this.probing) return;
    this.probing = true;
    const controller = new AbortController();
    try {
      const token = await this.tokens.get();
      const headers = {Accept: "text/event-stream", ...this.options.headers};
      if (token) headers.Authorization = `Bearer ${token}`;
      const users = new URLSearchParams([["user", attempt.users[0]], ["presence", "\n"]]);
      const response = await this.env.fetch(`${this.options.server}/subscribe?${users}`, {
        headers, signal: controller.signal, cache: "no-store", credentials: this.options.credentials});
      if (response.status === 400) this.presenceStreams = true;
      else if (response.ok) this.presenceStreams = false;
    } catch {
      // unknown yet: the next stream asks again
    } finally {
      controller.abort();
      this.probing = false;
    }
    if (this.stopped) return;
    if (this.presenceStreams === false) {
      this.update();  // a stream kept only for presence is not needed
      return;
    }
    if (this.presenceStreams !== true) return;
    const current = this.current;
    if (current?.presence && !current.presenceHeld) {
      current.presenceHeld = true;
      this._clear("pingTimer");
      this.report(this.state);
    }
  }

  request(attempt, token) {
    const server = this.options.server;
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(this.options.streamOptions)) query.append(name, value);
    if (attempt.presence) query.append("presence", this.host.status());
    const headers = {Accept: "text/event-stream", ...this.options.headers};
    if (token) headers.Authorization = `Bearer ${token}`;
    const resume = this.host.resumeId(attempt.usersKey);
    if (resume) headers["Last-Event-ID"] = resume;
    attempt.resumed = Boolean(resume);
    const init = {headers, signal: attempt.controller.signal, cache: "no-store",
                  credentials: this.options.credentials};
    const users = new URLSearchParams(attempt.users.map((u) => ["user", u]));
    const get = `${server}/subscribe?${users}&${query}`;
    attempt.post = get.length > this.options.maxUrlLength && !this.postUnsupported;
    if (!attempt.post) return [get, {...init, method: "GET"}];
    headers["Content-Type"] = "application/json";
    return [`${server}/subscribe?${query}`,
            {...init, method: "POST", body: JSON.stringify({users: attempt.users})}];
  }

  async read(attempt, response) {
    const parser = new SseParser((event) => {
      if (attempt !== this.current) return;
      const parsed = eventChanges(event);
      // A snapshot is the stream's whole state only on a fresh stream; after
      // a resume it may hold just the users that changed.
      const reset = parsed?.reset && !attempt.resumed;
      if (parsed) this.host.apply(parsed.changes, reset, event.lastEventId, attempt.usersKey);
    });
    const decoder = new TextDecoder();
    try {
      const reader = response.body.getReader();
      for (;;) {
        const {done, value} = await reader.read();
        if (done || attempt !== this.current) break;
        parser.push(decoder.decode(value, {stream: true}));
        this.activity();
      }
    } catch {
      // aborted, or the connection dropped: both end the stream below
    }
    if (attempt !== this.current || this.stopped) return;
    this.current = null;
    if (this.env.now() - attempt.openedAt >= STABLE_MS) this.backoff.reset();
    if (!this.presenceHeld()) this.pingSoon(this.pingDue());
    if (this.pending) return;  // its replacement is on its way
    // The server ends a stream at its token's exp: that is no failure, and
    // the fresh token is fetched as it reopens.
    if (this.tokens.expiring(1000)) this.retry(0);
    else this.retry(this.backoff.next());
  }

  refusedWith(attempt, response) {
    const status = response.status;
    if (status === 401 && this.tokens.getToken && this.refused === 0) {
      this.refused += 1;
      this.tokens.invalidate();
      this.pending = null;
      this.open(attempt);  // at once, with a fresh token
      return;
    }
    if (attempt.post && (status === 404 || status === 405 || status === 413)) {
      // An older server: no POST /subscribe (its answer: the route or method
      // unknown, or the body over the ping's 4 KiB limit). GET it is.
      this.postUnsupported = true;
      this.pending = null;
      this.open(attempt);
      return;
    }
    if (status === 401) this.refused += 1;
    const wait = retryAfter(response.headers.get("Retry-After"), this.env.now());
    this.failed(attempt, wait, new Error(`stream answered ${status}`));
  }

  failed(attempt, atLeast) {
    this.pending = null;
    // With a stream still open (a replacement failed) it keeps serving meanwhile.
    this.retry(Math.max(atLeast, this.backoff.next()));
  }

  retry(delay) {
    if (this.stopped) return;
    if (!this.current) this.report("reconnecting", delay);
    this._clear("retryTimer");
    const again = () => {
      this.retryTimer = null;
      const wanted = this.wanted();
      if (wanted === null) this.update();
      else this.open(wanted, true);
    };
    // No timer for "now": a background tab's timers may run a minute late.
    if (delay <= 0) again();
    else this.retryTimer = this.env.setTimeout(again, delay);
  }

  report(state, retryIn = null) {
    this.state = state;
    this.host.connection({
      state, retryIn, opens: this.opens,
      presence: !this.host.present() ? null
        : this.presenceHeld() ? "stream" : "ping",
      timeout: this.timeout,
    });
  }

  // Presence by pings: when no presence stream holds the device.

  /** Milliseconds between pings: half the server's timeout, so one lost ping is survived. */
  get interval() {
    return (this.timeout * 1000) / 2;
  }

  pingDue() {
    return Math.max(0, this.lastPing + this.interval - this.env.now());
  }

  /**
   * Any byte of the stream: a chance to ping, or refresh the token, when the
   * timer is late. A background tab's timers may be throttled to once a
   * minute; the stream's keep-alives still arrive.
   */
  activity() {
    this.tokens.refreshIfDue();
    if (!this.presenceHeld() && this.host.present() && !this.pinging && this.pingDue() === 0) this.ping();
  }

  pingSoon(delay) {
    this._clear("pingTimer");
    if (this.stopped || !this.host.present() || this.presenceHeld()) return;
    this.pingTimer = this.env.setTimeout(() => {
      this.pingTimer = null;
      this.ping();
    }, delay);
  }

  async ping() {
    this._clear("pingTimer");
    if (this.stopped || !this.host.present()) return;
    this.pinging = true;
    this.lastPing = this.env.now();
    let next = this.interval;
    try {
      const token = await this.tokens.get();
      const headers = {"Content-Type": "application/json", ...this.options.headers};
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await this.env.fetch(`${this.options.server}/ping`, {
        method: "POST", headers, body: JSON.stringify({status: this.host.status()}),
        credentials: this.options.credentials, keepalive: true, cache: "no-store",
      });
      this.readTimeout(response);
      next = this.interval;
      if (response.ok) {
        this.pingBackoff.reset();
      } else {
        if (response.status === 401) this.tokens.invalidate();
        const wait = retryAfter(response.headers.get("Retry-After"), this.env.now());
        next = Math.min(this.interval, Math.max(wait, this.pingBackoff.next()));
      }
    } catch {
      next = Math.min(this.interval, this.pingBackoff.next());
    } finally {
      this.pinging = false;
    }
    if (!this.stopped && this.host.present() && !this.presenceHeld()) {
      this.lastPing = this.env.now() - this.interval + next;
      this.pingSoon(next);
    }
  }

  /** The server's `PRESENCE_TIMEOUT` from an answer, kept for pacing; null when absent. */
  readTimeout(response) {
    const value = Number.parseFloat(response.headers.get(TIMEOUT_HEADER) ?? "");
    if (!(value > 0)) return null;
    if (value !== this.timeout) {
      this.timeout = value;
      if (this.state) this.report(this.state);
    }
    return value;
  }

  _clear(name) {
    if (this[name] !== null) this.env.clearTimeout(this[name]);
    this[name] = null;
  }
}
