/** Event types; a stable vocabulary for WebSocket clients. */
export const EVENT_TYPES = [
  'vm.created', 'vm.updated', 'vm.deleted', 'vm.state', 'vm.snapshot',
  'operation.started', 'operation.progress', 'operation.succeeded', 'operation.failed',
  'vm.migrated', 'migration.started', 'migration.progress', 'migration.completed', 'migration.failed', 'migration.cancelled',
  'volume.created', 'volume.updated', 'volume.deleted', 'volume.progress',
  'audit.request',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** A persisted event. `seq` is strictly increasing (gaps are possible after failed writes). */
export interface NovaEvent {
  seq: number;
  time: string;
  type: EventType;
  vmId?: string;
  tenant?: string;
  operationId?: string;
  data: Record<string, unknown>;
}

export type EventDraft = Omit<NovaEvent, 'seq' | 'time'>;

export interface EventFilter {
  vmId?: string;
  tenant?: string;
  /** Event types to deliver; a trailing '*' matches a prefix ("vm.*"). */
  types?: string[];
  /** Only the events the subscriber may see (set by the server from the caller's privileges, never by a client). */
  visible?: (ev: NovaEvent) => boolean;
}

export function matches(filter: EventFilter, ev: NovaEvent): boolean {
  if (filter.vmId !== undefined && ev.vmId !== filter.vmId) return false;
  if (filter.tenant !== undefined && ev.tenant !== filter.tenant) return false;
  if (filter.types && filter.types.length > 0) {
    if (!filter.types.some((t) => (t.endsWith('*') ? ev.type.startsWith(t.slice(0, -1)) : ev.type === t))) return false;
  }
  return filter.visible === undefined || filter.visible(ev);
}
