import { authHeaders, wsTls } from './daemon.js';
import WebSocket from 'ws';
import { pack, unpack } from 'msgpackr';

/** A test client for /v1/events that records every decoded frame. */
export class EventClient {
  readonly frames: any[] = [];
  #ws: WebSocket;
  #waiters: Array<() => void> = [];
  closed: { code: number; reason: string } | undefined;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) throw new Error('text frame received; the protocol is binary msgpack');
      this.frames.push(unpack(data));
      for (const w of this.#waiters.splice(0)) w();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  static connect(url: string, query = '', headers: Record<string, string> = {}, path = '/v1/events'): Promise<EventClient> {
    const ws = new WebSocket(`${url.replace('http', 'ws')}${path}${query}`, { ...wsTls(url), headers: authHeaders(url, headers) });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new EventClient(ws)));
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode })));
      ws.once('error', reject);
    });
  }

  send(frame: unknown): void {
    this.#ws.send(pack(frame));
  }

  sendRaw(data: Buffer | string): void {
    this.#ws.send(data);
  }

  get events(): any[] {
    return this.frames.filter((f) => f.type === 'event').map((f) => f.event);
  }

  async waitFor(pred: (c: EventClient) => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this)) {
      if (this.closed) throw new Error(`socket closed: ${JSON.stringify(this.closed)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; frames: ${JSON.stringify(this.frames.slice(-5))}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, left);
      });
    }
  }

  close(): void {
    this.#ws.close();
  }
}
