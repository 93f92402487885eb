import {test} from "node:test";
import assert from "node:assert/strict";
import {Backoff, retryAfter} from "../src/backoff.js";
import {tokenClaims} from "../src/token.js";
import {token} from "./fakes.js";

test("full jitter: each delay is random in [0, min(max, base·2ⁿ)), and reset starts over", () => {
  let r = 0.999;
  const backoff = new Backoff({base: 1000, max: 8000, random: () => r});
  const delays = Array.from({length: 6}, () => backoff.next());
  assert.deepEqual(delays.map(Math.round), [999, 1998, 3996, 7992, 7992, 7992]);
  r = 0;
  assert.equal(backoff.next(), 0, "full jitter reaches zero");
  backoff.reset();
  r = 0.5;
  assert.equal(backoff.next(), 500);
});

test("Retry-After in seconds or as a date", () => {
  const now = Date.parse("2026-12-05T10:00:00Z");
  assert.equal(retryAfter("7", now), 7000);
  assert.equal(retryAfter("Sat, 05 Dec 2026 10:00:30 GMT", now), 30000);
  assert.equal(retryAfter(null, now), 0);
  assert.equal(retryAfter("soon", now), 0);
});

test("a token's claims are read; anything else is no claims", () => {
  assert.deepEqual(tokenClaims(token({userid: "ålice", exp: 5})), {userid: "ålice", exp: 5});
  assert.equal(tokenClaims("opaque"), null);
  assert.equal(tokenClaims("a.%%%.c"), null);
  assert.equal(tokenClaims(null), null);
});
