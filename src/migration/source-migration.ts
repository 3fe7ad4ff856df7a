/**
 * What every outgoing migration (live or cold) shares: its record and how it is saved,
 * the link to the destination, cancellation, and how a failure is settled — the VM
 * stays here, and the record and the VM's state are written in one commit.
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { VmService } from '../vm/service.js';
import type { MigrationBook } from './book.js';
import { PeerLink, type TargetCredential } from './peer.js';
import type { MigrationRecord } from './record.js';

export interface SourceDeps {
  vms: VmService;
  book: MigrationBook;
  log: Logger;
  nodeId: string;
  /** How the source authenticates to the target daemon. */
  credential: TargetCredential;
}

export abstract class SourceMigration {
  protected rec: MigrationRecord;
  protected readonly peer: PeerLink;
  protected cancelled = false;

  constructor(
    protected readonly base: SourceDeps,
    rec: MigrationRecord,
    protected readonly target: string,
  ) {
    this.rec = rec;
    this.peer = new PeerLink(target, rec.id, base.credential);
  }

  get record(): MigrationRecord {
    return this.rec;
  }

  cancel(): void {
    this.cancelled = true;
    this.peer.wake();
  }

  /** Throws if cancelled or if the link has failed. */
  protected check(): void {
    if (this.cancelled) throw new NovaError('MIGRATION_CANCELLED', 'cancelled by request');
    if (this.peer.failure) throw this.peer.failure;
  }

  protected async update(patch: Partial<MigrationRecord>, event?: 'migration.progress'): Promise<void> {
    this.rec = { ...this.rec, ...patch, updatedAt: new Date().toISOString() };
    await this.base.book.save(this.rec, event);
  }

  /** The error to record for `err`; for a broken connection, the destination's own reason if it has one. */
  protected async errorOf(err: unknown): Promise<NovaError> {
    if (this.cancelled) return new NovaError('MIGRATION_CANCELLED', 'cancelled by request');
    const e = err instanceof NovaError ? err : new NovaError('MIGRATION_FAILED', (err as Error).message ?? String(err));
    return e.code === 'MIGRATION_TRANSPORT' ? ((await this.peer.reasonFromDestination()) ?? e) : e;
  }

  /** Records the failure (or cancel) and settles the VM here (`stuck`: outcome unknown → error). */
  protected async settleFailure(error: NovaError, reason: (state: string) => string, stuck = false): Promise<void> {
    const { book, vms, log } = this.base;
    const vmId = this.rec.vmId;
    const state = this.cancelled ? 'cancelled' : 'failed';
    const done = book.finished(this.rec, state, { code: error.code, message: error.message });
    // The record shows the outcome only once the VM is settled, so a client that sees
    // `cancelled`/`failed` also sees the VM back in its state.
    await vms
      .migrationAbandoned(vmId, reason(state), [book.op(done)], [book.event(done, state === 'cancelled' ? 'migration.cancelled' : 'migration.failed', { error: done.error })], stuck)
      .catch((e) => log.error({ err: e, vmId }, 'could not settle VM after failed migration'));
    this.rec = done;
    book.track(done);
  }

  /** Records success: the VM is the destination's now and leaves this node's records. */
  protected async settleSuccess(extra: Record<string, unknown>): Promise<void> {
    const { book, vms } = this.base;
    const done = book.finished(this.rec, 'completed');
    let left: { cleanedUp: Promise<void> } | undefined;
    try {
      left = await vms.migratedAway(done.vmId, [book.op(done)], [book.event(done, 'migration.completed', { target: this.target, totalMs: done.totalMs, ...extra })]);
    } finally {
      // Shown as completed once the VM has left this node's records (as for failures), not
      // only once its files are gone: the inventory publishes what the record says then.
      this.rec = done;
      book.track(done);
    }
    await left.cleanedUp;
  }
}
