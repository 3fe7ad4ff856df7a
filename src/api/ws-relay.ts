/**
 * WebSocket routes about a VM that runs on another member (console, VNC): the upgrade is
 * accepted here and every frame is relayed to the same route on the VM's member, a `ws`
 * client connection made with this member's assertion of who the caller is (never the
 * caller's credentials), both ways. Either side closing
 * closes the other with its code and reason, so a client sees what the owner said.
 */
import WebSocket from 'ws';
import { FORWARDED_BY, type Forwarder } from './forwarding.js';
import type { UWS } from './uws.js';
import { apiUrl, type HostRecord } from '../cluster/inventory.js';
import type { Principal } from '../auth/principal.js';

/** Set in a connection's user data instead of the route's own when the VM is elsewhere. */
export interface RelayTarget {
  relay: { url: string; headers: Record<string, string>; ca?: string[] };
}

interface RelayState {
  peer?: WebSocket;
  /** Frames from the client before the owner's side opened. */
  queued: Array<{ data: Buffer; binary: boolean }>;
  closed: boolean;
}

const states = new WeakMap<object, RelayState>();
/** Bytes buffered towards the client above which reading from the owner pauses, and below which it resumes. */
const HIGH_WATER = 4 << 20;
const LOW_WATER = 1 << 20;

/** Whether a connection's user data is a relay. */
export function isRelay(data: unknown): data is RelayTarget {
  return typeof data === 'object' && data !== null && 'relay' in data;
}

/** The upgrade data of a relayed connection to `owner`'s route at `url` (path and query), made for `as` with this member's assertion. */
export function relayTarget(forwarder: Forwarder, owner: HostRecord, url: string, as: Principal | undefined): RelayTarget {
  const headers: Record<string, string> = { [FORWARDED_BY]: String(forwarder.self), authorization: forwarder.authorization(owner.member, 'GET', url, as) };
  return { relay: { url: `${apiUrl(owner).replace(/^http/, 'ws')}${url}`, headers, ...(forwarder.ca ? { ca: forwarder.ca } : {}) } };
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
      const state: RelayState = { queued: [], closed: false };
      states.set(data, state);
      const peer = new WebSocket(data.relay.url, { headers: data.relay.headers, perMessageDeflate: false, ...(data.relay.ca ? { ca: data.relay.ca } : {}) });
      state.peer = peer;
      peer.on('open', () => {
        for (const m of state.queued.splice(0)) peer.send(m.data, { binary: m.binary });
      });
      // What reaches the client from outside uWS's own callbacks goes out corked (uWS's rule).
      const end = (code: number, reason: string) => ws.cork(() => ws.end(code, reason));
      peer.on('message', (msg: Buffer, binary: boolean) => {
        if (state.closed) return;
        ws.cork(() => ws.send(msg, binary));
        // Let the client drain before reading more from the owner (a VNC stream is fast).
        if (ws.getBufferedAmount() > HIGH_WATER) peer.pause();
      });
      peer.on('close', (code, reason) => {
        if (state.closed) return;
        state.closed = true;
        end(code >= 1000 && code !== 1005 && code !== 1006 ? code : 1011, reason.toString() || 'the owner closed the connection');
      });
      peer.on('unexpected-response', (_req, res) => {
        if (state.closed) return;
        state.closed = true;
        end(4502, `the VM's member refused the connection (HTTP ${res.statusCode})`);
      });
      peer.on('error', (err) => {
        if (state.closed) return;
        state.closed = true;
        end(4502, `the VM's member could not be reached: ${err.message}`.slice(0, 120));
      });
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
      if (state.peer?.readyState === WebSocket.OPEN) state.peer.send(copy, { binary: isBinary });
      else state.queued.push({ data: copy, binary: isBinary });
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
