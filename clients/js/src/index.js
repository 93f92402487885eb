/** heartbeat's browser client: presence, a presence map, one connection per browser. */
export {Heartbeat} from "./heartbeat.js";
export {SseParser} from "./sse.js";
export {Backoff, retryAfter} from "./backoff.js";
export {tokenClaims} from "./token.js";
export {DEFAULT_PRESENCE_TIMEOUT} from "./engine.js";
