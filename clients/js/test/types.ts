// Compiled (never run) by `npm run check`: the declarations describe the API as used.
import {Heartbeat, SseParser, Backoff, retryAfter, tokenClaims, DEFAULT_PRESENCE_TIMEOUT} from "heartbeat-presence";
import type {PresenceState, ConnectionInfo} from "heartbeat-presence";

const hb = new Heartbeat({
  server: "https://presence.example.com",
  getToken: async () => "jwt",
  watch: ["alice", "bob"],
  awayStatus: "1",
  presence: "auto",
  backoff: {base: 500},
});
const alice: PresenceState | null = hb.get("alice");
const stop: () => void = hb.onChange((userid: string, state, previous) => {
  const online: boolean | undefined = state?.online;
  void [userid, online, previous?.time];
});
hb.watch(["carol"]);
hb.unwatch(["bob"]);
hb.setWatched(new Set(["alice"]));
hb.setStatus("2");
const left: Promise<void> = hb.leave();
const info: ConnectionInfo = hb.connection;
hb.onConnection((c) => c.state === "live" && c.leader);
const parser = new SseParser((e) => e.data);
parser.push("data: x\n\n");
const delay: number = new Backoff({max: 10}).next() + retryAfter("3", Date.now()) + DEFAULT_PRESENCE_TIMEOUT;
const claims = tokenClaims("a.b.c");
void [alice, stop, left, info, delay, claims, hb.users.get("alice"), hb.status, hb.isLeader, hb.watched];
hb.close();
