/**
 * A Server-Sent Events parser for a body read with `fetch` (the WHATWG
 * "event stream interpretation", without EventSource's own reconnecting).
 *
 * Reading the stream with `fetch` rather than `EventSource` lets the client
 * send `Authorization` and `Last-Event-ID` itself, read the answer's status
 * (401, 503 and its `Retry-After`) and headers, and decide when to reconnect.
 */

/** @typedef {{type: string, data: string, lastEventId: string}} SseEvent */

export class SseParser {
  /**
   * @param {(event: SseEvent) => void} onEvent called for each complete event
   * @param {(ms: number) => void} [onRetry] called for each valid `retry:` field
   */
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.lastEventId = "";
    this._buffer = "";
    this._afterCR = false;
    this._started = false;
    this._data = [];
    this._type = "";
  }

  /** Feed decoded text; any split of the stream into pieces gives the same events. */
  push(text) {
    if (!this._started && text.length > 0) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._afterCR && text.startsWith("\n")) text = text.slice(1);
    this._afterCR = false;
    let buffer = this._buffer + text;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this._line(buffer.slice(start, i));
      if (c === 13) {
        if (i + 1 === buffer.length) this._afterCR = true;
        else if (buffer.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this._buffer = buffer.slice(start);
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) return;  // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data": this._data.push(value); break;
      case "event": this._type = value; break;
      case "id": if (!value.includes("\0")) this.lastEventId = value; break;
      case "retry": if (/^\d+$/.test(value)) this.onRetry(Number(value)); break;
      default: break;  // unknown fields are ignored
    }
  }

  _dispatch() {
    const data = this._data;
    const type = this._type;
    this._data = [];
    this._type = "";
    if (data.length === 0) return;
    this.onEvent({type: type || "message", data: data.join("\n"), lastEventId: this.lastEventId});
  }
}
