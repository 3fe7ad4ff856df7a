/**
 * The audit trail: every mutating request and every refused credential or privilege
 * (who, what, target, source address, result, request id), as `audit.request` events in
 * the event log — persisted with the other events (retention `eventRetention`),
 * queryable (`GET /v1/audit`), and on the event stream for callers with `Sys.Audit`.
 * Records are written in batches (at most every `flushMs`), so auditing adds no store
 * write of its own to each request.
 */
import type { Logger } from 'pino';
import type { EventLog } from '../events/log.js';
import type { EventDraft, NovaEvent } from '../events/types.js';

export interface AuditRecord {
  /** `user` or `user!tokenId`; absent when no credentials were valid. */
  principal: string | undefined;
  method: string;
  path: string;
  status: number;
  code?: string;
  source: string;
  requestId: string;
}

export const AUDIT_TYPE = 'audit.request';

export class AuditLog {
  #queue: EventDraft[] = [];
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly events: EventLog,
    private readonly log: Logger,
    private readonly flushMs = 100,
  ) {}

  record(rec: AuditRecord): void {
    const { principal, ...rest } = rec;
    this.#queue.push({ type: AUDIT_TYPE, data: { ...(principal ? { principal } : {}), ...rest } });
    if (this.#queue.length >= 512) void this.flush();
    else this.#timer ??= setTimeout(() => void this.flush(), this.flushMs);
  }

  /** Writes what is queued (in order with earlier flushes). */
  flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#queue.splice(0);
    if (batch.length === 0) return this.#flushing;
    this.#flushing = this.#flushing.then(() =>
      this.events.commit([], batch).then(
        () => undefined,
        (err) => this.log.error({ err, records: batch.length }, 'writing audit records failed'),
      ),
    );
    return this.#flushing;
  }

  /** Records after `since` (a sequence number), oldest first, optionally of one principal. */
  async list(q: { since: number; principal?: string; limit: number }): Promise<NovaEvent[]> {
    await this.flush();
    const out: NovaEvent[] = [];
    let after = q.since;
    for (;;) {
      const page = await this.events.readAfter(after, 1000, { types: [AUDIT_TYPE] });
      for (const ev of page) if (!q.principal || ev.data.principal === q.principal || String(ev.data.principal).startsWith(`${q.principal}!`)) out.push(ev);
      if (page.length < 1000 || out.length >= q.limit) return out.slice(0, q.limit);
      after = page.at(-1)!.seq;
    }
  }
}
