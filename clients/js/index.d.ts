/** heartbeat's browser client: presence, a presence map, one connection per browser. */

/** A user's presence as the server last said it. */
export interface PresenceState {
  userid: string;
  /** The last ping's time, whole seconds since the epoch ("last seen"). */
  time: number;
  /** The last ping's status (by convention "0" active, "1" away, "2" do not disturb, "3" invisible). */
  status: string;
  online: boolean;
}

export type ConnectionState = "connecting" | "live" | "reconnecting" | "idle";

export interface ConnectionInfo {
  state: ConnectionState;
  /** Whether this tab holds the browser's stream. */
  leader: boolean;
  /** Streams the leader has opened so far (a reconnect adds one). */
  opens: number;
  /** How this device is kept online: by its presence stream, by pings, or not at all (after `leave()`). */
  presence: "stream" | "ping" | null;
  /** The server's PRESENCE_TIMEOUT in seconds, as last advertised (60 when it never said). */
  timeout: number | null;
  /** Milliseconds until the next attempt, while reconnecting. */
  retryIn?: number | null;
}

/** What the client needs of its surroundings; each defaults to the browser's own (tests pass fakes). */
export interface Environment {
  fetch: typeof fetch;
  BroadcastChannel: typeof BroadcastChannel | undefined;
  locks: LockManager | undefined;
  document: Pick<Document, "visibilityState" | "addEventListener" | "removeEventListener"> | undefined;
  window: Pick<Window, "addEventListener" | "removeEventListener"> | null;
  sendBeacon: ((url: string, data?: BodyInit | null) => boolean) | undefined;
  setTimeout: (callback: () => void, ms: number) => unknown;
  clearTimeout: (id: unknown) => void;
  now: () => number;
  random: () => number;
}

export interface HeartbeatOptions {
  /** The daemon's origin, e.g. "https://presence.example.com" (default: the page's). */
  server?: string;
  /** Returns the user's JWT; called at start, before the token's `exp`, and after a 401. */
  getToken?: () => string | null | Promise<string | null>;
  /** A fixed token, when there is no `getToken`. */
  token?: string;
  /** This user's id, to hold a presence stream when watching no one (default: the token's `userid` claim). */
  userid?: string;
  /** Extra headers on every request (a development proxy's X-User-Claim, say). */
  headers?: Record<string, string>;
  /** fetch's credentials mode: "include" sends cookies to another origin (default "same-origin"). */
  credentials?: RequestCredentials;
  /** This device's status (default "0"). */
  status?: string;
  /** The status sent while every tab of the browser is hidden (default: none, the status stays). */
  awayStatus?: string | null;
  /** Whether this device is present at all (false: watch only). Default true. */
  present?: boolean;
  /** The server's PRESENCE_TIMEOUT in seconds, for a server that does not send Heartbeat-Presence-Timeout (default 60). */
  presenceTimeout?: number;
  /** How to stay present: a presence stream when the server offers it ("auto", the default), always ("stream"), or pings ("ping"). */
  presence?: "auto" | "stream" | "ping";
  /** Send POST /leave by sendBeacon when the last tab goes: "auto" (unless a presence stream holds the device), true, false. */
  leaveOnPagehide?: "auto" | boolean;
  /** The users to watch from the start. */
  watch?: Iterable<string>;
  /** The name of the lock and BroadcastChannel the tabs share (default "heartbeat:<server>"). */
  channel?: string;
  /** Stream options (SPEC §2) sent on the stream; default {changes: "only", snapshot: "1"}. */
  streamOptions?: Record<string, string>;
  /** Above this URL length the stream is opened with POST /subscribe (default 4000). */
  maxUrlLength?: number;
  /** Reconnect backoff in milliseconds: full jitter over [0, min(max, base·2ⁿ)). Default {base: 1000, max: 30000}. */
  backoff?: {base?: number; max?: number};
  /** Replace parts of the browser (tests). */
  env?: Partial<Environment>;
}

export class Heartbeat {
  constructor(options?: HeartbeatOptions);
  /** The user's presence, or null when not known or never seen. */
  get(userid: string): PresenceState | null;
  /** Every watched user's presence. */
  readonly users: Map<string, PresenceState | null>;
  readonly watched: string[];
  /** Called for each change of a watched user; returns an unsubscribe function. */
  onChange(callback: (userid: string, state: PresenceState | null, previous: PresenceState | null) => void): () => void;
  watch(users: Iterable<string>): void;
  unwatch(users: Iterable<string>): void;
  setWatched(users: Iterable<string>): void;
  /** Be present with this status (also after `leave()`). */
  setStatus(status: string): void;
  /** The status the server is told now, or null after `leave()`. */
  readonly status: string | null;
  /** This device goes offline now, until `setStatus()`. */
  leave(): Promise<void>;
  readonly connection: ConnectionInfo;
  readonly isLeader: boolean;
  onConnection(callback: (info: ConnectionInfo) => void): () => void;
  /** This tab stops taking part (another tab leads if this one did). */
  close(): void;
}

export interface SseEvent {
  type: string;
  data: string;
  lastEventId: string;
}

export class SseParser {
  constructor(onEvent: (event: SseEvent) => void, onRetry?: (ms: number) => void);
  lastEventId: string;
  push(text: string): void;
}

export class Backoff {
  constructor(options?: {base?: number; max?: number; random?: () => number});
  attempt: number;
  readonly ceiling: number;
  next(): number;
  reset(): void;
}

/** `Retry-After` (seconds or an HTTP date) in milliseconds, 0 when absent or unreadable. */
export function retryAfter(value: string | null | undefined, now: number): number;

/** A JWT's claims, or null when it is not one. */
export function tokenClaims(token: string | null | undefined): Record<string, unknown> | null;

export const DEFAULT_PRESENCE_TIMEOUT: number;
