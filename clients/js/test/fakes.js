/**
 * A fake browser for the client's unit tests: a clock, a server behind
 * `fetch`, BroadcastChannel, Web Locks, document and window events.
 */

const encoder = new TextEncoder();

/** Let every pending promise, stream read and channel message run. */
export async function flush(rounds = 20) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 1_800_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, {at: this.time + Math.max(0, ms ?? 0), fn});
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
    this.now = () => this.time;
  }

  /** Move time forward, running each timer when its moment comes. */
  async advance(ms) {
    const end = this.time + ms;
    await flush();
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.time = Math.max(this.time, next[1].at);
      next[1].fn();
      await flush();
    }
    this.time = end;
    await flush();
  }
}

/** One open event stream the fake server answered; the test writes to it. */
export class FakeStream {
  constructor(request) {
    this.request = request;
    this.closed = false;
    this.aborted = false;
    this.body = new ReadableStream({start: (controller) => { this.controller = controller; }});
    request.init.signal?.addEventListener("abort", () => {
      this.aborted = true;
      this.end(new DOMException("aborted", "AbortError"));
    });
  }

  write(text) {
    if (!this.closed) this.controller.enqueue(encoder.encode(text));
  }

  event(data, {id, type} = {}) {
    this.write(`${type ? `event: ${type}\n` : ""}${id ? `id: ${id}\n` : ""}data: ${JSON.stringify(data)}\n\n`);
  }

  end(error) {
    if (this.closed) return;
    this.closed = true;
    if (error) this.controller.error(error);
    else this.controller.close();
  }
}

/**
 * `fetch` against a scripted server. `handler(request)` answers each request
 * with `{status, headers, body}` or `"stream"` (a FakeStream, 200); by default
 * pings and leaves get 200 and subscribes a stream.
 */
export class FakeServer {
  constructor(handler = () => null) {
    this.handler = handler;
    this.requests = [];
    this.streams = [];
    this.streamHeaders = {};
    this.pingHeaders = {};
    this.fetch = async (url, init = {}) => {
      const parsed = new URL(url);
      const headers = new Headers(init.headers ?? {});
      const request = {url: parsed, path: parsed.pathname, method: init.method ?? "GET",
                       headers, body: init.body, init};
      this.requests.push(request);
      const answer = this.handler(request) ?? this.default(request);
      if (answer instanceof Error) throw answer;
      if (answer === "stream") {
        const stream = new FakeStream(request);
        this.streams.push(stream);
        return new Response(stream.body, {status: 200,
          headers: {"Content-Type": "text/event-stream", ...this.streamHeaders}});
      }
      return new Response(answer.body ?? null, {status: answer.status ?? 200, headers: answer.headers ?? {}});
    };
  }

  /** Be a server with presence streams (SPEC §2): the header on streams, a bad `presence=` refused. */
  offerPresenceStreams(timeout = "10") {
    this.streamHeaders = {"Heartbeat-Presence-Timeout": timeout};
    this.presenceStreams = true;
  }

  default(request) {
    const presence = request.url.searchParams.get("presence");
    if (this.presenceStreams && presence !== null && !/^[^\x00-\x1f\x7f]{1,64}$/.test(presence)) {
      return {status: 400, body: '{"error": "bad status"}'};
    }
    if (request.path.startsWith("/subscribe")) return "stream";
    if (request.path === "/ping") return {status: 200, headers: this.pingHeaders};
    return {status: 200};
  }

  get pings() {
    return this.requests.filter((r) => r.path === "/ping");
  }

  get subscribes() {
    return this.requests.filter((r) => r.path.startsWith("/subscribe"));
  }

  /** Streams not ended by either side. */
  get open() {
    return this.streams.filter((s) => !s.closed);
  }
}

/** BroadcastChannel between the fake tabs of one test (messages delivered asynchronously). */
export function channels() {
  const all = new Set();
  return class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      all.add(this);
    }

    postMessage(message) {
      if (!all.has(this)) throw new DOMException("closed", "InvalidStateError");
      const copy = structuredClone(message);
      for (const other of all) {
        if (other !== this && other.name === this.name) {
          setImmediate(() => all.has(other) && other.onmessage?.({data: copy}));
        }
      }
    }

    close() {
      all.delete(this);
    }
  };
}

/** Web Locks: exclusive locks granted in request order; a lock is held until its callback's promise settles. */
export class FakeLocks {
  constructor() {
    this.held = new Map();
    this.queues = new Map();
  }

  request(name, options, callback) {
    if (typeof options === "function") [options, callback] = [{}, options];
    return new Promise((resolve, reject) => {
      const entry = {callback, resolve, reject};
      options.signal?.addEventListener("abort", () => {
        const queue = this.queues.get(name) ?? [];
        const index = queue.indexOf(entry);
        if (index >= 0) {
          queue.splice(index, 1);
          reject(new DOMException("aborted", "AbortError"));
        }
      });
      const queue = this.queues.get(name) ?? [];
      this.queues.set(name, queue);
      queue.push(entry);
      this._grant(name);
    });
  }

  _grant(name) {
    if (this.held.has(name)) return;
    const entry = (this.queues.get(name) ?? []).shift();
    if (!entry) return;
    this.held.set(name, entry);
    Promise.resolve().then(() => entry.callback({name})).then(entry.resolve, entry.reject).finally(() => {
      this.held.delete(name);
      this._grant(name);
    });
  }
}

/** `document` and `window` stand-ins with the events the client listens to. */
export class FakePage {
  constructor() {
    this.listeners = new Map();
    this.visibilityState = "visible";
    this.beacons = [];
    this.sendBeacon = (url) => { this.beacons.push(url); return true; };
  }

  addEventListener(type, fn) {
    (this.listeners.get(type) ?? this.listeners.set(type, new Set()).get(type)).add(fn);
  }

  removeEventListener(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  dispatch(type, event = {}) {
    for (const fn of [...(this.listeners.get(type) ?? [])]) fn({type, ...event});
  }

  hide() {
    this.visibilityState = "hidden";
    this.dispatch("visibilitychange");
  }

  show() {
    this.visibilityState = "visible";
    this.dispatch("visibilitychange");
  }
}

/** An unsigned JWT-shaped token (the client only reads its claims). */
export function token(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({alg: "HS256", typ: "JWT"})}.${part(claims)}.signature`;
}

/** A browser: one server, clock, channel and lock manager shared by its tabs. */
export class FakeBrowser {
  constructor(handler) {
    this.clock = new FakeClock();
    this.server = new FakeServer(handler);
    this.BroadcastChannel = channels();
    this.locks = new FakeLocks();
  }

  /** The env of one more tab. */
  tab(random = () => 0.5) {
    const page = new FakePage();
    return {
      page,
      env: {
        fetch: this.server.fetch, BroadcastChannel: this.BroadcastChannel, locks: this.locks,
        document: page, window: page, sendBeacon: page.sendBeacon,
        setTimeout: this.clock.setTimeout, clearTimeout: this.clock.clearTimeout,
        now: this.clock.now, random,
      },
    };
  }
}
