import { describe, expect, it } from 'vitest';
import { RecentRate } from '../../src/migration/rate.js';
import { SwitchoverTuner } from '../../src/migration/switchover.js';

const MB = 1e6;

describe('SwitchoverTuner', () => {
  it('holds an eighth of the target while rounds shrink fast, and doubles toward the budget once they do not', () => {
    const t = new SwitchoverTuner(50, 3 * MB);
    expect(t.settings).toEqual({ downtimeLimitMs: 6 });
    // 375 MB/s while re-sending: QEMU is told 300 MB/s; 3 MB drain in 10 ms, so the budget is 40 ms.
    const rounds: Array<[number, number]> = [[1, 2000], [2, 400], [3, 100], [4, 30], [5, 25], [6, 24], [7, 20], [8, 6], [9, 5]];
    const limits = rounds.map(([round, dirtyMB]) => (t.next(round, dirtyMB * MB, round >= 3 ? 375 * MB : 900 * MB) ?? t.settings).downtimeLimitMs);
    expect(limits).toEqual([6, 6, 6, 6, 12, 24, 40, 40, 40]);
    expect(t.settings.bytesPerSec).toBe(300 * MB);
    expect(t.budgetMs()).toBe(40);
  });

  it('judges a round by its dirty set when first seen, not by what is left of it later', () => {
    const t = new SwitchoverTuner(50, MB);
    t.next(2, 100 * MB, 300 * MB);
    t.next(2, 10 * MB, 300 * MB); // the same round, mostly sent
    expect(t.next(3, 20 * MB, 300 * MB)?.downtimeLimitMs ?? t.settings.downtimeLimitMs).toBe(6); // 20 of 100: fast
  });

  it('learns the bandwidth only from re-sends (a first pass of zero pages is no guide), and keeps the best', () => {
    const t = new SwitchoverTuner(50, 12 * MB);
    expect(t.next(1, 2000 * MB, 2000 * MB)).toBeUndefined();
    expect(t.next(2, 100 * MB, 2000 * MB)).toBeUndefined();
    expect(t.settings.bytesPerSec).toBeUndefined();
    expect(t.next(3, 10 * MB, 250 * MB)).toEqual({ downtimeLimitMs: 6, bytesPerSec: 200 * MB });
    t.next(4, 1 * MB, 100 * MB); // a quiet second does not lower it
    expect(t.settings.bytesPerSec).toBe(200 * MB);
  });

  it('never leaves QEMU less than a quarter of the target, however much the link holds', () => {
    const t = new SwitchoverTuner(50, 64 * MB);
    for (let round = 1; round <= 30; round++) t.next(round, 100 * MB, 250 * MB);
    expect(t.budgetMs()).toBe(12.5);
    expect(t.settings.downtimeLimitMs).toBe(12);
  });
});

describe('RecentRate', () => {
  it('is the rate over about the last span', () => {
    const r = new RecentRate(1000);
    expect(r.sample(0, 0)).toBe(0);
    expect(r.sample(100, 500)).toBe(200);
    expect(r.sample(200, 1000)).toBe(200);
    // The counter sped up: samples older than a second drop out.
    expect(r.sample(1200, 1500)).toBe(1100);
    expect(r.sample(2200, 2000)).toBe(2000);
  });
});
