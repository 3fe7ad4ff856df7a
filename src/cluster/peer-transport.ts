/**
 * Outbound Raft traffic: one WebSocket per peer, dialled on demand, re-dialled with
 * exponential backoff. Messages that cannot go out (peer down, queue full) are dropped
 * and reported to Raft as unreachable — Raft retries by design, so the transport never
 * buffers without bound or blocks the Raft thread.
 */
import WebSocket from 'ws';
import type { Logger } from 'pino';
import type { RaftOutbound } from '../native/raft-node.js';
import type { MemberTls } from '../tls/member-tls.js';
import { HEADERS, PEER_PATH, packFrames, toFrames } from './peer-frames.js';

export interface PeerIdentity {
  clusterId: string;
  memberId: number;
  /** Where this member's cluster port listens (announced to peers on connect). */
  address: string;
  /** This member's certificate, as it is now (it is renewed in place); undefined while it has none yet (nothing is sent then). */
  tls: () => MemberTls | undefined;
}

export interface DeliveryReports {
  unreachable(id: number): void;
  snapshot(id: number, delivered: boolean): void;
}

const BACKOFF_MIN_MS = 50;
const BACKOFF_MAX_MS = 2000;
/** Bytes queued on one peer's socket before further messages are dropped. */
const HIGH_WATER = 64 << 20;
/** Messages queued while a connection is being (re)established. */
const MAX_QUEUED = 4096;

class PeerLink {
  #ws: WebSocket | undefined;
  #queue: RaftOutbound[] = [];
  #backoff = BACKOFF_MIN_MS;
  #retryAt = 0;
  #closed = false;
  /** Why the last connection attempt failed, for status pages and logs. */
  lastError: string | undefined;
  connected = false;

  constructor(
    readonly id: number,
    public address: string,
    private readonly me: PeerIdentity,
    private readonly reports: DeliveryReports,
    private readonly log: Logger,
  ) {}

  /** Sends one Ready's messages for this peer: small ones share frames. */
  send(batch: RaftOutbound[]): void {
    if (this.#closed) return;
    if (this.#ws?.readyState === WebSocket.OPEN) return this.#write(batch);
    for (const msg of batch) {
      if (this.#queue.length >= MAX_QUEUED || Date.now() < this.#retryAt) this.#drop(msg);
      else this.#queue.push(msg);
    }
    if (!this.#ws && this.#queue.length > 0) {
      const tls = this.me.tls();
      if (tls) this.#dial(tls);
      else for (const msg of this.#queue.splice(0)) this.#drop(msg);
    }
  }

  #drop(msg: RaftOutbound): void {
    this.reports.unreachable(this.id);
    if (msg.snapshot) this.reports.snapshot(this.id, false);
  }

  #write(batch: RaftOutbound[]): void {
    const ws = this.#ws!;
    if (ws.bufferedAmount > HIGH_WATER) return batch.forEach((m) => this.#drop(m));
    const plain = batch.filter((m) => !m.snapshot).map((m) => m.bytes);
    for (const frame of packFrames(plain)) ws.send(frame, { binary: true });
    for (const msg of batch) {
      if (!msg.snapshot) continue;
      const frames = toFrames(msg.bytes);
      frames.forEach((frame, i) => {
        ws.send(frame, { binary: true }, i === frames.length - 1 ? (err) => this.reports.snapshot(this.id, !err) : undefined);
      });
    }
  }

  #dial(tls: MemberTls): void {
    // Mutual TLS: this member's certificate out, and only the member we mean to reach accepted.
    const ws = new WebSocket(`wss://${this.address}${PEER_PATH}`, {
      ...tls.clientOptions(this.id),
      headers: {
        [HEADERS.cluster]: this.me.clusterId,
        [HEADERS.member]: String(this.me.memberId),
        [HEADERS.address]: this.me.address,
      },
      perMessageDeflate: false,
      handshakeTimeout: 2000,
    });
    this.#ws = ws;
    ws.on('open', () => {
      this.connected = true;
      this.lastError = undefined;
      this.#backoff = BACKOFF_MIN_MS;
      this.#write(this.#queue.splice(0));
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => {
        this.lastError = `HTTP ${res.statusCode}: ${body.slice(0, 300)}`;
        this.log.warn({ peer: this.id, address: this.address, error: this.lastError }, 'peer refused the raft connection');
        ws.terminate();
      });
    });
    ws.on('error', (err) => {
      this.lastError ??= err.message;
    });
    ws.on('close', (code, reason) => {
      if (code >= 4000) this.log.warn({ peer: this.id, code, reason: reason.toString() }, 'peer closed the raft connection');
      this.connected = false;
      if (this.#ws === ws) this.#ws = undefined;
      for (const msg of this.#queue.splice(0)) this.#drop(msg);
      this.#retryAt = Date.now() + this.#backoff * (0.5 + Math.random() / 2);
      this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS);
    });
  }

  /** The peer moved (it restarted on another port): reconnect to the new address. */
  moveTo(address: string): void {
    if (address === this.address) return;
    this.address = address;
    this.#retryAt = 0;
    this.#backoff = BACKOFF_MIN_MS;
    this.#ws?.terminate();
  }

  close(): void {
    this.#closed = true;
    this.#queue = [];
    this.#ws?.terminate();
  }
}

export interface PeerState {
  id: number;
  address: string;
  connected: boolean;
  lastError?: string;
}

export class PeerTransport {
  #links = new Map<number, PeerLink>();
  #addresses = new Map<number, string>();
  /** Addresses peers announced themselves when dialling us: newer than the replicated table. */
  #announced = new Set<number>();

  constructor(
    private readonly me: PeerIdentity,
    private readonly reports: DeliveryReports,
    private readonly log: Logger,
  ) {}

  /**
   * Where member `id` listens, from the replicated member table (`announced` false) or
   * from the peer's own handshake (`announced` true). A member that restarted on another
   * port announces itself when it dials us, and that beats the table, which records the
   * address it joined with.
   */
  setAddress(id: number, address: string, announced = false): void {
    if (id === this.me.memberId) return;
    if (announced) this.#announced.add(id);
    else if (this.#announced.has(id)) return;
    this.#addresses.set(id, address);
    this.#links.get(id)?.moveTo(address);
  }

  /** Forgets a removed member. */
  forget(id: number): void {
    this.#addresses.delete(id);
    this.#announced.delete(id);
    this.#links.get(id)?.close();
    this.#links.delete(id);
  }

  send(batch: RaftOutbound[]): void {
    const byPeer = new Map<number, RaftOutbound[]>();
    for (const msg of batch) {
      const list = byPeer.get(msg.to);
      if (list) list.push(msg);
      else byPeer.set(msg.to, [msg]);
    }
    for (const [to, msgs] of byPeer) {
      let link = this.#links.get(to);
      if (!link) {
        const address = this.#addresses.get(to);
        if (!address) {
          this.reports.unreachable(to);
          if (msgs.some((m) => m.snapshot)) this.reports.snapshot(to, false);
          continue;
        }
        link = new PeerLink(to, address, this.me, this.reports, this.log);
        this.#links.set(to, link);
      }
      link.send(msgs);
    }
  }

  peers(): PeerState[] {
    return [...this.#addresses].map(([id, address]) => {
      const link = this.#links.get(id);
      const out: PeerState = { id, address, connected: link?.connected ?? false };
      if (link?.lastError) out.lastError = link.lastError;
      return out;
    });
  }

  close(): void {
    for (const link of this.#links.values()) link.close();
    this.#links.clear();
  }
}
