/**
 * Failed logins, per source address: after `max` failures within `windowMs`, further
 * attempts from that address are refused (429 TOO_MANY_ATTEMPTS) until the window has
 * passed. At most `maxSources` addresses are tracked (the oldest are forgotten first), so
 * a flood of addresses cannot grow it without bound.
 */
import { NovaError } from '../errors.js';

export class FailureLimiter {
  #failures = new Map<string, { count: number; since: number }>();

  constructor(
    private readonly max = 5,
    private readonly windowMs = 5 * 60_000,
    private readonly maxSources = 10_000,
  ) {}

  /** TOO_MANY_ATTEMPTS when `source` has used up its failures. */
  check(source: string, now = Date.now()): void {
    const f = this.#failures.get(source);
    if (!f) return;
    if (now - f.since >= this.windowMs) {
      this.#failures.delete(source);
      return;
    }
    if (f.count >= this.max) {
      throw new NovaError('TOO_MANY_ATTEMPTS', `${f.count} failed attempts from ${source}; retry in ${Math.ceil((f.since + this.windowMs - now) / 1000)} s`, { retryAfterSeconds: Math.ceil((f.since + this.windowMs - now) / 1000) });
    }
  }

  fail(source: string, now = Date.now()): void {
    const f = this.#failures.get(source);
    if (f && now - f.since < this.windowMs) f.count++;
    else {
      this.#failures.delete(source);
      this.#failures.set(source, { count: 1, since: now });
      if (this.#failures.size > this.maxSources) this.#failures.delete(this.#failures.keys().next().value!);
    }
  }

  succeed(source: string): void {
    this.#failures.delete(source);
  }
}
