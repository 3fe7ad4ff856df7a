/**
 * WebSocket routes about a VM that runs on another member (console, VNC, telemetry): the
 * upgrade is accepted here at once, the VM's member is looked up, and every frame is relayed
 * to the same route on it, a `ws` client connection made with this member's assertion of who
 * the caller is (never the caller's credentials), both ways. Either side closing closes the
 * other with its code and reason, so a client sees what the owner said. What fails after the
 * upgrade closes with 4000 + the HTTP status it would have had: 4404 when no member has the
 * VM, 4403 (or the owner's other refusal) when the owner refuses, 4502 when it cannot be reached.
 *
 * The upgrade cannot wait for the lookup: uWS (this build) breaks a WebSocket upgraded after
 * the upgrade handler returned. Its `cork()` then reads the HTTP response's state from memory
 * the new WebSocket reuses and, when the bits read say "close after the response", shuts the
 * fresh connection down (a bare TLS close, no close frame: the client sees 1006). Upstream:
 * uNetworking/uWebSockets#1583, fixed by #1929; upgrading uncorked instead crashes.
 */
import WebSocket from 'ws';
import { FORWARDED_BY, type Forwarder } from './forwarding.js';
import type { UWS } from './uws.js';
import { apiUrl, type HostRecord } from '../cluster/inventory.js';
import type { Principal } from '../auth/principal.js';
import { NovaError } from '../errors.js';

/** Where a relayed connection goes: the owner's route and what to send it. */
export interface RelayEndpoint {
  url: string;
  headers: Record<string, string>;
  ca?: string[];
}

/** Set in a connection's user data instead of the route's own when the VM is not here: the lookup of its member, started at the upgrade. */
export interface RelayTarget {
  relay: Promise<RelayEndpoint>;
}

interface RelayState {
  peer?: WebSocket;
  /** Frames from the client before the owner's side opened, and their bytes. */
  queued: Array<{ data: Buffer; binary: boolean }>;
  queuedBytes: number;
  closed: boolean;
}

/** A close reason within the protocol's 123 bytes. */
function truncate(reason: string): string {
  const bytes = Buffer.from(reason);
  return bytes.length <= 123 ? reason : bytes.subarray(0, 120).toString().replace(/\uFFFD$/, '') + '...';
}

const states = new WeakMap<object, RelayState>();
/** Bytes buffered towards the client above which reading from the owner pauses, and below which it resumes. */
const HIGH_WATER = 4 << 20;
const LOW_WATER = 1 << 20;

/** Whether a connection's user data is a relay. */
export function isRelay(data: unknown): data is RelayTarget {
  return typeof data === 'object' && data !== null && 'relay' in data;
}

/** The endpoint of a relayed connection to `owner`'s route at `url` (path and query), made for `as` with this member's assertion. */
export function relayEndpoint(forwarder: Forwarder, owner: HostRecord, url: string, as: Principal | undefined): RelayEndpoint {
  const headers: Record<string, string> = { [FORWARDED_BY]: String(forwarder.self), authorization: forwarder.authorization(owner.member, 'GET', url, as) };
  return { url: `${apiUrl(owner).replace(/^http/, 'ws')}${url}`, headers, ...(forwarder.ca ? { ca: forwarder.ca } : {}) };
}

/**
 * The upgrade data of a connection about VM `ref`, which this member does not have: looks
 * up its member now (for `as`) and relays to its route at `url`; `notHere` is the error
 * (VM_NOT_FOUND) the connection closes with when no member has it.
 */
export function relayTarget(forwarder: Forwarder, ref: string, url: string, as: Principal | undefined, notHere: NovaError): RelayTarget {
  const relay = forwarder.locate('vm', ref, as).then((owner) => {
    if (!owner) throw notHere;
    return relayEndpoint(forwarder, owner, url, as);
  });
  relay.catch(() => {}); // Answered in `open`; never an unhandled rejection.
  return { relay };
}

/** A WebSocket close code (4000 + an HTTP error status) and reason for `err`. */
function closeFor(err: unknown): { code: number; reason: string } {
  const e = err instanceof NovaError ? err : new NovaError('INTERNAL');
  return { code: 4000 + e.status, reason: `${e.code}: ${e.message}` };
}

/** Opens the relay's own connection to the owner and joins it to the client's `ws`. */
function connect<T>(ws: UWS.WebSocket<T>, state: RelayState, endpoint: RelayEndpoint, end: (code: number, reason: string) => void): void {
  const peer = new WebSocket(endpoint.url, { headers: endpoint.headers, perMessageDeflate: false, ...(endpoint.ca ? { ca: endpoint.ca } : {}) });
  state.peer = peer;
  peer.on('open', () => {
    for (const m of state.queued.splice(0)) peer.send(m.data, { binary: m.binary });
    state.queuedBytes = 0;
  });
  peer.on('message', (msg: Buffer, binary: boolean) => {
    if (state.closed) return;
    ws.cork(() => ws.send(msg, binary));
    // Let the client drain before reading more from the owner (a VNC stream is fast).
    if (ws.getBufferedAmount() > HIGH_WATER) peer.pause();
  });
  const closeWith = (code: number, reason: string) => {
    if (state.closed) return;
    state.closed = true;
    end(code, reason);
  };
  peer.on('close', (code, reason) => closeWith(code >= 1000 && code !== 1005 && code !== 1006 ? code : 1011, reason.toString() || 'the owner closed the connection'));
  peer.on('unexpected-response', (_req, res) => {
    const status = res.statusCode ?? 0;
    closeWith(status >= 400 && status < 600 ? 4000 + status : 4502, `the VM's member refused the connection (HTTP ${status})`);
  });
  peer.on('error', (err) => closeWith(4502, `the VM's member could not be reached: ${err.message}`));
}

/**
 * Wraps a route's handlers: connections upgraded with a `RelayTarget` are relayed, the
 * others handled by the route itself.
 */
export function relaying<T>(behavior: UWS.WebSocketBehavior<T>): UWS.WebSocketBehavior<T> {
  return {
    ...behavior,
    open: (ws) => {
      const data = ws.getUserData();
      if (!isRelay(data)) return behavior.open?.(ws);
      const state: RelayState = { queued: [], queuedBytes: 0, closed: false };
      states.set(data, state);
      // What reaches the client from outside uWS's own callbacks goes out corked (uWS's rule).
      const end = (code: number, reason: string) => ws.cork(() => ws.end(code, truncate(reason)));
      data.relay.then(
        (endpoint) => {
          if (!state.closed) connect(ws, state, endpoint, end);
        },
        (err) => {
          if (state.closed) return;
          state.closed = true;
          const { code, reason } = closeFor(err);
          end(code, reason);
        },
      );
    },
    drain: (ws) => {
      const data = ws.getUserData();
      if (!isRelay(data)) return behavior.drain?.(ws);
      if (ws.getBufferedAmount() < LOW_WATER) states.get(data)?.peer?.resume();
    },
    message: (ws, message, isBinary) => {
      const data = ws.getUserData();
      if (!isRelay(data)) return behavior.message?.(ws, message, isBinary);
      const state = states.get(data);
      if (!state || state.closed) return;
      const copy = Buffer.from(message.slice(0)); // uWS reuses the message's memory.
      if (state.peer?.readyState === WebSocket.OPEN) return state.peer.send(copy, { binary: isBinary });
      state.queued.push({ data: copy, binary: isBinary });
      state.queuedBytes += copy.length;
      if (state.queuedBytes > HIGH_WATER) {
        // (In uWS's own callback: no cork needed.)
        state.closed = true;
        state.peer?.terminate();
        ws.end(4413, `more than ${HIGH_WATER >> 20} MiB sent before the VM's member answered`);
      }
    },
    close: (ws, code, message) => {
      const data = ws.getUserData();
      if (!isRelay(data)) return behavior.close?.(ws, code, message);
      const state = states.get(data);
      if (!state || state.closed) return;
      state.closed = true;
      state.peer?.close(code >= 1000 && code < 5000 && code !== 1005 && code !== 1006 ? code : 1000);
    },
  };
}
