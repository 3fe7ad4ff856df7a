/**
 * How NovaCron steers QEMU's switchover decision during one live migration. QEMU stops
 * the guest once the dirty memory left fits in `downtime-limit` at the bandwidth it
 * expects, and two things make its own figures wrong behind NovaCron's link:
 *
 * - **Bandwidth.** QEMU measures what it wrote in the last 100 ms. Near the end it has
 *   little to write, so it measures little, expects a slow switchover and keeps iterating
 *   (or, given a large limit, lands anywhere under it). The link knows better: the most it
 *   carried while busy re-sending dirty pages is what it will carry at switchover. That
 *   goes to QEMU as `avail-switchover-bandwidth` (a fifth less, to stay on the safe side).
 * - **What the link holds.** QEMU counts bytes in the link as sent; they drain after the
 *   guest stops. The limit QEMU works to is the target less that drain time.
 *
 * The limit itself steps up (like OpenStack Nova's live_migration_downtime_steps, but
 * driven by the rounds rather than the clock): it starts at an eighth of the target and
 * stays there while each round's dirty set is under half the one before, since such
 * rounds soon leave little enough to stop the guest briefly. When a round shrinks less
 * than that (the dirty rate is close to the link's), a low limit would only buy more
 * rounds, so the limit doubles, up to the budget.
 */

/** The first limit is this share of the target. */
const START_SHARE = 1 / 8;
/** A round whose dirty set is at least this share of the previous one's doubles the limit. */
const SLOW_SHRINK = 0.5;
/** QEMU always gets at least this share of the target. */
const MIN_BUDGET_SHARE = 1 / 4;
/** Only re-sends are like what is left at switchover (a first pass is mostly zero pages). */
const FIRST_RESEND_ROUND = 2;
const BANDWIDTH_MARGIN = 0.8;

export interface SwitchoverSettings {
  downtimeLimitMs: number;
  /** Raw (QEMU) bytes per second the link drains at switchover; undefined: QEMU's own estimate. */
  bytesPerSec?: number;
}

export class SwitchoverTuner {
  readonly #targetMs: number;
  /** Bytes the link can hold in flight (all channels' windows). */
  readonly #inFlightBytes: number;
  #limitMs: number;
  /** The last round seen, and its dirty set when first seen (bytes). */
  #round = 0;
  #roundDirty = 0;
  /** The link's best raw throughput while re-sending, bytes/s. */
  #peakBytesPerSec = 0;

  constructor(targetMs: number, inFlightBytes: number) {
    this.#targetMs = targetMs;
    this.#inFlightBytes = inFlightBytes;
    this.#limitMs = Math.max(1, Math.round(targetMs * START_SHARE));
  }

  get settings(): SwitchoverSettings {
    return { downtimeLimitMs: this.#limitMs, ...(this.#peakBytesPerSec > 0 ? { bytesPerSec: this.#bytesPerSec() } : {}) };
  }

  /** QEMU's share of the target: the target less the drain of what the link holds. */
  budgetMs(): number {
    const drainMs = this.#peakBytesPerSec > 0 ? (this.#inFlightBytes / this.#bytesPerSec()) * 1000 : 0;
    return Math.max(this.#targetMs * MIN_BUDGET_SHARE, this.#targetMs - drainMs);
  }

  /**
   * After a progress report: `round` is QEMU's dirty-sync count, `remainingBytes` what it
   * has left to send, `rawBytesPerSec` the link's throughput over the last second.
   * Returns the new settings when they changed.
   */
  next(round: number, remainingBytes: number, rawBytesPerSec: number): SwitchoverSettings | undefined {
    const before = this.settings;
    if (round >= FIRST_RESEND_ROUND + 1 && rawBytesPerSec > this.#peakBytesPerSec) this.#peakBytesPerSec = rawBytesPerSec;
    const budget = Math.max(1, Math.floor(this.budgetMs()));
    let limit = Math.min(this.#limitMs, budget);
    if (round > this.#round) {
      // Right after a sync, what QEMU has left is the round's dirty set. The first pass
      // (round 1) is the whole of RAM, no measure of the dirty rate.
      const slow = this.#round >= FIRST_RESEND_ROUND && remainingBytes >= this.#roundDirty * SLOW_SHRINK;
      if (slow) limit = Math.min(budget, limit * 2);
      this.#round = round;
      this.#roundDirty = remainingBytes;
    }
    this.#limitMs = limit;
    const after = this.settings;
    return after.downtimeLimitMs !== before.downtimeLimitMs || after.bytesPerSec !== before.bytesPerSec ? after : undefined;
  }

  #bytesPerSec(): number {
    return Math.round(this.#peakBytesPerSec * BANDWIDTH_MARGIN);
  }
}
