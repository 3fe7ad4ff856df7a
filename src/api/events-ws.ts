/**
 * `GET /v1/events`: the event stream over WebSocket, binary msgpackr frames.
 *
 * Protocol (every frame is one msgpack map):
 * - client → server `{type:'subscribe', from?: seq, filter?: {vmId?, tenant?, types?}}`
 *   replaces the subscription; with `from`, stored events with seq > from are replayed
 *   first, then live ones follow with no gap and no duplicate. The same can be given as
 *   query parameters on connect (`?from=&vmId=&tenant=&types=a,b`).
 * - server → client `{type:'subscribed', lastSeq}`, `{type:'event', event}`,
 *   `{type:'replayed', seq}` (replay finished), `{type:'error', code, message}`.
 * A client that cannot keep up is disconnected (close code 4008) and resumes from the
 * last seq it saw.
 */
import { Packr } from 'msgpackr';
import { z } from 'zod';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { EventLog } from '../events/log.js';
import type { EventFilter, NovaEvent } from '../events/types.js';
import type { UWS } from './uws.js';
import { upgradeWebSocket, type WsRouteInstaller } from './server.js';
import { parseWith } from './validate.js';
import { ROOT } from '../auth/acl.js';
import type { Principal } from '../auth/principal.js';

const packr = new Packr({ useRecords: false });
const REPLAY_PAGE = 1000;
const HIGH_WATER = 1 << 20;

const FilterSchema = z.strictObject({
  vmId: z.string().max(64).optional(),
  tenant: z.string().max(63).optional(),
  types: z.array(z.string().max(64)).max(32).optional(),
});
const ClientFrame = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('subscribe'), from: z.int().min(0).optional(), filter: FilterSchema.optional() }),
  z.strictObject({ type: z.literal('ping') }),
]);

interface Conn {
  filter: EventFilter;
  /** What the caller may see; undefined when everything. */
  visible: ((ev: NovaEvent) => boolean) | undefined;
  /** Highest seq delivered (or skipped by the filter) so far. */
  cursor: number;
  replaying: boolean;
  buffered: NovaEvent[];
  unsubscribe?: () => void;
  closed: boolean;
  drainWaiters: Array<() => void>;
  /** Bumped on resubscribe so an older replay loop stops. */
  generation: number;
  initial?: { from?: number };
}

/** The events a principal may see: all with Sys.Audit; else those of VMs and volumes it may audit. */
export function eventVisibility(who: Principal): ((ev: NovaEvent) => boolean) | undefined {
  if (who.can('Sys.Audit', ROOT)) return undefined;
  return (ev) => {
    const tenant = ev.tenant ?? 'default';
    if (ev.type.startsWith('volume.')) return who.can('Pool.Audit', { kind: 'volume', pool: String(ev.data.pool), tenant });
    return ev.vmId !== undefined && who.can('VM.Audit', { kind: 'vm', id: ev.vmId, tenant });
  };
}

export function eventsWsRoute(events: EventLog, log: Logger): WsRouteInstaller {
  return (app, authenticate) => {
    app.ws<Conn>('/v1/events', {
      compression: 0,
      maxPayloadLength: 64 * 1024,
      maxBackpressure: 8 * HIGH_WATER,
      closeOnBackpressureLimit: 0, // We close ourselves, with a code that tells the client to resume.
      idleTimeout: 120,
      sendPingsAutomatically: true,
      upgrade: (res, req, context) =>
        upgradeWebSocket(res, req, context, authenticate, (r, who): Conn => {
          const q = parseWith(
            z.strictObject({ from: z.coerce.number().int().min(0).optional(), vmId: z.string().max(64).optional(), tenant: z.string().max(63).optional(), types: z.string().max(2048).optional() }),
            Object.fromEntries(new URLSearchParams(r.getQuery() ?? '')),
            'BAD_QUERY',
          );
          const filter: EventFilter = {};
          if (q.vmId) filter.vmId = q.vmId;
          if (q.tenant) filter.tenant = q.tenant;
          if (q.types) filter.types = q.types.split(',').filter(Boolean);
          return { filter, visible: eventVisibility(who!), cursor: 0, replaying: false, buffered: [], closed: false, drainWaiters: [], generation: 0, initial: q.from !== undefined ? { from: q.from } : {} };
        }),
      open: (ws) => {
        const conn = ws.getUserData();
        subscribe(ws, conn, conn.initial?.from, conn.filter);
      },
      message: (ws, message) => {
        const conn = ws.getUserData();
        let frame: z.infer<typeof ClientFrame>;
        try {
          frame = parseWith(ClientFrame, packr.unpack(Buffer.from(message.slice(0))));
        } catch (err) {
          const e = err instanceof NovaError ? err : new NovaError('BAD_JSON', 'frame is not valid msgpack');
          send(ws, conn, { type: 'error', code: e.code, message: e.message });
          return;
        }
        if (frame.type === 'ping') send(ws, conn, { type: 'pong', lastSeq: events.lastSeq });
        else subscribe(ws, conn, frame.from, frame.filter ?? {});
      },
      drain: (ws) => {
        const conn = ws.getUserData();
        if (ws.getBufferedAmount() < HIGH_WATER) for (const w of conn.drainWaiters.splice(0)) w();
      },
      close: (ws) => {
        const conn = ws.getUserData();
        conn.closed = true;
        conn.unsubscribe?.();
        for (const w of conn.drainWaiters.splice(0)) w();
      },
    });
  };

  function send(ws: UWS.WebSocket<Conn>, conn: Conn, frame: unknown): void {
    if (conn.closed) return;
    const status = ws.send(packr.pack(frame), true);
    if (status === 2) {
      // Dropped: the client is too slow. It must reconnect and resume from its last seq.
      conn.closed = true;
      conn.unsubscribe?.();
      ws.end(4008, 'slow consumer: resume from your last seq');
    }
  }

  function deliver(ws: UWS.WebSocket<Conn>, conn: Conn, ev: NovaEvent): void {
    if (ev.seq <= conn.cursor) return;
    conn.cursor = ev.seq;
    send(ws, conn, { type: 'event', event: ev });
  }

  function subscribe(ws: UWS.WebSocket<Conn>, conn: Conn, from: number | undefined, filter: EventFilter): void {
    conn.unsubscribe?.();
    conn.generation++;
    conn.filter = conn.visible ? { ...filter, visible: conn.visible } : filter;
    filter = conn.filter;
    conn.buffered = [];
    conn.cursor = from ?? events.lastSeq;
    conn.replaying = from !== undefined;
    conn.unsubscribe = events.subscribe(filter, (ev) => {
      if (conn.replaying) conn.buffered.push(ev);
      else deliver(ws, conn, ev);
    });
    send(ws, conn, { type: 'subscribed', lastSeq: events.lastSeq, from: conn.cursor });
    if (conn.replaying) void replay(ws, conn, conn.generation);
  }

  async function replay(ws: UWS.WebSocket<Conn>, conn: Conn, generation: number): Promise<void> {
    const current = () => !conn.closed && conn.generation === generation;
    try {
      for (;;) {
        const page = await events.readAfter(conn.cursor, REPLAY_PAGE, conn.filter);
        if (!current()) return;
        ws.cork(() => {
          for (const ev of page) deliver(ws, conn, ev);
        });
        if (page.length < REPLAY_PAGE) break;
        if (!conn.closed && ws.getBufferedAmount() > HIGH_WATER) await new Promise<void>((r) => conn.drainWaiters.push(r));
        if (!current()) return;
      }
      // Everything stored up to now is sent; live events that arrived meanwhile follow.
      conn.replaying = false;
      ws.cork(() => {
        for (const ev of conn.buffered.splice(0)) deliver(ws, conn, ev);
        send(ws, conn, { type: 'replayed', seq: conn.cursor });
      });
    } catch (err) {
      if (!current()) return;
      const e = err instanceof NovaError ? err : new NovaError('INTERNAL');
      if (!(err instanceof NovaError)) log.error({ err }, 'event replay failed');
      send(ws, conn, { type: 'error', code: e.code, message: e.message });
      conn.replaying = false;
    }
  }
}
