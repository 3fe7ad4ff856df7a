/**
 * The event log: every state change is an event with a monotonic sequence number,
 * persisted in the same atomic store write as the change itself, then published to
 * live subscribers in sequence order. Clients that reconnect replay from the store.
 */
import { pack, unpack } from 'msgpackr';
import { NovaError } from '../errors.js';
import type { Store, WriteOp } from '../store/store.js';
import { prefixRange } from '../store/store.js';
import { matches, type EventDraft, type EventFilter, type NovaEvent } from './types.js';

const PREFIX = 'ev/';
const eventKey = (seq: number) => PREFIX + seq.toString().padStart(16, '0');

export interface EventLogOptions {
  /** Events kept for replay; older ones are trimmed. Default 100,000. */
  retain?: number;
}

type Listener = (ev: NovaEvent) => void;

export class EventLog {
  #store: Store;
  #lastSeq: number;
  #firstSeq: number;
  #retain: number;
  #listeners = new Set<{ filter: EventFilter; fn: Listener }>();
  #trimming = false;

  private constructor(store: Store, firstSeq: number, lastSeq: number, retain: number) {
    this.#store = store;
    this.#firstSeq = firstSeq;
    this.#lastSeq = lastSeq;
    this.#retain = retain;
  }

  static async open(store: Store, opts: EventLogOptions = {}): Promise<EventLog> {
    const [last] = await store.scan(prefixRange(PREFIX, { limit: 1, reverse: true }));
    const [first] = await store.scan(prefixRange(PREFIX, { limit: 1 }));
    const seqOf = (k: string) => Number(k.slice(PREFIX.length));
    return new EventLog(store, first ? seqOf(first.key) : 1, last ? seqOf(last.key) : 0, opts.retain ?? 100_000);
  }

  get lastSeq(): number {
    return this.#lastSeq;
  }

  /** Oldest sequence number still available for replay. */
  get firstSeq(): number {
    return this.#firstSeq;
  }

  /**
   * Writes `ops` and the events atomically, then publishes the events. Sequence numbers
   * are assigned here, synchronously with the store write call, so store order (which
   * RocksStore preserves) equals sequence order.
   */
  async commit(ops: WriteOp[], drafts: EventDraft[]): Promise<NovaEvent[]> {
    const time = new Date().toISOString();
    const events = drafts.map((d) => ({ seq: ++this.#lastSeq, time, ...d }));
    await this.#store.write([...ops, ...events.map((e) => ({ key: eventKey(e.seq), value: pack(e) }))]);
    for (const ev of events) this.#publish(ev);
    this.#maybeTrim();
    return events;
  }

  /** Live events matching `filter`; returns an unsubscribe function. */
  subscribe(filter: EventFilter, fn: Listener): () => void {
    const entry = { filter, fn };
    this.#listeners.add(entry);
    return () => this.#listeners.delete(entry);
  }

  /** Stored events with seq > `afterSeq`, oldest first, at most `limit`. */
  async readAfter(afterSeq: number, limit: number, filter: EventFilter = {}): Promise<NovaEvent[]> {
    if (afterSeq + 1 < this.#firstSeq) {
      throw new NovaError('EVENTS_EXPIRED', `events after ${afterSeq} are no longer retained (oldest is ${this.#firstSeq})`);
    }
    const out: NovaEvent[] = [];
    let from = afterSeq + 1;
    while (out.length < limit) {
      const page = await this.#store.scan({ start: eventKey(from), end: prefixRange(PREFIX).end, limit: 512 });
      for (const e of page) {
        const ev = unpack(e.value) as NovaEvent;
        if (matches(filter, ev)) out.push(ev);
        if (out.length >= limit) break;
      }
      if (page.length < 512) break;
      from = (unpack(page[page.length - 1]!.value) as NovaEvent).seq + 1;
    }
    return out;
  }

  #publish(ev: NovaEvent): void {
    for (const l of this.#listeners) {
      if (matches(l.filter, ev)) l.fn(ev);
    }
  }

  #maybeTrim(): void {
    const excess = this.#lastSeq - this.#firstSeq + 1 - this.#retain;
    if (this.#trimming || excess < Math.max(1000, this.#retain / 10)) return;
    this.#trimming = true;
    const upTo = this.#firstSeq + excess;
    this.#store
      .scan({ start: eventKey(this.#firstSeq), end: eventKey(upTo) })
      .then((old) => this.#store.write(old.map((e) => ({ key: e.key }))))
      .then(() => { this.#firstSeq = upTo; })
      .catch(() => { /* retried on the next commit */ })
      .finally(() => { this.#trimming = false; });
  }
}
