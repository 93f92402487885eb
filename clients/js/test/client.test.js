import {test} from "node:test";
import assert from "node:assert/strict";
import {Heartbeat} from "../src/index.js";
import {FakeBrowser, flush, token} from "./fakes.js";

const SERVER = "http://hb.test";

function client(browser, options = {}, random) {
  const {env, page} = browser.tab(random);
  const hb = new Heartbeat({server: SERVER, env, ...options});
  const changes = [];
  hb.onChange((userid, state) => changes.push([userid, state && state.status, state && state.online]));
  return {hb, page, changes};
}

const snapshot = (users) => ({users});
const state = (status, online = true, time = 100) => ({time, status, online});

test("the map: a snapshot, a batch, plain events; onChange only for real changes", async (t) => {
  const browser = new FakeBrowser();
  const {hb, changes} = client(browser, {watch: ["alice", "bob"], present: false});
  t.after(() => hb.close());
  await flush();
  const [stream] = browser.server.streams;
  const url = stream.request.url;
  assert.equal(url.pathname, "/subscribe");
  assert.deepEqual(url.searchParams.getAll("user"), ["alice", "bob"]);
  assert.equal(url.searchParams.get("changes"), "only");
  assert.equal(url.searchParams.get("snapshot"), "1");
  assert.equal(url.searchParams.get("presence"), null, "present: false holds no presence");

  stream.event(snapshot({alice: {...state("0"), devices: {}}, bob: null}), {type: "snapshot", id: "10"});
  await flush();
  assert.deepEqual(hb.get("alice"), {userid: "alice", time: 100, status: "0", online: true});
  assert.equal(hb.get("bob"), null);
  stream.event({changes: [{userid: "bob", ...state("1")}, {userid: "alice", ...state("0")}]},
               {type: "batch", id: "11"});
  stream.event({userid: "alice", ...state("0", false)}, {id: "12"});
  stream.event({userid: "alice", clientid: "phone", ...state("2")}, {id: "13"});  // a device's, not the user's
  await flush();
  assert.deepEqual(changes, [["alice", "0", true], ["bob", "1", true], ["alice", "0", false]]);
  stream.event({userid: "bob", online: false, erased: true}, {id: "14"});
  await flush();
  assert.equal(hb.get("bob"), null);
  assert.deepEqual(changes.at(-1), ["bob", null, null]);
  assert.equal(browser.server.pings.length, 0, "not present: no pings");
});

test("an older server (no Heartbeat-Presence-Timeout on the stream): pings every 30 s, paced by the ping's answer", async (t) => {
  const browser = new FakeBrowser();
  const {hb} = client(browser, {watch: ["alice"], status: "2", token: token({userid: "me"})});
  t.after(() => hb.close());
  await flush();
  assert.equal(browser.server.streams[0].request.url.searchParams.get("presence"), "2");
  assert.equal(browser.server.pings.length, 1, "one ping at once");
  const ping = browser.server.pings[0];
  assert.equal(ping.method, "POST");
  assert.equal(ping.body, '{"status":"2"}');
  assert.match(ping.headers.get("Authorization"), /^Bearer /);
  assert.equal(hb.connection.presence, "ping");
  await browser.clock.advance(29_000);
  assert.equal(browser.server.pings.length, 1);
  browser.server.pingHeaders = {"Heartbeat-Presence-Timeout": "4"};
  await browser.clock.advance(1_000);
  assert.equal(browser.server.pings.length, 2, "half of the default 60 s");
  await browser.clock.advance(2_000);
  assert.equal(browser.server.pings.length, 3, "half of the advertised 4 s");
  assert.equal(hb.connection.timeout, 4);
});

test("a server offering presence streams (the header on the stream): no ping loop while it is open", async (t) => {
  let down = false;
  const browser = new FakeBrowser((request) => (down && request.path === "/subscribe"
    ? new TypeError("network") : null));
  browser.server.offerPresenceStreams();
  const {hb} = client(browser, {watch: ["alice"]});
  t.after(() => hb.close());
  await browser.clock.advance(0);
  const before = browser.server.pings.length;
  assert.equal(hb.connection.presence, "stream");
  const probe = browser.server.subscribes.find((r) => r.url.searchParams.get("presence") === "\n");
  assert.ok(probe, "asked with a status only such a server refuses");
  await browser.clock.advance(60_000);
  assert.equal(browser.server.pings.length, before, "the stream holds the device");
  hb.setStatus("1");
  await flush();
  assert.equal(browser.server.pings.length, before + 1, "a new status is sent at once");
  assert.equal(browser.server.pings.at(-1).body, '{"status":"1"}');
  // The stream drops and cannot come back: pings keep the device meanwhile.
  down = true;
  browser.server.streams[0].end();
  await browser.clock.advance(4_999);
  assert.equal(browser.server.pings.length, before + 1);
  await browser.clock.advance(1);
  assert.equal(browser.server.pings.length, before + 2, "due half a timeout after the last");
});

test("watching no one, a presence stream of the user's own id (from the token)", async (t) => {
  const browser = new FakeBrowser();
  browser.server.offerPresenceStreams();
  const {hb} = client(browser, {token: token({userid: "me"})});
  t.after(() => hb.close());
  await flush();
  assert.deepEqual(browser.server.streams[0].request.url.searchParams.getAll("user"), ["me"]);
  assert.equal(hb.connection.presence, "stream");
});

test("reconnect: full-jitter backoff, Last-Event-ID, Retry-After on 503", async (t) => {
  let refuse = 0;
  const browser = new FakeBrowser((request) => {
    if (request.path === "/subscribe" && refuse > 0) {
      refuse -= 1;
      return {status: 503, headers: {"Retry-After": "7"}};
    }
    return null;
  });
  const {hb} = client(browser, {watch: ["alice"], present: false, backoff: {base: 1000, max: 8000}},
                      () => 0.5);
  t.after(() => hb.close());
  await flush();
  browser.server.streams[0].event({userid: "alice", ...state("0")}, {id: "41"});
  await flush();
  refuse = 1;
  browser.server.streams[0].end();
  await flush();
  assert.equal(hb.connection.state, "reconnecting");
  await browser.clock.advance(499);
  assert.equal(browser.server.subscribes.length, 1);
  await browser.clock.advance(1);
  assert.equal(browser.server.subscribes.length, 2, "0.5 × 1 s");
  // 503: Retry-After (7 s) beats the backoff (0.5 × 2 s).
  await browser.clock.advance(6_999);
  assert.equal(browser.server.subscribes.length, 2);
  await browser.clock.advance(1);
  assert.equal(browser.server.subscribes.length, 3);
  assert.equal(browser.server.subscribes[2].headers.get("Last-Event-ID"), "41");
  assert.equal(hb.connection.state, "live");
  assert.equal(hb.connection.opens, 2);
});

test("getToken: called before exp, the stream reopened with the fresh token before the old one closes", async (t) => {
  const browser = new FakeBrowser();
  const now = () => browser.clock.now() / 1000;
  let issued = 0;
  const getToken = async () => token({userid: "me", n: ++issued, exp: Math.floor(now()) + 4});
  const {hb} = client(browser, {watch: ["alice"], present: false, getToken});
  t.after(() => hb.close());
  await flush();
  assert.equal(issued, 1);
  const first = browser.server.streams[0];
  first.event({userid: "alice", ...state("0")}, {id: "1"});
  await browser.clock.advance(2_999);
  assert.equal(issued, 1);
  await browser.clock.advance(1);
  assert.equal(issued, 2, "refreshed a quarter of its life before exp");
  assert.equal(browser.server.streams.length, 2);
  const second = browser.server.streams[1];
  assert.notEqual(second.request.headers.get("Authorization"), first.request.headers.get("Authorization"));
  assert.equal(second.request.headers.get("Last-Event-ID"), "1");
  assert.ok(first.aborted, "the old stream is closed once the new one is open");
  assert.equal(browser.server.open.length, 1);
});

test("a 401 asks getToken again and retries at once", async (t) => {
  let refuse = true;
  const browser = new FakeBrowser((request) => {
    if (request.path === "/subscribe" && refuse) {
      refuse = false;
      return {status: 401};
    }
    return null;
  });
  let issued = 0;
  const {hb} = client(browser, {watch: ["alice"], present: false, getToken: () => token({userid: "me", n: ++issued})});
  t.after(() => hb.close());
  await flush();
  assert.equal(issued, 2);
  assert.equal(browser.server.subscribes.length, 2);
  assert.equal(hb.connection.state, "live");
});

test("changing whom to watch reopens once, without Last-Event-ID, keeping what is known", async (t) => {
  const browser = new FakeBrowser();
  const {hb, changes} = client(browser, {watch: ["alice"], present: false});
  t.after(() => hb.close());
  await flush();
  browser.server.streams[0].event(snapshot({alice: state("0")}), {type: "snapshot", id: "5"});
  await flush();
  hb.watch(["bob"]);
  hb.watch(["carol"]);
  await flush();
  assert.equal(browser.server.subscribes.length, 2, "one reopen for both calls");
  const second = browser.server.streams[1];
  assert.deepEqual(second.request.url.searchParams.getAll("user"), ["alice", "bob", "carol"]);
  assert.equal(second.request.headers.get("Last-Event-ID"), null, "new users need their state");
  assert.ok(browser.server.streams[0].aborted);
  second.event(snapshot({alice: state("0"), bob: state("1"), carol: null}), {type: "snapshot", id: "6"});
  await flush();
  assert.deepEqual(changes, [["alice", "0", true], ["bob", "1", true]], "alice did not flicker");
  hb.unwatch(["alice"]);
  await flush();
  assert.deepEqual(browser.server.streams[2].request.url.searchParams.getAll("user"), ["bob", "carol"]);
});

for (const refusal of [404, 405, 413]) test(`a long list goes by POST /subscribe; an older server's ${refusal} falls back to GET`, async (t) => {
  const browser = new FakeBrowser((request) => (request.method === "POST" && request.path === "/subscribe"
    ? {status: refusal} : null));
  const users = Array.from({length: 300}, (_, i) => `user-${i}`);
  const {hb} = client(browser, {watch: users, present: false});
  t.after(() => hb.close());
  await flush();
  const [post, get] = browser.server.subscribes;
  assert.equal(post.method, "POST");
  assert.equal(JSON.parse(post.body).users.length, 300);
  assert.equal(post.url.searchParams.get("changes"), "only");
  assert.equal(get.method, "GET");
  assert.equal(get.url.searchParams.getAll("user").length, 300);
});

test("three tabs: one stream; the others mirror the leader; the leader's tab closes and another resumes", async (t) => {
  const browser = new FakeBrowser();
  const tabs = [["alice"], ["bob"], ["alice"]].map((watch) => client(browser, {watch, present: false}));
  t.after(() => tabs.forEach(({hb}) => hb.close()));
  await browser.clock.advance(0);
  assert.equal(tabs.filter(({hb}) => hb.isLeader).length, 1);
  assert.equal(browser.server.open.length, 1);
  const stream = browser.server.open[0];
  assert.deepEqual(stream.request.url.searchParams.getAll("user"), ["alice", "bob"]);
  stream.event(snapshot({alice: state("0"), bob: state("1")}), {type: "snapshot", id: "20"});
  await flush();
  for (const {hb} of tabs) assert.equal(hb.connection.state, "live");
  assert.deepEqual(tabs.map(({changes}) => changes),
                   [[["alice", "0", true]], [["bob", "1", true]], [["alice", "0", true]]]);

  const leader = tabs.find(({hb}) => hb.isLeader);
  leader.page.dispatch("pagehide", {persisted: false});
  await flush();
  assert.ok(stream.aborted);
  const rest = tabs.filter((tab) => tab !== leader);
  assert.equal(rest.filter(({hb}) => hb.isLeader).length, 1, "another tab leads at once");
  assert.equal(browser.server.open.length, 1);
  const next = browser.server.open[0];
  assert.equal(next.request.headers.get("Last-Event-ID"), "20", "resumes where the old leader was");
  next.event({userid: "bob", ...state("2")}, {id: "21"});
  await flush();
  const bob = tabs.find(({hb}) => hb.watched.includes("bob"));
  assert.equal(bob.hb.get("bob").status, "2");
});

test("visibility: hidden → the away status at once; visible → back at once", async (t) => {
  const browser = new FakeBrowser();
  const {hb, page} = client(browser, {awayStatus: "1"});
  t.after(() => hb.close());
  await flush();
  assert.equal(browser.server.pings.at(-1).body, '{"status":"0"}');
  page.hide();
  await flush();
  assert.equal(browser.server.pings.at(-1).body, '{"status":"1"}');
  assert.equal(hb.status, "1");
  page.show();
  await flush();
  assert.equal(browser.server.pings.at(-1).body, '{"status":"0"}');
});

test("two tabs: one hidden is not away while the other is visible", async (t) => {
  const browser = new FakeBrowser();
  const a = client(browser, {awayStatus: "1"});
  const b = client(browser, {awayStatus: "1"});
  t.after(() => { a.hb.close(); b.hb.close(); });
  await flush();
  const pings = browser.server.pings.length;
  b.page.hide();
  await flush();
  assert.equal(browser.server.pings.length, pings + 1, "a ping at once");
  assert.equal(browser.server.pings.at(-1).body, '{"status":"0"}');
  a.page.hide();
  await flush();
  assert.equal(browser.server.pings.at(-1).body, '{"status":"1"}');
});

test("pagehide: the last tab sends a beacon to /leave with its token; not while another tab lives", async (t) => {
  const browser = new FakeBrowser();
  const me = token({userid: "me"});
  const a = client(browser, {token: me});
  const b = client(browser, {token: me});
  t.after(() => { a.hb.close(); b.hb.close(); });
  await flush();
  a.page.dispatch("pagehide", {persisted: false});
  await flush();
  assert.deepEqual(a.page.beacons, []);
  b.page.dispatch("pagehide", {persisted: false});
  assert.deepEqual(b.page.beacons, [`${SERVER}/leave?token=${encodeURIComponent(me)}`]);
});

test("pagehide with a presence stream: no beacon (the stream's end and LEAVE_GRACE do it)", async (t) => {
  const browser = new FakeBrowser();
  browser.server.offerPresenceStreams();
  const {hb, page} = client(browser, {watch: ["alice"]});
  t.after(() => hb.close());
  await flush();
  page.dispatch("pagehide", {persisted: false});
  assert.deepEqual(page.beacons, []);
  assert.ok(browser.server.streams[0].aborted);
});

test("leave(): POST /leave, no more pings, until setStatus()", async (t) => {
  const browser = new FakeBrowser();
  const {hb} = client(browser, {});
  t.after(() => hb.close());
  await flush();
  await hb.leave();
  assert.equal(browser.server.requests.at(-1).path, "/leave");
  const pings = browser.server.pings.length;
  await browser.clock.advance(120_000);
  assert.equal(browser.server.pings.length, pings);
  assert.equal(hb.status, null);
  hb.setStatus("2");
  await flush();
  assert.equal(browser.server.pings.length, pings + 1);
});

test("a tab gone without a word (no bye) is forgotten through its lock: the last one left sends the beacon", async (t) => {
  const browser = new FakeBrowser();
  const a = client(browser, {});
  const b = client(browser, {});
  t.after(() => { a.hb.close(); b.hb.close(); });
  await flush();
  a.hb._channel.close();  // it can no longer say goodbye…
  a.hb._resign();         // …and its locks go with its document
  await flush();
  b.page.dispatch("pagehide", {persisted: false});
  assert.equal(b.page.beacons.length, 1);
});

test("throttled timers: a ping that is due goes out when the stream receives anything", async (t) => {
  const browser = new FakeBrowser();
  const {env} = browser.tab();
  // A background tab's timers: late by a minute.
  const hb = new Heartbeat({server: SERVER, watch: ["alice"], presenceTimeout: 4,
                            env: {...env, setTimeout: (fn, ms) => browser.clock.setTimeout(fn, ms + 60_000)}});
  t.after(() => hb.close());
  await flush();
  assert.equal(browser.server.pings.length, 1);
  await browser.clock.advance(1_000);
  browser.server.streams[0].write(":\n");  // a keep-alive, not yet due
  await flush();
  assert.equal(browser.server.pings.length, 1);
  await browser.clock.advance(1_000);
  browser.server.streams[0].write(":\n");
  await flush();
  assert.equal(browser.server.pings.length, 2, "half the timeout has passed: the keep-alive sends it");
});

test("after a resume, a snapshot updates the users it names and keeps the others", async (t) => {
  const browser = new FakeBrowser();
  const {hb} = client(browser, {watch: ["alice", "bob"], present: false});
  t.after(() => hb.close());
  await flush();
  browser.server.streams[0].event(snapshot({alice: state("0"), bob: state("1")}), {type: "snapshot", id: "9"});
  await flush();
  browser.server.streams[0].end();
  await browser.clock.advance(1_000);
  const resumed = browser.server.streams[1];
  assert.equal(resumed.request.headers.get("Last-Event-ID"), "9");
  resumed.event(snapshot({alice: state("2")}), {type: "snapshot", id: "10"});
  await flush();
  assert.equal(hb.get("alice").status, "2");
  assert.equal(hb.get("bob").status, "1");
});

test("a server with the header but no presence streams (the probe is a 200 stream): pings go on", async (t) => {
  const browser = new FakeBrowser();
  browser.server.streamHeaders = {"Heartbeat-Presence-Timeout": "4"};
  const {hb} = client(browser, {watch: ["alice"]});
  t.after(() => hb.close());
  await browser.clock.advance(0);
  assert.equal(hb.connection.presence, "ping");
  assert.equal(browser.server.open.length, 1, "the probe's stream is closed at once");
  const pings = browser.server.pings.length;
  await browser.clock.advance(2_000);
  assert.equal(browser.server.pings.length, pings + 1);
});

test("the backoff widens on every failure and starts over once a stream stayed up 10 s", async (t) => {
  let down = true;
  const browser = new FakeBrowser((request) => (down && request.path === "/subscribe"
    ? new TypeError("refused") : null));
  const {hb} = client(browser, {watch: ["alice"], present: false, backoff: {base: 1000, max: 8000}},
                      () => 0.999);
  t.after(() => hb.close());
  await flush();
  const retries = () => hb.connection.retryIn;
  const seen = [Math.round(retries())];
  for (let i = 0; i < 4; i++) {
    await browser.clock.advance(retries());
    seen.push(Math.round(retries()));
  }
  assert.deepEqual(seen, [999, 1998, 3996, 7992, 7992]);
  down = false;
  await browser.clock.advance(retries());
  assert.equal(hb.connection.state, "live");
  await browser.clock.advance(10_000);
  browser.server.open[0].end();
  await flush();
  assert.equal(Math.round(retries()), 999, "from the start again");
});

test("a ping answered 503 is retried after its Retry-After (within the ping interval)", async (t) => {
  let busy = true;
  const browser = new FakeBrowser((request) => (busy && request.path === "/ping"
    ? {status: 503, headers: {"Retry-After": "5"}} : null));
  const {hb} = client(browser, {presenceTimeout: 60}, () => 0);
  t.after(() => hb.close());
  await flush();
  assert.equal(browser.server.pings.length, 1);
  busy = false;
  await browser.clock.advance(4_999);
  assert.equal(browser.server.pings.length, 1);
  await browser.clock.advance(1);
  assert.equal(browser.server.pings.length, 2);
});

test("back from the back/forward cache (pageshow persisted): the tab leads again and pings", async (t) => {
  const browser = new FakeBrowser();
  const {hb, page} = client(browser, {watch: ["alice"]});
  t.after(() => hb.close());
  await flush();
  page.dispatch("pagehide", {persisted: true});
  await flush();
  assert.equal(hb.isLeader, false);
  assert.equal(browser.server.open.length, 0);
  const pings = browser.server.pings.length;
  page.dispatch("pageshow", {persisted: true});
  await flush();
  assert.equal(hb.isLeader, true);
  assert.equal(browser.server.open.length, 1);
  assert.equal(browser.server.pings.length, pings + 1);
});

test("throttled timers: a due token refresh happens on the stream's next keep-alive; a stream ended at exp reopens at once", async (t) => {
  const browser = new FakeBrowser();
  const {env} = browser.tab(() => 0.999);
  let issued = 0;
  const now = () => browser.clock.now() / 1000;
  const hb = new Heartbeat({server: SERVER, watch: ["alice"], present: false,
                            getToken: () => token({userid: "me", n: ++issued, exp: Math.floor(now()) + 8}),
                            env: {...env, setTimeout: (fn, ms) => browser.clock.setTimeout(fn, ms + 60_000)}});
  t.after(() => hb.close());
  await flush();
  assert.equal(issued, 1);
  await browser.clock.advance(6_000);  // past the refresh time (exp − 2 s), the timer is a minute late
  browser.server.streams[0].write(":\n");
  await flush();
  assert.equal(issued, 2, "refreshed on the keep-alive");
  assert.equal(browser.server.open.length, 1);
  assert.ok(browser.server.streams[0].aborted, "the old stream replaced");
  // Its token expires and the server ends the stream: reopened with no backoff.
  const second = browser.server.open[0];
  await browser.clock.advance(8_000);
  const before = browser.server.subscribes.length;
  second.end();
  await flush();
  assert.equal(browser.server.subscribes.length, before + 1);
});

test("watching no one, with getToken: the first token names the user; an older server's answer drops that stream", async (t) => {
  const browser = new FakeBrowser();
  const {hb} = client(browser, {getToken: () => token({userid: "me"})});
  t.after(() => hb.close());
  await flush();
  const [own] = browser.server.streams;
  assert.deepEqual(own.request.url.searchParams.getAll("user"), ["me"]);
  assert.ok(own.aborted, "no presence streams here: the stream is closed, pings keep the device");
  assert.equal(browser.server.open.length, 0);
  assert.equal(hb.connection.presence, "ping");
});

test("the browser's online event ends a backoff wait at once", async (t) => {
  let down = true;
  const browser = new FakeBrowser((request) => (down && request.path === "/subscribe"
    ? new TypeError("offline") : null));
  const {hb, page} = client(browser, {watch: ["alice"], present: false}, () => 0.999);
  t.after(() => hb.close());
  await flush();
  assert.equal(hb.connection.state, "reconnecting");
  down = false;
  page.dispatch("online");
  await flush();
  assert.equal(hb.connection.state, "live");
});
