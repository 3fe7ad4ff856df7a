/**
 * A fault-injecting network between cluster members: one TCP proxy in front of each
 * member's peer endpoint (members advertise the proxy's address, so every peer dials
 * through it). A proxy reads the dialing member's id from the WebSocket upgrade, so the
 * faults apply per directed link `from → to`:
 *  - cut: open connections on the link are reset and new ones refused (a partition);
 *  - delay: every chunk waits `ms` (plus up to `jitterMs`) before it is forwarded, in order;
 *  - loss: each chunk resets the connection with this probability, losing what was in flight.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface LinkFaults {
  cut?: boolean;
  delayMs?: number;
  jitterMs?: number;
  loss?: number;
}

interface Link {
  /** The dialling member's index, looked up each time: a link opened before the test knew its id gets its faults too. */
  readonly from: number;
  to: number;
  sockets: Socket[];
}

const MEMBER_HEADER = /\r\nx-novacron-member:\s*(\d+)\r\n/i;

export class FaultNet {
  /** Members are named by their index in the test; peers announce raft ids, mapped here. */
  constructor(private readonly indexOf: (memberId: number) => number) {}

  #rules = new Map<string, LinkFaults>();
  #servers: Server[] = [];
  #links = new Set<Link>();

  /** Starts a proxy on a free loopback port for the member `to` listening on `targetPort`. */
  async front(to: number, targetPort: number): Promise<number> {
    const server = createServer((client) => this.#accept(client, to, targetPort));
    this.#servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as { port: number }).port;
  }

  /** Sets the faults of the link `from → to` (replacing earlier ones). */
  set(from: number, to: number, faults: LinkFaults): void {
    this.#rules.set(`${from}>${to}`, faults);
    if (faults.cut) for (const l of this.#links) if (l.from === from && l.to === to) this.#reset(l);
  }

  /** Cuts every link between the groups, both ways (members in no group are untouched). */
  partition(...groups: number[][]): void {
    for (const a of groups) for (const b of groups) if (a !== b) for (const from of a) for (const to of b) this.set(from, to, { cut: true });
  }

  /** Applies `faults` to every link among `members`. */
  everyLink(members: number[], faults: LinkFaults): void {
    for (const from of members) for (const to of members) if (from !== to) this.set(from, to, faults);
  }

  heal(): void {
    this.#rules.clear();
  }

  async close(): Promise<void> {
    for (const l of this.#links) this.#reset(l);
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }

  #accept(client: Socket, to: number, targetPort: number): void {
    client.on('error', () => undefined);
    let head = Buffer.alloc(0);
    const onHead = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 64 * 1024) client.destroy();
        return;
      }
      client.off('data', onHead);
      client.pause();
      const fromId = Number(MEMBER_HEADER.exec(head.subarray(0, end + 2).toString('latin1'))?.[1] ?? 0);
      const indexOf = this.indexOf;
      if (this.#rule(indexOf(fromId), to).cut) return void client.destroy();
      const upstream = connect(targetPort, '127.0.0.1');
      upstream.on('error', () => undefined);
      const link: Link = { get from() { return indexOf(fromId); }, to, sockets: [client, upstream] };
      this.#links.add(link);
      const gone = () => this.#reset(link);
      client.on('close', gone);
      upstream.on('close', gone);
      this.#pipe(link, client, upstream, 'out', head);
      this.#pipe(link, upstream, client, 'back');
      client.resume();
    };
    client.on('data', onHead);
  }

  /** Forwards `src` to `dst` under the faults of `from → to`, keeping the byte order. */
  #pipe(link: Link, src: Socket, dst: Socket, way: 'out' | 'back', first?: Buffer): void {
    const queue: Array<{ due: number; chunk: Buffer }> = [];
    let timer: NodeJS.Timeout | undefined;
    // Due times on the monotonic clock: a wall-clock step (NTP) must not release a chunk early.
    const flush = () => {
      timer = undefined;
      const now = performance.now();
      while (queue.length > 0 && queue[0]!.due <= now) dst.write(queue.shift()!.chunk);
      if (queue.length > 0) timer = setTimeout(flush, queue[0]!.due - now);
    };
    const forward = (chunk: Buffer) => {
      const rule = way === 'out' ? this.#rule(link.from, link.to) : this.#rule(link.to, link.from);
      if (rule.cut || (rule.loss && Math.random() < rule.loss)) return this.#reset(link);
      const wait = (rule.delayMs ?? 0) + Math.random() * (rule.jitterMs ?? 0);
      const due = Math.max(performance.now() + wait, queue.at(-1)?.due ?? 0);
      queue.push({ due, chunk });
      if (!timer) timer = setTimeout(flush, due - performance.now());
    };
    src.on('data', forward);
    src.on('close', () => clearTimeout(timer));
    if (first) forward(first);
  }

  #rule(from: number, to: number): LinkFaults {
    return this.#rules.get(`${from}>${to}`) ?? {};
  }

  #reset(link: Link): void {
    this.#links.delete(link);
    for (const s of link.sockets) s.destroy();
  }
}
