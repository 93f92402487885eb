import {test} from "node:test";
import assert from "node:assert/strict";
import {SseParser} from "../src/sse.js";

function parse(pieces) {
  const events = [];
  const retries = [];
  const parser = new SseParser((e) => events.push(e), (ms) => retries.push(ms));
  for (const piece of pieces) parser.push(piece);
  return {events, retries, parser};
}

const STREAM = "\ufeffretry: 2000\n\nid: 7\nevent: snapshot\ndata: {\"users\":\ndata: {}}\n\n"
  + ": keep-alive\n\ndata: plain\r\n\r\nid: 8\rdata: cr\r\r";

test("an event stream gives the same events however it is split", () => {
  const expected = [
    {type: "snapshot", data: "{\"users\":\n{}}", lastEventId: "7"},
    {type: "message", data: "plain", lastEventId: "7"},
    {type: "message", data: "cr", lastEventId: "8"},
  ];
  assert.deepEqual(parse([STREAM]).events, expected);
  for (let cut = 1; cut < STREAM.length; cut++) {
    const {events, retries} = parse([STREAM.slice(0, cut), STREAM.slice(cut)]);
    assert.deepEqual(events, expected, `split at ${cut}`);
    assert.deepEqual(retries, [2000]);
  }
  assert.deepEqual(parse([...STREAM]).events, expected, "one character at a time");
});

test("fields without data dispatch nothing; an unfinished event waits", () => {
  const {events, parser} = parse(["id: 3\n\nevent: batch\n\n", "data: x"]);
  assert.deepEqual(events, []);
  assert.equal(parser.lastEventId, "3");
  parser.push("\n\n");
  assert.deepEqual(events, [{type: "message", data: "x", lastEventId: "3"}]);
});

test("a bad retry is ignored, an id with NUL too, a field with no colon is a name", () => {
  const {events, retries} = parse(["retry: 1s\nid: a\0b\ndata\n\n"]);
  assert.deepEqual(retries, []);
  assert.deepEqual(events, [{type: "message", data: "", lastEventId: ""}]);
});
