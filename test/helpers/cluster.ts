/**
 * Real multi-process clusters for tests: N daemons on fixed loopback ports (so a
 * restarted member comes back where its peers expect it), each with its own data dir.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { api, authHeaders, removeDir, spawnDaemon, tempDataDir, tlsInit, type DaemonHandle } from './daemon.js';
import { FaultNet } from './fault-proxy.js';
import { checkKv, type KvOp } from './linearizability.js';

export const SECRET = 'test-cluster-secret-0123456789';

/** Raft timing for tests: 50 ms ticks, elections after 0.5–1 s. */
export const TEST_RAFT = { tickMs: 50, electionTicks: 10, heartbeatTicks: 2, requestTimeoutMs: 3000 };

/**
 * Members keep fixed ports across restarts, so they come from below the kernel's
 * ephemeral range (32768+ here): a killed member's port is then never taken meanwhile by
 * an outgoing connection's source port or a `listen(0)`. Each vitest worker gets its own
 * block, so parallel test files never pick the same one; the bind check skips any port
 * something else holds.
 */
const PORT_BLOCK = 1000;
let nextPort = 20_000 + (Number(process.env.VITEST_POOL_ID ?? 0) % 12) * PORT_BLOCK;
const blockEnd = nextPort + PORT_BLOCK;

export async function freePort(): Promise<number> {
  while (nextPort < blockEnd) {
    const port = nextPort++;
    if (await canListen(port)) return port;
  }
  throw new Error('this worker used up its test port block');
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

export interface Member {
  port: number;
  /** Its cluster port (mutual TLS between members: Raft and joins). */
  peerPort: number;
  dataDir: string;
  url: string;
  /** Where peers dial this member's cluster port (its fault proxy, when the cluster has one). */
  advertise?: string;
  id?: number;
  daemon?: DaemonHandle;
}

export class TestCluster {
  readonly members: Member[] = [];
  /** Set when started `withFaults`: every peer link passes through it. */
  net?: FaultNet;
  #config: string;
  #dirs: string[] = [];
  /** Sent on every API call of the helpers (set when the cluster runs with an API token). */
  readonly headers: Record<string, string> = {};
  #apiToken: string | undefined;

  /** Every daemon this cluster started, killed by `close` even if a start never finished. */
  #spawned = new Set<DaemonHandle>();
  /** Extra daemon flags of every member (e.g. `--driver qemu`). */
  #args: string[];
  /** Where members' data directories are made (a temporary directory each, by default). */
  #dataRoot: string | undefined;

  private constructor(raft: Record<string, number>, apiToken?: string, args: string[] = [], config: Record<string, unknown> = {}, dataRoot?: string) {
    this.#args = args;
    this.#dataRoot = dataRoot;
    if (apiToken) {
      this.#apiToken = apiToken;
      this.headers.authorization = `Bearer ${apiToken}`;
    }
    const dir = tempDataDir();
    this.#dirs.push(dir);
    this.#config = join(dir, 'config.json');
    writeFileSync(this.#config, JSON.stringify({ ...config, raft }));
  }

  /**
   * Starts `n` members: the first bootstraps, the rest join through it and are promoted.
   * `withFaults` puts a fault-injecting proxy (`c.net`) in front of every member.
   */
  static async start(n: number, raft: Record<string, number> = TEST_RAFT, opts: { withFaults?: boolean; apiToken?: string; args?: string[]; config?: Record<string, unknown>; dataRoot?: string } = {}): Promise<TestCluster> {
    const c = new TestCluster(raft, opts.apiToken, opts.args, opts.config, opts.dataRoot);
    try {
      if (opts.withFaults) c.net = new FaultNet((id) => c.members.findIndex((m) => m.id === id), (i) => c.material(i));
      for (let i = 0; i < n; i++) await c.#newMember();
      await c.startMember(0);
      for (let i = 1; i < n; i++) await c.startMember(i, 0);
      await c.waitFor(async () => (await c.status(0)).voters.length === n, `${n} voters`);
      return c;
    } catch (err) {
      await c.close(); // nothing this start spawned outlives it
      throw err;
    }
  }

  /** A new member that joins through `via` (as a learner, promoted once caught up); returns its index. */
  async grow(via: number): Promise<number> {
    const i = await this.#newMember();
    await this.startMember(i, via);
    return i;
  }

  async #newMember(): Promise<number> {
    const port = await freePort();
    const peerPort = await freePort();
    const dataDir = this.#dataRoot ? mkdtempSync(join(this.#dataRoot, 'member-')) : tempDataDir();
    this.#dirs.push(dataDir);
    const advertise = this.net && `127.0.0.1:${await this.net.front(this.members.length, peerPort)}`;
    return this.members.push({ port, peerPort, dataDir, url: `https://127.0.0.1:${port}`, ...(advertise ? { advertise } : {}) }) - 1;
  }

  /** Member `i`'s TLS material as its data directory holds it now (the fault proxy plays every member). */
  material(i: number): { key: string; cert: string; ca: string } | undefined {
    const dir = join(this.members[i]?.dataDir ?? '/nonexistent', 'tls');
    if (!existsSync(join(dir, 'member.pem'))) return undefined;
    const read = (f: string) => readFileSync(join(dir, f), 'utf8');
    return { key: read('member.key'), cert: read('member.pem'), ca: read('ca.pem') };
  }

  /** (Re)starts member `i`; with `joinVia`, it joins through that member's cluster port on first start. */
  async startMember(i: number, joinVia?: number, extraArgs: string[] = []): Promise<DaemonHandle> {
    const m = this.members[i]!;
    // Members' APIs are HTTPS with their member certificates, as between hosts.
    const args = ['--listen', `127.0.0.1:${m.port}`, '--api-tls', 'on', '--peer-listen', `127.0.0.1:${m.peerPort}`, '--cluster-secret', SECRET, '--config', this.#config, ...this.#args, ...extraArgs];
    if (joinVia !== undefined) args.push('--join', `127.0.0.1:${this.members[joinVia]!.peerPort}`, '--ca-hash', (await this.status(joinVia)).caHash);
    if (m.advertise) args.push('--peer-advertise', m.advertise);
    m.daemon = await spawnDaemon({ dataDir: m.dataDir, args, ...(this.#apiToken ? { env: { NOVACRON_API_TOKEN: this.#apiToken } } : {}) });
    this.#spawned.add(m.daemon);
    m.url = m.daemon.url;
    m.id = (await this.status(i)).id;
    return m.daemon;
  }

  /** Gives stopped member `i` new ports, the API's and the cluster port (its next start listens there). */
  async movePort(i: number): Promise<void> {
    const m = this.members[i]!;
    if (m.daemon) throw new Error(`member ${i} is running`);
    m.port = await freePort();
    m.peerPort = await freePort();
    m.url = `https://127.0.0.1:${m.port}`;
  }

  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.members[i]!.daemon?.kill(signal);
    this.members[i]!.daemon = undefined;
  }

  live(): number[] {
    return this.members.flatMap((m, i) => (m.daemon ? [i] : []));
  }

  async status(i: number): Promise<any> {
    const r = await api(this.members[i]!.url, 'GET', '/v1/cluster', undefined, this.headers);
    if (r.status !== 200) throw new Error(`status of member ${i}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** The index of the leader every listed member agrees on. */
  async leader(among = this.live()): Promise<number> {
    let last = '';
    for (let attempt = 0; attempt < 300; attempt++) {
      const sts = await Promise.all(among.map((i) => this.status(i).catch(() => undefined)));
      last = JSON.stringify(sts.map((s) => s && { id: s.id, role: s.role, leader: s.leader, term: s.term }));
      const leaderId = sts[0]?.leader;
      if (leaderId && sts.every((s) => s?.leader === leaderId)) {
        const idx = this.members.findIndex((m) => m.id === leaderId);
        if (among.includes(idx) && sts[among.indexOf(idx)]?.role === 'leader') return idx;
      }
      await sleep(50);
    }
    throw new Error(`no agreed leader among ${among}: ${last}`);
  }

  async waitFor(cond: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (await cond().catch(() => false)) return;
      await sleep(50);
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  async put(i: number, key: string, value: string, extra: Record<string, unknown> = {}): Promise<{ status: number; body: any }> {
    return api(this.members[i]!.url, 'PUT', `/v1/kv/${encodeURIComponent(key)}`, { value, ...extra }, this.headers);
  }

  async get(i: number, key: string, consistency: 'linearizable' | 'stale' = 'linearizable'): Promise<{ status: number; body: any }> {
    return api(this.members[i]!.url, 'GET', `/v1/kv/${encodeURIComponent(key)}?consistency=${consistency}`, undefined, this.headers);
  }

  async close(): Promise<void> {
    await this.net?.close();
    const all = new Set([...this.#spawned, ...this.members.flatMap((m) => (m.daemon ? [m.daemon] : []))]);
    for (const d of all) d.proc.kill('SIGCONT'); // a SIGSTOPped member dies too
    await Promise.all([...all].map((d) => d.kill('SIGKILL')));
    for (const d of this.#dirs) removeDir(d);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What a load's requests came to: how many were sent, and why those that failed did. */
export interface LoadReport {
  attempts: number;
  acked: number;
  /** Failures by reason: an HTTP status, or `unanswered` (refused, reset, timed out). */
  failures: Record<string, number>;
}

/**
 * Writers putting unique keys through live members (round robin); the acknowledged keys.
 * Nothing is swallowed: every failure is counted by reason, and `stop` throws when more
 * than `maxFailureShare` of the writes failed (a run where the cluster mostly refused is
 * not a pass). A writer whose write failed waits a moment before the next.
 */
export function writeLoad(c: TestCluster, clients: number, prefix: string, maxFailureShare = 0.5) {
  const acked = new Map<string, string>();
  const ackTimes: number[] = [];
  const report: LoadReport = { attempts: 0, acked: 0, failures: {} };
  const failed = (why: string) => (report.failures[why] = (report.failures[why] ?? 0) + 1);
  let running = true;
  const loops = Array.from({ length: clients }, async (_, client) => {
    for (let n = 0; running; n++) {
      const live = c.live();
      const member = live[(n + client) % live.length]!;
      const key = `${prefix}-${client}-${n}`;
      report.attempts++;
      try {
        const r = await c.put(member, key, `v${n}`);
        if (r.status === 200) {
          acked.set(key, `v${n}`);
          ackTimes.push(Date.now());
          report.acked++;
          continue;
        }
        failed(String(r.status));
      } catch {
        failed('unanswered'); // connection refused or reset (member killed): outcome unknown, not acknowledged
      }
      await sleep(20);
    }
  });
  return {
    acked,
    ackTimes,
    report,
    stop: async (): Promise<LoadReport> => {
      running = false;
      await Promise.all(loops);
      const lost = report.attempts - report.acked;
      if (report.attempts > 0 && lost / report.attempts > maxFailureShare) {
        throw new Error(`${prefix}: ${lost} of ${report.attempts} writes failed (more than ${maxFailureShare * 100}%): ${JSON.stringify(report.failures)}`);
      }
      return report;
    },
  };
}

/** Every live member serves every acknowledged write (linearizable reads). */
export async function expectAllPresent(c: TestCluster, acked: Map<string, string>): Promise<void> {
  for (const i of c.live()) {
    for (const [key, value] of acked) {
      const r = await c.get(i, key);
      if (r.status !== 200 || r.body.value !== value) throw new Error(`member ${i} lost acknowledged ${key}=${value}: ${r.status} ${JSON.stringify(r.body)}`);
    }
  }
}

/** The registers the fault tests' clients read and write (few, so operations on each overlap). */
export const REGISTERS = ['reg-0', 'reg-1', 'reg-2'];

/**
 * Clients reading and writing `keys` (each operation picks one at random), each through
 * its own member (`members`, evaluated per request so joining members can be added),
 * recording a history for the linearizability checker (`checkKv`). A request that fails
 * without an answer (timeout, reset, 5xx) is a write of unknown outcome: it may or may not
 * take effect, at any later time; such a read is left out (it constrains nothing).
 */
export function kvClients(c: TestCluster, members: () => number[], clients: number, keys: string[] = REGISTERS) {
  const history: KvOp[] = [];
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  let running = true;
  let counter = 0;
  let unanswered = 0;
  let attempts = 0;
  const request = async (member: number, key: string, method: 'GET' | 'PUT', body?: unknown) => {
    const res = await fetch(`${c.members[member]!.url}/v1/kv/${encodeURIComponent(key)}`, {
      ...tlsInit(c.members[member]!.url),
      method,
      headers: authHeaders(c.members[member]!.url, { ...c.headers, ...(body ? { 'content-type': 'application/json' } : {}) }),
      ...(body ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(8000),
    });
    return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
  };
  /** Reads `key` through `member` into the history; whether it was answered. */
  const read = async (member: number, key: string, client: number): Promise<boolean> => {
    const start = now();
    const r = await request(member, key, 'GET');
    if (r.status === 200) history.push({ key, kind: 'read', value: r.body.value, start, end: now(), client });
    else if (r.body?.error?.code === 'KEY_NOT_FOUND') history.push({ key, kind: 'read', value: null, start, end: now(), client });
    else return false;
    return true;
  };
  const loops = Array.from({ length: clients }, async (_, client) => {
    while (running) {
      const list = members();
      const member = list[client % list.length]!;
      const key = keys[Math.floor(Math.random() * keys.length)]!;
      const write = Math.random() < 0.5;
      const value = `c${client}-${counter++}`;
      const start = now();
      attempts++;
      try {
        if (write) {
          const r = await request(member, key, 'PUT', { value });
          if (r.status === 200) history.push({ key, kind: 'write', value, start, end: now(), client });
          else if (r.status >= 500) history.push({ key, kind: 'write', value, start, end: Infinity, client });
        } else {
          await read(member, key, client);
        }
      } catch {
        unanswered++;
        if (write) history.push({ key, kind: 'write', value, start, end: Infinity, client });
      }
      await sleep(5);
    }
  });
  return {
    history,
    /** Completed operations so far. */
    completed: () => history.filter((o) => o.end !== Infinity).length,
    /** Requests that got no answer (a write's then of unknown outcome; a read's dropped from the history). */
    unanswered: () => unanswered,
    /** Acknowledged writes so far. */
    acknowledgedWrites: () => history.filter((o) => o.kind === 'write' && o.end !== Infinity).length,
    /**
     * After the clients stopped and the cluster healed: every key read through every
     * live member, into the history — so a member missing an acknowledged write, or
     * holding one that was never acknowledged and never seen, fails the check.
     */
    finalReads: async () => {
      for (const member of c.live()) {
        for (const key of keys) {
          if (!(await read(member, key, 1000 + member))) throw new Error(`final read of ${key} through member ${member} was not answered`);
        }
      }
    },
    /** Stops the clients; throws when more than `maxUnansweredShare` of their requests got no answer. */
    stop: async (maxUnansweredShare = 0.5) => {
      running = false;
      await Promise.all(loops);
      if (attempts > 0 && unanswered / attempts > maxUnansweredShare) {
        throw new Error(`${keys.join(',')}: ${unanswered} of ${attempts} requests got no answer (more than ${maxUnansweredShare * 100}%)`);
      }
    },
  };
}

/** Throws, with the key and the end of the longest linearizable prefix, unless `history` is linearizable. */
export function expectLinearizable(history: KvOp[]): void {
  const result = checkKv(history);
  if (!result.ok) throw new Error(`the history of ${result.key} is not linearizable; longest prefix ends ${JSON.stringify(result.longestPrefix?.slice(-5))}`);
}
