/**
 * A fault-injecting network between cluster members: one proxy in front of each
 * member's cluster port (members advertise the proxy's address, so every peer dials
 * through it). Peer links are mutual TLS, so the proxy is a man in the middle the test
 * can afford to be: it holds every member's key (from their data directories), ends the
 * dialer's TLS as the member dialled, learns the dialer from its certificate, and dials
 * the member as the dialer. The faults apply per directed link `from → to`, to the
 * plaintext between the two TLS sessions:
 *  - cut: open connections on the link are reset and new ones refused (a partition);
 *  - blackhole: nothing on the link is forwarded, and nothing is closed either — bytes are
 *    held, as a network that drops packets holds them in TCP's retransmissions, and
 *    delivered in order once the rule is lifted; new connections hang the same way;
 *  - delay: every chunk waits `ms` (plus up to `jitterMs`) before it is forwarded, in order;
 *  - loss: each chunk resets the connection with this probability, losing what was in flight.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { memberIdFromAltNames } from '../../src/tls/pki.js';

export interface LinkFaults {
  cut?: boolean;
  blackhole?: boolean;
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

/** A member's key, certificate and CA (PEM), as its data directory holds them now; undefined before it has them (or past the last member). */
export type MaterialOf = (index: number) => { key: string; cert: string; ca: string } | undefined;

/** More members than any test cluster has. */
const MAX_MEMBERS = 16;

export class FaultNet {
  /** Members are named by their index in the test; certificates name raft ids, mapped here. */
  constructor(
    private readonly indexOf: (memberId: number) => number,
    private readonly materialOf: MaterialOf,
  ) {}

  #rules = new Map<string, LinkFaults>();
  /** Connections reset by a `loss` rule so far. */
  lossResets = 0;
  #servers: Server[] = [];
  #links = new Set<Link>();
  /** Pipes holding bytes for a blackholed link: woken when rules change. */
  #held = new Set<() => void>();

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
    this.#wake();
  }

  /** Blackholes every link between the groups, both ways. */
  blackhole(...groups: number[][]): void {
    for (const a of groups) for (const b of groups) if (a !== b) for (const from of a) for (const to of b) this.set(from, to, { blackhole: true });
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
    this.#wake();
  }

  #wake(): void {
    for (const w of [...this.#held]) w();
  }

  async close(): Promise<void> {
    for (const l of this.#links) this.#reset(l);
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }

  #accept(raw: Socket, to: number, targetPort: number): void {
    raw.on('error', () => undefined);
    const mine = this.materialOf(to);
    if (!mine) return void raw.destroy(); // not a member yet: the dialer retries
    const client = new TLSSocket(raw, { isServer: true, secureContext: createSecureContext(mine), requestCert: true, rejectUnauthorized: false });
    client.on('error', () => undefined);
    client.once('secure', () => {
      const fromId = memberIdFromAltNames(client.getPeerCertificate().subjectaltname) ?? 0;
      const indexOf = this.indexOf;
      const theirs = this.#materialOfMember(fromId);
      if (!theirs || this.#rule(indexOf(fromId), to).cut) return void client.destroy();
      client.pause();
      // A new connection into a blackhole hangs until the rule is lifted (or the dialer gives up).
      const open = () => {
        if (this.#rule(indexOf(fromId), to).blackhole) return void this.#held.add(open);
        this.#held.delete(open);
        if (!client.destroyed) this.#connect(client, raw, fromId, to, targetPort, theirs);
      };
      client.on('close', () => this.#held.delete(open));
      open();
    });
  }

  /** Dials member `to` as the dialer and pipes both ways under the link's faults. */
  #connect(client: TLSSocket, raw: Socket, fromId: number, to: number, targetPort: number, theirs: { key: string; cert: string; ca: string }): void {
    const indexOf = this.indexOf;
    const upstream = tlsConnect({ host: '127.0.0.1', port: targetPort, ...theirs, checkServerIdentity: () => undefined });
    upstream.on('error', () => undefined);
    const link: Link = { get from() { return indexOf(fromId); }, to, sockets: [client, upstream, raw] };
    this.#links.add(link);
    const gone = () => this.#reset(link);
    client.on('close', gone);
    upstream.on('close', gone);
    this.#pipe(link, client, upstream, 'out');
    this.#pipe(link, upstream, client, 'back');
    client.resume();
  }

  /** Forwards `src` to `dst` under the faults of `from → to`, keeping the byte order. */
  #pipe(link: Link, src: Socket, dst: Socket, way: 'out' | 'back'): void {
    const queue: Array<{ due: number; chunk: Buffer }> = [];
    let timer: NodeJS.Timeout | undefined;
    // Due times on the monotonic clock: a wall-clock step (NTP) must not release a chunk early.
    const rule = () => (way === 'out' ? this.#rule(link.from, link.to) : this.#rule(link.to, link.from));
    const flush = () => {
      timer = undefined;
      if (rule().blackhole) return void this.#held.add(flush); // held, in order, until the rule is lifted
      this.#held.delete(flush);
      const now = performance.now();
      while (queue.length > 0 && queue[0]!.due <= now) dst.write(queue.shift()!.chunk);
      if (queue.length > 0) timer = setTimeout(flush, queue[0]!.due - now);
    };
    const forward = (chunk: Buffer) => {
      const r = rule();
      if (r.cut) return this.#reset(link);
      if (r.blackhole) {
        queue.push({ due: 0, chunk });
        return void this.#held.add(flush);
      }
      if (r.loss && Math.random() < r.loss) {
        this.lossResets++;
        return this.#reset(link);
      }
      const wait = (r.delayMs ?? 0) + Math.random() * (r.jitterMs ?? 0);
      const due = Math.max(performance.now() + wait, queue.at(-1)?.due ?? 0);
      queue.push({ due, chunk });
      if (!timer) timer = setTimeout(flush, due - performance.now());
    };
    src.on('data', forward);
    src.on('close', () => {
      clearTimeout(timer);
      this.#held.delete(flush);
    });
  }

  /** The dialer's material, found by the member id in its certificate (the test may not know a just-joined member's id yet). */
  #materialOfMember(id: number): { key: string; cert: string; ca: string } | undefined {
    for (let i = 0; i < MAX_MEMBERS; i++) {
      const m = this.materialOf(i);
      if (m && memberIdFromAltNames(new X509Certificate(m.cert).subjectAltName) === id) return m;
    }
    return undefined;
  }

  #rule(from: number, to: number): LinkFaults {
    return this.#rules.get(`${from}>${to}`) ?? {};
  }

  #reset(link: Link): void {
    this.#links.delete(link);
    for (const s of link.sockets) s.destroy();
  }
}
