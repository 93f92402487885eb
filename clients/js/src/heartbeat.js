/**
 * The client a page creates: presence of this browser's device, a map of the
 * watched users' presence, one connection for all the tabs of an origin.
 *
 * Every tab has a `Heartbeat`; one of them leads (it holds a Web Lock) and
 * runs the `Engine`: the one stream and the pings. The tabs talk over a
 * BroadcastChannel: each says whom it watches and whether it is visible; the
 * leader sends every change it reads to all of them. When the leader's tab
 * goes, the lock passes to another tab, which opens the stream again from
 * the last event id every tab has seen, so no change is missed.
 */

import {Engine} from "./engine.js";
import {TokenSource, tokenClaims} from "./token.js";

const DEFAULTS = {
  status: "0",
  awayStatus: null,
  present: true,
  presence: "auto",
  leaveOnPagehide: "auto",
  credentials: "same-origin",
  headers: {},
  streamOptions: {changes: "only", snapshot: "1"},
  maxUrlLength: 4000,
  backoff: {base: 1000, max: 30000},
};

function environment(overrides = {}) {
  const g = globalThis;
  return {
    fetch: g.fetch?.bind(g),
    BroadcastChannel: g.BroadcastChannel,
    locks: g.navigator?.locks,
    document: g.document,
    window: typeof g.addEventListener === "function" ? g : null,
    sendBeacon: g.navigator?.sendBeacon?.bind(g.navigator),
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (id) => g.clearTimeout(id),
    now: () => Date.now(),
    random: Math.random,
    ...overrides,
  };
}

function same(a, b) {
  if (a === null || b === null) return a === b;
  return a.time === b.time && a.status === b.status && a.online === b.online;
}

function randomId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

export class Heartbeat {
  /** @param {import("../index.js").HeartbeatOptions} options */
  constructor(options = {}) {
    this.env = environment(options.env);
    const server = options.server ?? globalThis.location?.origin;
    if (!server) throw new TypeError("heartbeat: options.server is required");
    this.options = {...DEFAULTS, ...options, server: String(server).replace(/\/+$/, ""),
                    backoff: {...DEFAULTS.backoff, ...options.backoff}};
    if (!["auto", "stream", "ping"].includes(this.options.presence)) {
      throw new TypeError('heartbeat: options.presence is "auto", "stream" or "ping"');
    }
    this.tab = randomId();
    this._watched = new Set(options.watch ?? []);
    this._store = new Map();         // userid → state | null, every tab's users
    this._lastEventId = "";
    this._idKey = null;              // the stream users that last id belongs to
    this._shared = {status: String(this.options.status), present: this.options.present !== false};
    this._tabs = new Map();          // the other live tabs: id → {watch, visible}
    this._visible = this.env.document ? this.env.document.visibilityState !== "hidden" : true;
    this._listeners = new Set();
    this._connectionListeners = new Set();
    this._connection = {state: "connecting", leader: false, opens: 0, presence: null, timeout: null};
    this._engine = null;
    this._release = null;
    this._lockAbort = null;
    this._tabRelease = null;         // ends this tab's own lock
    this._tabWatches = null;         // ends the watches on the other tabs' locks
    this._closed = false;
    this._hidden = false;            // between pagehide and pageshow
    this._updateQueued = false;
    this.tokens = new TokenSource({
      getToken: options.getToken, token: options.token, env: this.env,
      onFresh: (token) => {
        this._post({type: "token", token});
        this._engine?.tokenRefreshed();
        this._queueUpdate();  // the first token names this user (a presence stream of its own)
      },
    });
    const Channel = this.env.BroadcastChannel;
    this._channel = Channel ? new Channel(options.channel ?? `heartbeat:${this.options.server}`) : null;
    if (this._channel) this._channel.onmessage = (event) => this._receive(event.data);
    this._onVisibility = () => this._visibilityChanged();
    this._onPagehide = () => this._pagehide();
    this._onPageshow = (event) => { if (event.persisted) this._join(); };
    this._onOnline = () => this._engine?.retryNow();
    this.env.document?.addEventListener?.("visibilitychange", this._onVisibility);
    this.env.window?.addEventListener?.("pagehide", this._onPagehide);
    this.env.window?.addEventListener?.("pageshow", this._onPageshow);
    this.env.window?.addEventListener?.("online", this._onOnline);
    this._join();
  }

  // --- the map of watched users

  /** The user's presence (`{userid, time, status, online}`), or null when not known or never seen. */
  get(userid) {
    return this._store.get(userid) ?? null;
  }

  /** Every watched user's presence. */
  get users() {
    return new Map([...this._watched].map((id) => [id, this.get(id)]));
  }

  get watched() {
    return [...this._watched];
  }

  /** Call `callback(userid, state, previous)` for each change of a watched user; returns an unsubscribe. */
  onChange(callback) {
    this._listeners.add(callback);
    return () => this._listeners.delete(callback);
  }

  /** Watch these users too; what is known of them already is kept (and reported). */
  watch(users) {
    this.setWatched([...this._watched, ...users]);
  }

  unwatch(users) {
    const gone = new Set(users);
    this.setWatched([...this._watched].filter((u) => !gone.has(u)));
  }

  /** Watch exactly these users. The stream is reopened once for any number of calls in one turn. */
  setWatched(users) {
    const next = new Set(users);
    const added = [...next].filter((u) => !this._watched.has(u));
    this._watched = next;
    for (const id of added) {
      const state = this.get(id);
      if (state !== null) this._emit(id, state, null);
    }
    this._announce(false);
    this._queueUpdate();
  }

  // --- this device's presence

  /** Be present with this status (also after `leave()`); the server is told at once. */
  setStatus(status) {
    this._shared = {status: String(status), present: true};
    this._post({type: "status", ...this._shared});
    this._statusChanged();
  }

  get status() {
    return this._shared.present ? this._effectiveStatus() : null;
  }

  /** This device goes offline now (every tab of it), until `setStatus()`. */
  async leave() {
    this._shared = {...this._shared, present: false};
    this._post({type: "status", ...this._shared});
    this._statusChanged();
    const token = await this.tokens.get();
    const headers = {...this.options.headers};
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await this.env.fetch(`${this.options.server}/leave`, {
      method: "POST", headers, credentials: this.options.credentials, keepalive: true,
    });
    if (!response.ok) throw new Error(`heartbeat: /leave answered ${response.status}`);
  }

  // --- the connection

  /** `{state, leader, opens, presence, timeout, retryIn}`: the browser's one stream, as the leader sees it. */
  get connection() {
    return {...this._connection};
  }

  get isLeader() {
    return this._engine !== null;
  }

  onConnection(callback) {
    this._connectionListeners.add(callback);
    return () => this._connectionListeners.delete(callback);
  }

  /** This tab stops: it no longer watches, leads or counts as a tab (the device stays). */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._post({type: "bye", tab: this.tab});
    this._resign();
    this.tokens.stop();
    this.env.document?.removeEventListener?.("visibilitychange", this._onVisibility);
    this.env.window?.removeEventListener?.("pagehide", this._onPagehide);
    this.env.window?.removeEventListener?.("pageshow", this._onPageshow);
    this.env.window?.removeEventListener?.("online", this._onOnline);
    this._channel?.close();
  }

  // --- tabs and leadership

  _join() {
    this._hidden = false;
    this._holdTabLock();
    // Back from the back/forward cache: the tabs known before may have gone meanwhile.
    for (const tab of this._tabs.keys()) this._watchTab(tab);
    this._announce(true);
    this._elect();
  }

  _lockName(suffix) {
    return `${this.options.channel ?? `heartbeat:${this.options.server}`}:${suffix}`;
  }

  /**
   * Each tab holds a lock named after it while it lives. Another tab asking
   * for that lock is granted it when the tab is gone, however it went (a
   * crash sends no "bye"): that is how the tabs know who is left.
   */
  _holdTabLock() {
    if (!this.env.locks || !this._channel) return;
    this.env.locks.request(this._lockName(`tab:${this.tab}`), () => new Promise((resolve) => {
      this._tabRelease = resolve;
    })).catch(() => {});
  }

  _watchTab(tab) {
    if (!this.env.locks) return;
    if (!this._tabWatches) this._tabWatches = new AbortController();
    this.env.locks.request(this._lockName(`tab:${tab}`), {signal: this._tabWatches.signal}, () => {
      if (this._tabs.delete(tab)) this._queueUpdate();
    }).catch(() => {});
  }

  _elect() {
    const locks = this.env.locks;
    if (!locks || !this._channel) {
      this._lead();  // no Web Locks or no BroadcastChannel: each tab on its own
      return;
    }
    const abort = new AbortController();
    this._lockAbort = abort;
    locks.request(this._lockName("leader"), {signal: abort.signal}, () => {
      if (this._closed || this._hidden || abort.signal.aborted) return undefined;
      return new Promise((resolve) => {
        this._release = resolve;
        this._lead();
      });
    }).catch(() => {});
  }

  _lead() {
    this._post({type: "leader", tab: this.tab});
    this.tokens.lead(true);
    this._engine = new Engine(this._engineHost(), this.options, this.env, this.tokens);
    this._connection = {...this._connection, leader: true};
    this._engine.start();
  }

  /** Stop leading, and stop counting as a tab. */
  _resign() {
    this._tabRelease?.();
    this._tabRelease = null;
    this._tabWatches?.abort();
    this._tabWatches = null;
    this._lockAbort?.abort();
    this._lockAbort = null;
    this._engine?.stop();
    this._engine = null;
    this.tokens.lead(false);
    this._release?.();
    this._release = null;
  }

  _engineHost() {
    return {
      streamUsers: () => this._streamUsers(),
      status: () => this._effectiveStatus(),
      present: () => this._shared.present,
      resumeId: (key) => (key === this._idKey ? this._lastEventId : ""),
      apply: (changes, reset, lastEventId, key) => {
        this._apply(changes, reset, lastEventId, key);
        this._post({type: "update", changes, reset, lastEventId, key});
      },
      connection: (info) => {
        this._setConnection({...info, leader: true});
        this._post({type: "connection", info});
      },
    };
  }

  /** Whom the stream watches: every tab's users; with none, this user alone to hold a presence stream. */
  _streamUsers() {
    const users = new Set(this._watched);
    for (const tab of this._tabs.values()) for (const u of tab.watch) users.add(u);
    if (users.size === 0 && this._shared.present && this.options.presence !== "ping"
        && this._engine?.presenceStreams !== false) {
      const self = this.options.userid ?? tokenClaims(this.tokens.value)?.userid;
      if (typeof self === "string" && self) users.add(self);
    }
    return [...users].sort();
  }

  _effectiveStatus() {
    const away = this.options.awayStatus;
    if (away === null || away === undefined) return this._shared.status;
    const visible = this._visible || [...this._tabs.values()].some((t) => t.visible);
    return visible ? this._shared.status : String(away);
  }

  _announce(hello) {
    this._post({type: "tab", tab: this.tab, hello, watch: [...this._watched], visible: this._visible});
  }

  _post(message) {
    if (this._closed && message.type !== "bye") return;
    try {
      this._channel?.postMessage(message);
    } catch {
      // a closed channel: the page is going away
    }
  }

  _receive(message) {
    if (this._closed || !message || typeof message !== "object") return;
    switch (message.type) {
      case "tab": {
        const before = this._tabs.get(message.tab);
        this._tabs.set(message.tab, {watch: message.watch, visible: message.visible});
        if (!before) this._watchTab(message.tab);
        if (message.hello) {
          this._announce(false);
          if (this._engine) this._sync();
        }
        this._queueUpdate();
        if (this._engine && before && before.visible !== message.visible) this._engine.pingNow();
        break;
      }
      case "bye":
        this._tabs.delete(message.tab);
        this._queueUpdate();
        break;
      case "sync":
        this._shared = message.shared;
        this.tokens.adopt(message.token);
        this._setConnection({...message.connection, leader: false});
        this._apply(message.store, true, message.lastEventId, message.key);
        break;
      case "update":
        if (!this._engine) this._apply(message.changes, message.reset, message.lastEventId, message.key);
        break;
      case "connection":
        if (!this._engine) this._setConnection({...message.info, leader: false});
        break;
      case "status":
        this._shared = {status: message.status, present: message.present};
        this._statusChanged();
        break;
      case "token":
        this.tokens.adopt(message.token);
        break;
      default:
        break;
    }
  }

  /** The leader's whole state, for a tab that just joined. */
  _sync() {
    this._post({
      type: "sync", store: [...this._store], lastEventId: this._lastEventId, key: this._idKey,
      shared: this._shared, token: this.tokens.value, connection: this._connection,
    });
  }

  _queueUpdate() {
    if (!this._engine || this._updateQueued) return;
    this._updateQueued = true;
    queueMicrotask(() => {
      this._updateQueued = false;
      this._engine?.update();
    });
  }

  _statusChanged() {
    if (!this._engine) return;
    this._engine.update();
    this._engine.pingNow();
  }

  _visibilityChanged() {
    this._visible = this.env.document.visibilityState !== "hidden";
    this._announce(false);
    if (this._engine) this._engine.pingNow();
  }

  /**
   * The page is going (or into the back/forward cache). Its lock is given up
   * now, so another tab leads at once. The last tab of the device also tells
   * the server it left, with a beacon (which outlives the page), unless a
   * presence stream holds the device: its end does that after LEAVE_GRACE,
   * which a reload's new stream cancels with no offline flicker.
   */
  _pagehide() {
    if (this._closed) return;
    const alone = this._tabs.size === 0;
    const rule = this.options.leaveOnPagehide;
    const beacon = rule === true || (rule === "auto" && this._connection.presence !== "stream");
    if (alone && beacon && this._shared.present && this.env.sendBeacon) {
      const token = this.tokens.value;
      const query = token ? `?token=${encodeURIComponent(token)}` : "";
      this.env.sendBeacon(`${this.options.server}/leave${query}`);
    }
    this._hidden = true;
    this._post({type: "bye", tab: this.tab});
    this._resign();
  }

  // --- the shared map

  _apply(changes, reset, lastEventId, key) {
    if (lastEventId) {
      this._lastEventId = lastEventId;
      this._idKey = key;
    }
    const events = [];
    if (reset) {
      const incoming = new Set(changes.map(([id]) => id));
      for (const [id, previous] of [...this._store]) {
        if (incoming.has(id)) continue;
        this._store.delete(id);
        if (previous !== null) events.push([id, null, previous]);
      }
    }
    for (const [id, state] of changes) {
      const previous = this._store.get(id) ?? null;
      this._store.set(id, state);
      if (!same(previous, state)) events.push([id, state, previous]);
    }
    for (const [id, state, previous] of events) {
      if (this._watched.has(id)) this._emit(id, state, previous);
    }
  }

  _emit(userid, state, previous) {
    for (const callback of this._listeners) {
      try {
        callback(userid, state, previous);
      } catch (error) {
        queueMicrotask(() => { throw error; });
      }
    }
  }

  _setConnection(info) {
    this._connection = {...this._connection, ...info};
    const snapshot = this.connection;
    for (const callback of this._connectionListeners) callback(snapshot);
  }
}
