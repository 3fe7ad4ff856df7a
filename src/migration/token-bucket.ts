/**
 * Link bandwidth cap on the bytes NovaCron puts on the wire (after compression). The
 * relay spends tokens as it writes and, when in debt, stops reading from QEMU until the
 * debt is repaid — so QEMU sees the cap as a slower socket and adapts its own pacing.
 */
export class TokenBucket {
  #rate: number; // bytes per ms
  #burst: number;
  #tokens: number;
  #last = performance.now();

  constructor(bytesPerSecond: number, burstMs = 50) {
    this.#rate = bytesPerSecond / 1000;
    this.#burst = Math.max(256 * 1024, this.#rate * burstMs);
    this.#tokens = this.#burst;
  }

  /** Records `n` bytes sent; returns how many ms to wait before sending more (0: none). */
  spend(n: number): number {
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.#rate);
    this.#last = now;
    this.#tokens -= n;
    return this.#tokens >= 0 ? 0 : Math.ceil(-this.#tokens / this.#rate);
  }
}
