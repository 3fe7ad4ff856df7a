/**
 * The VM records of this member, and the only code that writes them. Every change is
 * one atomic store write (the record, its events and whatever the caller adds), and the
 * in-memory index is touched only once that write has succeeded: a failed write leaves
 * memory and disk agreeing on the old record.
 */
import { pack, unpack } from 'msgpackr';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventDraft } from '../events/types.js';
import { prefixRange, type Store, type WriteOp } from '../store/store.js';
import type { VmRecord } from './record.js';
import { allowedTransitions, canTransition, VM_STATES, type VmState } from './state.js';

const VM_PREFIX = 'vm/';
const vmKey = (id: string) => VM_PREFIX + id;

/** An event of a VM's change; its `vmId` and `tenant` are filled in from the VM. */
export type VmEventDraft = Omit<EventDraft, 'vmId'> & { vmId?: string };

/** One change to a VM record, written with everything else it names in one batch. */
export interface VmChange {
  /** The new state, checked against the state machine; adds a `vm.state` event. Omitted: the state stays. */
  to?: VmState;
  /** Why the VM is in its new state; a state change without one clears the old reason. */
  reason?: string;
  /** Driver runtime facts. Omitted: kept, except that a VM that stops loses them. */
  runtime?: Record<string, unknown>;
  /** Record fields replaced by this change. */
  set?: Partial<Pick<VmRecord, 'spec' | 'checkpoint' | 'template'>>;
  /** Record fields removed by this change. */
  clear?: Array<'checkpoint' | 'incoming'>;
  /** Other keys written in the same batch (operation records, migration records). */
  alsoWrite?: WriteOp[];
  /** Events of this change besides the `vm.state` event a state change adds itself (after it). */
  events?: VmEventDraft[];
  /** Events of this change that come before its `vm.state` event (an inline operation's start). */
  eventsBefore?: VmEventDraft[];
}

export interface ListQuery {
  state?: VmState[];
  tenant?: string;
  /** Every label must match exactly. */
  labels?: Record<string, string>;
  limit: number;
  /** The last id of the previous page. */
  cursor?: string;
  /** Only the VMs the caller may see. */
  visible?: (vm: VmRecord) => boolean;
}

export interface ListPage {
  items: VmRecord[];
  nextCursor?: string;
  total: number;
}

export class VmRegistry {
  readonly #events: EventLog;
  #byId = new Map<string, VmRecord>();
  #byName = new Map<string, string>();
  /** Ids in ascending order (ids are time-ordered), for stable pagination. */
  #ids: string[] = [];
  #json = new Map<string, string>();
  /** Told of every change of a record (before → after; undefined: none), for indexes derived from all records. */
  #observers: Array<(before: VmRecord | undefined, after: VmRecord | undefined) => void> = [];

  observe(fn: (before: VmRecord | undefined, after: VmRecord | undefined) => void): void {
    this.#observers.push(fn);
    for (const vm of this.#byId.values()) fn(undefined, vm);
  }
  /** Names being created right now (reserved before the store write). */
  #reserved = new Set<string>();

  private constructor(events: EventLog) {
    this.#events = events;
  }

  /** Loads every VM record from the store. */
  static async load(store: Store, events: EventLog): Promise<VmRegistry> {
    const reg = new VmRegistry(events);
    for (const e of await store.scan(prefixRange(VM_PREFIX))) reg.#index(unpack(e.value) as VmRecord);
    return reg;
  }

  // ---- reads -------------------------------------------------------------------

  /** By id or name. */
  find(ref: string): VmRecord | undefined {
    return this.#byId.get(ref) ?? this.#byId.get(this.#byName.get(ref) ?? '');
  }

  get(ref: string): VmRecord {
    const vm = this.find(ref);
    if (!vm) throw new NovaError('VM_NOT_FOUND', `no VM with id or name "${ref}"`);
    return vm;
  }

  /** The VM's JSON, cached until it changes (GET by id is the hottest read). */
  getJson(ref: string): string {
    const vm = this.get(ref);
    let json = this.#json.get(vm.id);
    if (json === undefined) {
      json = JSON.stringify(vm);
      this.#json.set(vm.id, json);
    }
    return json;
  }

  all(): IterableIterator<VmRecord> {
    return this.#byId.values();
  }

  get size(): number {
    return this.#byId.size;
  }

  list(q: ListQuery): ListPage {
    const states = q.state && new Set(q.state);
    const labelPairs = q.labels ? Object.entries(q.labels) : [];
    const unfiltered = !states && !q.tenant && labelPairs.length === 0 && !q.visible;
    let i = q.cursor ? bound(this.#ids, q.cursor, true) : 0;
    const items: VmRecord[] = [];
    for (; i < this.#ids.length && items.length < q.limit; i++) {
      const vm = this.#byId.get(this.#ids[i]!)!;
      if (states && !states.has(vm.state)) continue;
      if (q.tenant && vm.spec.tenant !== q.tenant) continue;
      if (labelPairs.some(([k, v]) => vm.spec.labels[k] !== v)) continue;
      if (q.visible && !q.visible(vm)) continue;
      items.push(vm);
    }
    // The total of a filtered list is unknown without a full scan; the API omits it.
    const page: ListPage = { items, total: unfiltered ? this.#ids.length : -1 };
    const more = i < this.#ids.length;
    if (more && items.length > 0) page.nextCursor = items[items.length - 1]!.id;
    return page;
  }

  countByState(): Record<VmState, number> {
    const counts = Object.fromEntries(VM_STATES.map((s) => [s, 0])) as Record<VmState, number>;
    for (const vm of this.#byId.values()) counts[vm.state]++;
    return counts;
  }

  // ---- writes ------------------------------------------------------------------

  /** Holds `name` for a VM about to be inserted (VM_NAME_CONFLICT when taken); the returned function lets it go. */
  reserveName(name: string, conflict = `a VM named "${name}" already exists`): () => void {
    if (this.#byName.has(name) || this.#reserved.has(name)) throw new NovaError('VM_NAME_CONFLICT', conflict);
    this.#reserved.add(name);
    return () => this.#reserved.delete(name);
  }

  /** Writes a new VM record with its events. */
  async insert(vm: VmRecord, events: VmEventDraft[], alsoWrite: WriteOp[] = []): Promise<VmRecord> {
    await this.#write(vm, events, alsoWrite);
    return vm;
  }

  /** Applies `change` to the VM's current record (a new generation), writes it, and returns it. */
  async commit(vmId: string, change: VmChange): Promise<VmRecord> {
    const vm = this.#byId.get(vmId);
    if (!vm) throw new NovaError('VM_NOT_FOUND', `no VM with id "${vmId}"`);
    const next: VmRecord = { ...vm, ...change.set, generation: vm.generation + 1, updatedAt: new Date().toISOString() };
    for (const field of change.clear ?? []) delete next[field];
    const events: VmEventDraft[] = [];
    if (change.to !== undefined) {
      if (!canTransition(vm.state, change.to)) {
        throw new NovaError('VM_INVALID_STATE', `illegal transition ${vm.state} → ${change.to}`, { state: vm.state, allowed: allowedTransitions(vm.state) });
      }
      next.state = change.to;
      if (change.reason !== undefined) next.stateReason = change.reason;
      else delete next.stateReason;
      if (change.runtime === undefined && change.to === 'stopped') delete next.runtime;
      events.push({ type: 'vm.state', data: stripUndefined({ from: vm.state, to: change.to, reason: change.reason }) });
    } else if (change.reason !== undefined) {
      next.stateReason = change.reason; // the state stays; why the last thing failed is news
    }
    if (change.runtime !== undefined) next.runtime = change.runtime;
    await this.#write(next, [...(change.eventsBefore ?? []), ...events, ...(change.events ?? [])], change.alsoWrite ?? []);
    return next;
  }

  /** Deletes the VM's record (with `alsoWrite` and `events` in the same write) and unindexes it. */
  async drop(vm: VmRecord, alsoWrite: WriteOp[], events: EventDraft[]): Promise<void> {
    await this.#events.commit([{ key: vmKey(vm.id) }, ...alsoWrite], events);
    this.#byId.delete(vm.id);
    for (const fn of this.#observers) fn(vm, undefined);
    this.#byName.delete(vm.name);
    this.#json.delete(vm.id);
    const i = bound(this.#ids, vm.id);
    if (this.#ids[i] === vm.id) this.#ids.splice(i, 1);
  }

  async #write(vm: VmRecord, drafts: VmEventDraft[], alsoWrite: WriteOp[]): Promise<void> {
    const events = drafts.map((d) => ({ ...d, vmId: vm.id, tenant: vm.spec.tenant }) as EventDraft);
    await this.#events.commit([{ key: vmKey(vm.id), value: pack(vm) }, ...alsoWrite], events);
    this.#index(vm);
  }

  #index(vm: VmRecord): void {
    const before = this.#byId.get(vm.id);
    for (const fn of this.#observers) fn(before, vm);
    if (!before) this.#ids.splice(bound(this.#ids, vm.id), 0, vm.id);
    this.#byId.set(vm.id, vm);
    this.#byName.set(vm.name, vm.id);
    this.#json.delete(vm.id);
  }
}

export function stripUndefined<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

/** Index of the first id in the sorted `arr` that is >= `x` (or > `x` with `after`). */
function bound(arr: string[], x: string, after = false): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid]! < x || (after && arr[mid] === x)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
