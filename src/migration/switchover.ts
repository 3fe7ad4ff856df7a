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
 * The limit itself steps up (as OpenStack Nova's live_migration_downtime_steps do): it
 * starts at an eighth of the target and grows by half every two rounds without
 * switchover, so a migration that can stop the guest briefly does, and one that cannot
 * still reaches its whole budget within a few rounds.
 */

/** The first limit is this share of the target. */
const START_SHARE = 1 / 8;
/** Each step raises the limit by this factor... */
const STEP = 1.5;
/** ...after this many rounds at the current limit (the first pass is round 1). */
const ROUNDS_PER_STEP = 2;
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
  #roundAtLimit = 0;
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
   * After a progress report (`round`: QEMU's dirty-sync count; `rawBytesPerSec`: the
   * link's throughput over the last second): the new settings when they changed.
   */
  next(round: number, rawBytesPerSec: number): SwitchoverSettings | undefined {
    const before = this.settings;
    if (round >= FIRST_RESEND_ROUND + 1 && rawBytesPerSec > this.#peakBytesPerSec) this.#peakBytesPerSec = rawBytesPerSec;
    const budget = Math.max(1, Math.floor(this.budgetMs()));
    let limit = Math.min(this.#limitMs, budget);
    if (this.#roundAtLimit === 0) this.#roundAtLimit = round;
    else if (round >= this.#roundAtLimit + ROUNDS_PER_STEP) {
      this.#roundAtLimit = round;
      limit = Math.min(budget, Math.max(limit + 1, Math.round(limit * STEP)));
    }
    this.#limitMs = limit;
    const after = this.settings;
    return after.downtimeLimitMs !== before.downtimeLimitMs || after.bytesPerSec !== before.bytesPerSec ? after : undefined;
  }

  #bytesPerSec(): number {
    return Math.round(this.#peakBytesPerSec * BANDWIDTH_MARGIN);
  }
}
