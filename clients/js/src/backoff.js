/**
 * Exponential backoff with full jitter: the n-th retry waits a random time in
 * [0, min(max, base·2ⁿ)). Clients that lost the same server at the same moment
 * spread their reconnects over the whole window instead of arriving together.
 */
export class Backoff {
  /** @param {{base?: number, max?: number, random?: () => number}} [options] milliseconds */
  constructor({base = 1000, max = 30000, random = Math.random} = {}) {
    this.base = base;
    this.max = max;
    this.random = random;
    this.attempt = 0;
  }

  /** The ceiling of the next delay, before jitter. */
  get ceiling() {
    return Math.min(this.max, this.base * 2 ** this.attempt);
  }

  /** The next delay in milliseconds; each call widens the window. */
  next() {
    const delay = this.random() * this.ceiling;
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * `Retry-After` in milliseconds (delta-seconds or an HTTP date), or 0.
 * @param {string | null | undefined} value
 * @param {number} now epoch milliseconds
 */
export function retryAfter(value, now) {
  if (!value) return 0;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? 0 : Math.max(0, date - now);
}
