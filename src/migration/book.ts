/**
 * Migration records: an in-memory map backed by the store, each change written with its
 * event in one atomic commit (like VM state changes).
 */
import { pack, unpack } from 'msgpackr';
import { NovaError, type ErrorCode } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventDraft, EventType } from '../events/types.js';
import { prefixRange, type Store, type WriteOp } from '../store/store.js';
import { MIG_PREFIX, migKey, type MigrationRecord } from './record.js';
import { idAt } from '../ids.js';

/** Finished records kept in memory (all stay in the store). */
const KEEP_FINISHED = 1000;

export class MigrationBook {
  #records = new Map<string, MigrationRecord>();
  #events: EventLog;
  #store: Store;

  private constructor(store: Store, events: EventLog) {
    this.#store = store;
    this.#events = events;
  }

  /** Loads records; ones still running belonged to a daemon that died: they failed. */
  static async open(store: Store, events: EventLog): Promise<MigrationBook> {
    const book = new MigrationBook(store, events);
    const interrupted: MigrationRecord[] = [];
    for (const e of await store.scan(prefixRange(MIG_PREFIX))) {
      const rec = unpack(e.value) as MigrationRecord;
      book.#records.set(rec.id, rec);
      if (rec.state === 'running') interrupted.push(rec);
    }
    for (const rec of interrupted) {
      await book.save(book.finished(rec, 'failed', { code: 'MIGRATION_TRANSPORT', message: 'interrupted by a daemon restart' }), 'migration.failed');
    }
    return book;
  }

  get(id: string): MigrationRecord {
    const rec = this.#records.get(id);
    if (!rec) throw new NovaError('MIGRATION_NOT_FOUND', `no migration "${id}"`);
    return rec;
  }

  list(): MigrationRecord[] {
    return [...this.#records.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
  }

  /** The write that stores `rec` (for callers committing it with other changes). */
  op(rec: MigrationRecord): WriteOp {
    return { key: migKey(rec.id), value: pack(rec) };
  }

  event(rec: MigrationRecord, type: EventType, extra: Record<string, unknown> = {}): EventDraft {
    return { type, vmId: rec.vmId, data: { migrationId: rec.id, role: rec.role, phase: rec.phase, state: rec.state, progress: rec.progress, ...extra } };
  }

  /** Remembers `rec` without writing it (the caller commits `op(rec)`). */
  track(rec: MigrationRecord): void {
    this.#records.set(rec.id, rec);
    this.#trim();
  }

  async save(rec: MigrationRecord, type?: EventType, extra?: Record<string, unknown>): Promise<void> {
    this.track(rec);
    await this.#events.commit([this.op(rec)], type ? [this.event(rec, type, extra)] : []);
  }

  finished(rec: MigrationRecord, state: 'completed' | 'failed' | 'cancelled', error?: { code: ErrorCode; message: string }): MigrationRecord {
    const now = new Date().toISOString();
    return { ...rec, state, phase: 'done', ...(error ? { error } : {}), updatedAt: now, finishedAt: now, totalMs: Date.parse(now) - Date.parse(rec.createdAt) };
  }

  /** Deletes finished records of migrations started before `cutoffMs`; returns how many. */
  async trimBefore(cutoffMs: number): Promise<number> {
    const old = (await this.#store.scan({ start: migKey('mig-'), end: migKey(idAt('mig', cutoffMs)) })).filter((e) => (unpack(e.value) as MigrationRecord).state !== 'running');
    if (old.length === 0) return 0;
    await this.#events.commit(old.map((e) => ({ key: e.key })), []);
    for (const e of old) this.#records.delete((unpack(e.value) as MigrationRecord).id);
    return old.length;
  }

  #trim(): void {
    let excess = this.#records.size - KEEP_FINISHED;
    for (const [id, r] of this.#records) {
      if (excess <= 0) break;
      if (r.state !== 'running') {
        this.#records.delete(id);
        excess--;
      }
    }
  }
}
