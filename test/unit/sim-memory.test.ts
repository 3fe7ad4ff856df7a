/**
 * The sim driver's guest RAM: its dirty rate is measured (distinct pages written over the
 * sample, as QEMU's calc-dirty-rate counts them), so a guest that is not dirtying measures
 * nothing whatever rate it was given.
 */
import { describe, expect, it } from 'vitest';
import { SimMemory } from '../../src/vm/drivers/sim-migration.js';

describe('sim guest RAM', () => {
  it('measures its dirty rate: nothing while the dirtier is stopped, about the rate it dirties while it runs, and no more than it', async () => {
    const mem = SimMemory.populated(64, 16);
    expect(await mem.measureDirtyRate(200)).toBe(0); // given 16 MiB/s, not running
    mem.run();
    try {
      const mibps = (await mem.measureDirtyRate(500)) / 1048576;
      expect(mibps).toBeGreaterThan(4); // timers slip on a loaded box
      expect(mibps).toBeLessThanOrEqual(17);
    } finally {
      mem.stop();
    }
    expect(await mem.measureDirtyRate(200)).toBe(0);
  });
});
