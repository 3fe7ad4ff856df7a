/**
 * A QMP (QEMU Machine Protocol) client over a unix socket: greeting and capabilities
 * negotiation, command/response correlation by id, asynchronous events, per-command
 * timeouts. One instance per QEMU process; it does not reconnect by itself (the
 * driver reconnects, since only it knows whether the process still exists).
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** QEMU refused a command: `class` is QMP's error class (e.g. "GenericError"). */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    message: string,
  ) {
    super(`${command}: ${message}`);
    this.name = 'QmpError';
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient extends EventEmitter {
  #socket: Socket;
  #buffer = '';
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  version?: { qemu: { major: number; minor: number; micro: number } };

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
  }

  /** Connects, reads the greeting and leaves capabilities-negotiation mode. */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = createConnection(path);
    const client = new QmpClient(socket);
    const greeting = await new Promise<any>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`QMP greeting timed out on ${path}`));
      }, timeoutMs);
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      client.once('greeting', (g) => {
        clearTimeout(timer);
        resolve(g);
      });
      client.#attach();
    });
    client.version = greeting.QMP?.version;
    await client.execute('qmp_capabilities', undefined, timeoutMs);
    return client;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Runs a command; rejects with QmpError, or on timeout or disconnect. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`QMP connection closed (${command})`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`QMP command ${command} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  #attach(): void {
    this.#socket.setEncoding('utf8');
    this.#socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let nl: number;
      while ((nl = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, nl).trim();
        this.#buffer = this.#buffer.slice(nl + 1);
        if (line) this.#onMessage(line);
      }
    });
    this.#socket.on('error', () => undefined); // 'close' follows and does the work.
    this.#socket.on('close', () => {
      this.#closed = true;
      for (const [, p] of this.#pending) {
        clearTimeout(p.timer);
        p.reject(new Error(`QMP connection closed before ${p.command} completed`));
      }
      this.#pending.clear();
      this.emit('close');
    });
  }

  /**
   * Resolves on the next event named in `names`, or after `maxMs`, whichever is first
   * (callers re-check state either way: an event is a hint, not the answer).
   */
  nextEvent(names: readonly string[], maxMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', done);
        resolve();
      };
      const onEvent = (ev: QmpEvent) => names.includes(ev.event) && done();
      const timer = setTimeout(done, maxMs);
      this.on('event', onEvent);
      this.once('close', done);
    });
  }

  #onMessage(line: string): void {
    let msg: any;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // QEMU only sends JSON; ignore anything else rather than crash.
    }
    if (msg.QMP) return void this.emit('greeting', msg);
    if (msg.event) return void this.emit('event', msg as QmpEvent);
    const p = typeof msg.id === 'number' ? this.#pending.get(msg.id) : undefined;
    if (!p) return;
    this.#pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
    else p.resolve(msg.return);
  }
}
