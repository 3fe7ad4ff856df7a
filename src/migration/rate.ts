/** A counter's rate over roughly the last `spanMs` (its samples older than that are dropped). */
export class RecentRate {
  readonly #spanMs: number;
  #samples: Array<{ at: number; value: number }> = [];

  constructor(spanMs: number) {
    this.#spanMs = spanMs;
  }

  /** Records the counter's value now; returns its rate per second (0 until two samples). */
  sample(value: number, at = performance.now()): number {
    this.#samples.push({ at, value });
    while (this.#samples.length > 2 && at - this.#samples[1]!.at >= this.#spanMs) this.#samples.shift();
    const first = this.#samples[0]!;
    return at > first.at ? ((value - first.value) / (at - first.at)) * 1000 : 0;
  }
}
