/**
 * The source's link to the destination daemon for one migration: offering the VM over
 * its API, the control connection (hello, control messages; a cold migration's files
 * too), and what the destination says went wrong. Shared by live and cold migrations.
 */
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { isErrorCode, NovaError } from '../errors.js';
import type { MigrationRecord } from './record.js';
import { controlFrame, FrameReader, FrameType, TRANSPORT_VERSION, type ControlMessage } from './wire.js';
import { dialPinned, type PinnedTarget } from './secure-link.js';

/**
 * The Authorization header the source presents to the destination daemon for `method` on
 * `url`: a cluster member gets this member's signed assertion, never a token; a daemon
 * outside the cluster the token an administrator was given for it.
 */
export type TargetCredential = (method: string, url: string) => string;

/** Answer of the target's POST /v1/migrations/incoming. */
export interface IncomingOffer {
  /** The migration port, over TLS with the destination's certificate (`certSha256` pins it). */
  transport: PinnedTarget;
  token: string;
  /** Live migrations through the relay: the destination's data link (crates/miglink) for QEMU's stream. */
  data?: { port: number };
  /** Direct live migrations: the port the destination's QEMU takes the stream on (mutual TLS). */
  direct?: { port: number };
}

/**
 * A destination that aborts says why, then closes; our next write may fail before that
 * message is read. The reason wins over the broken pipe it causes.
 */
const TRANSPORT_LOSS_GRACE_MS = 250;
/**
 * How often the source says it is there on the control connection while QEMU streams
 * directly: nothing of NovaCron's is on the data path then, so the destination learns of
 * a dead link from this falling silent (`INCOMING_SILENCE_MS` in incoming.ts).
 */
export const KEEPALIVE_EVERY_MS = 1000;

export class PeerLink {
  /** The first failure seen (transport, protocol, or the destination's abort). */
  failure?: NovaError;
  /** When the destination confirmed it has the VM (guest resumed / files arrived), ms since epoch. */
  confirmedAt?: number;
  socket?: Socket;
  #wake?: () => void;
  #loss?: Promise<void>;
  #keepAlive?: NodeJS.Timeout;

  constructor(
    readonly target: string,
    readonly migrationId: string,
    readonly credential: TargetCredential,
  ) {}

  #auth(method: string, url: string): Record<string, string> {
    return { authorization: this.credential(method, url) };
  }

  /** Offers the VM to the target daemon; its answer says where to stream. */
  async offer(body: Record<string, unknown>): Promise<IncomingOffer> {
    let res: Response;
    try {
      res = await fetch(`${this.target}/v1/migrations/incoming`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...this.#auth('POST', '/v1/migrations/incoming') },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (err) {
      const e = err as Error;
      throw new NovaError('MIGRATION_TARGET_UNREACHABLE', `cannot reach ${this.target}: ${e.cause instanceof Error ? e.cause.message : e.message}`);
    }
    const json = (await res.json().catch(() => ({}))) as { error?: { code: string; message: string } } & Partial<IncomingOffer>;
    if (!res.ok || !json.transport || !json.token || typeof json.transport.certSha256 !== 'string') {
      throw new NovaError('MIGRATION_TARGET_REJECTED', `${this.target} refused the VM: ${json.error ? `${json.error.code}: ${json.error.message}` : `HTTP ${res.status}`}`, { targetError: json.error });
    }
    return json as IncomingOffer;
  }

  async connect(offer: IncomingOffer): Promise<Socket> {
    const s = await dialPinned(offer.transport).catch((e: Error) => {
      throw new NovaError('MIGRATION_TRANSPORT', `transport connect to ${offer.transport.host}:${offer.transport.port}: ${e.message}`);
    });
    const reader = new FrameReader();
    s.on('data', (chunk: Buffer) => {
      try {
        for (const f of reader.push(chunk)) {
          if (f.type === FrameType.Control) this.#onControl(JSON.parse(f.payload.toString()) as ControlMessage);
          else throw new NovaError('MIGRATION_PROTOCOL', `destination sent frame type ${f.type}`);
        }
      } catch (err) {
        this.fail(err instanceof NovaError ? err : new NovaError('MIGRATION_PROTOCOL', (err as Error).message));
      }
    });
    s.on('error', (e) => this.lost(new NovaError('MIGRATION_TRANSPORT', `transport: ${e.message}`)));
    s.on('close', () => this.lost(new NovaError('MIGRATION_TRANSPORT', 'the destination closed the migration connection')));
    for (const b of controlFrame({ type: 'hello', version: TRANSPORT_VERSION, migrationId: this.migrationId, token: offer.token })) s.write(b);
    this.socket = s;
    return s;
  }

  /** Says `alive` on the control connection every KEEPALIVE_EVERY_MS until closed. */
  keepAlive(): void {
    const frame = Buffer.concat(controlFrame({ type: 'alive' }));
    this.#keepAlive = setInterval(() => this.socket?.write(frame), KEEPALIVE_EVERY_MS);
    this.#keepAlive.unref();
  }

  #onControl(msg: ControlMessage): void {
    if (msg.type === 'resumed' || msg.type === 'arrived') {
      this.confirmedAt = msg.at;
      this.#wake?.();
    } else if (msg.type === 'abort') {
      this.fail(new NovaError(isErrorCode(msg.code) ? msg.code : 'MIGRATION_FAILED', `destination aborted: ${msg.message}`));
    }
  }

  /** A broken connection: a failure unless the destination's own reason arrives first. */
  lost(err: NovaError): void {
    this.#loss ??= new Promise<void>((resolve) =>
      setTimeout(() => {
        this.fail(err);
        resolve();
      }, TRANSPORT_LOSS_GRACE_MS).unref(),
    );
  }

  /**
   * Why the migration failed, as far as the link knows: the failure, or — if the
   * connection broke moments ago — the reason that settles once the grace is over.
   */
  async reason(): Promise<NovaError | undefined> {
    if (!this.failure && this.#loss) await this.#loss;
    return this.failure;
  }

  fail(err: NovaError): void {
    if (this.confirmedAt !== undefined) return; // done: a late close is not a failure
    this.failure ??= err;
    this.#wake?.();
  }

  /** Wakes a pending `nap` (cancel requests). */
  wake(): void {
    this.#wake?.();
  }

  /** Sleeps up to `ms`, waking early on a control message, a failure or `wake()`. */
  async nap(ms: number): Promise<void> {
    await Promise.race([sleep(ms), new Promise<void>((r) => (this.#wake = r))]);
    this.#wake = undefined;
  }

  /** Waits for the destination's confirmation; throws the failure if one comes first. */
  async awaitConfirmed(timeoutMs: number, what: string): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.confirmedAt === undefined) {
      if (this.failure) throw this.failure;
      if (Date.now() > deadline) throw new NovaError('MIGRATION_TRANSPORT', `the destination did not confirm ${what} within ${timeoutMs} ms`);
      await this.nap(100);
    }
    return this.confirmedAt;
  }

  /**
   * When the connection broke, the destination may know why (it refused a frame, its
   * QEMU failed): its record of this migration says, if it can be reached.
   */
  async reasonFromDestination(): Promise<NovaError | undefined> {
    try {
      const path = `/v1/migrations/${this.migrationId}`;
      const res = await fetch(`${this.target}${path}`, { headers: this.#auth('GET', path), signal: AbortSignal.timeout(2000) });
      const rec = (await res.json()) as Partial<MigrationRecord>;
      const e = rec.error;
      if (!res.ok || rec.state !== 'failed' || !e || e.code === 'MIGRATION_TRANSPORT' || !isErrorCode(e.code)) return undefined;
      return new NovaError(e.code, `destination aborted: ${e.message}`);
    } catch {
      return undefined;
    }
  }

  close(): void {
    clearInterval(this.#keepAlive);
    this.socket?.removeAllListeners('close');
    this.socket?.destroy();
  }
}
