/**
 * The source end of the disk-mirror tunnel: a unix socket the source QEMU's NBD client
 * connects to. Each of its connections becomes one more TLS connection to the destination
 * daemon's migration port (its certificate pinned), authenticated by the migration's token
 * (a `hello` naming the `nbd` stream), which the destination splices onto its QEMU's NBD
 * server. Bytes pass through unchanged in both directions.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import type { LinkBucket } from '../native/miglink.js';
import { controlFrame, TRANSPORT_VERSION } from './wire.js';
import { dialPinned, type PinnedTarget } from './secure-link.js';

export interface TunnelTarget extends PinnedTarget {
  migrationId: string;
  token: string;
}

export class NbdTunnel {
  #server: Server;
  #sockets = new Set<Socket>();

  private constructor(
    readonly socketPath: string,
    private readonly target: TunnelTarget,
    private readonly onError: (err: Error) => void,
    private readonly bucket?: LinkBucket,
  ) {
    this.#server = createServer((local) => this.#splice(local));
  }

  static async open(socketPath: string, target: TunnelTarget, onError: (err: Error) => void, bucket?: LinkBucket): Promise<NbdTunnel> {
    rmSync(socketPath, { force: true });
    const t = new NbdTunnel(socketPath, target, onError, bucket);
    await new Promise<void>((resolve, reject) => {
      t.#server.once('error', reject);
      t.#server.listen(socketPath, resolve);
    });
    return t;
  }

  #splice(local: Socket): void {
    this.#sockets.add(local);
    local.pause(); // until the destination has proved it is the one the offer named
    local.on('error', () => undefined);
    local.on('close', () => this.#sockets.delete(local));
    const where = `${this.target.host}:${this.target.port}`;
    dialPinned(this.target).then(
      (remote) => {
        if (local.destroyed) return void remote.destroy();
        this.#sockets.add(remote);
        for (const s of [local, remote]) {
          s.on('close', () => {
            this.#sockets.delete(s);
            local.destroy();
            remote.destroy();
          });
        }
        remote.on('error', (err) => this.onError(new Error(`disk mirror tunnel to ${where}: ${err.message}`)));
        // NBD servers speak first, so nothing from QEMU is sent before the hello.
        for (const b of controlFrame({ type: 'hello', version: TRANSPORT_VERSION, migrationId: this.target.migrationId, token: this.target.token, stream: 'nbd' })) remote.write(b);
        this.#forward(local, remote);
        remote.pipe(local); // replies to the mirror's requests: small, uncapped
        local.resume();
      },
      (err: Error) => {
        this.onError(new Error(`disk mirror tunnel to ${where}: ${err.message}`));
        local.destroy();
      },
    );
  }

  /** Source → destination (the disk data), under the link's cap and the socket's backpressure. */
  #forward(local: Socket, remote: Socket): void {
    const held = { cap: false, drain: false };
    const flow = () => (held.cap || held.drain ? local.pause() : local.resume());
    remote.on('drain', () => {
      held.drain = false;
      flow();
    });
    local.on('data', (chunk: Buffer) => {
      if (!remote.write(chunk)) held.drain = true;
      const wait = this.bucket?.spend(chunk.length) ?? 0;
      if (wait > 0 && !held.cap) {
        held.cap = true;
        setTimeout(() => {
          held.cap = false;
          flow();
        }, wait).unref();
      }
      flow();
    });
    local.on('end', () => remote.end());
  }

  close(): void {
    this.#server.close();
    for (const s of this.#sockets) s.destroy();
    rmSync(this.socketPath, { force: true });
  }
}
