import { describe, expect, it } from 'vitest';
import { migrationStatus } from '../../src/vm/qemu/migration.js';

describe("QEMU's migration states in the engine's terms", () => {
  it('maps every state QEMU 10 reports (qapi MigrationStatus) and fails the ones NovaCron never enables', () => {
    const expected: Record<string, string> = {
      none: 'none', setup: 'setup', active: 'precopy', 'wait-unplug': 'precopy', 'pre-switchover': 'paused-for-disks', device: 'switchover',
      cancelling: 'cancelling', cancelled: 'cancelled', completed: 'completed', failed: 'failed',
      'postcopy-device': 'failed', 'postcopy-active': 'failed', 'postcopy-paused': 'failed', 'postcopy-recover-setup': 'failed', 'postcopy-recover': 'failed', colo: 'failed',
    };
    for (const [qemu, status] of Object.entries(expected)) expect(migrationStatus(qemu).status, qemu).toBe(status);
    expect(migrationStatus('colo').error).toMatch(/colo/);
    expect(migrationStatus(undefined)).toEqual({ status: 'none' });
  });
});
