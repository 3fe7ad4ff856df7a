/**
 * Real multi-process clusters for tests: N daemons on fixed loopback ports (so a
 * restarted member comes back where its peers expect it), each with its own data dir.
 */
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { api, removeDir, spawnDaemon, tempDataDir, type DaemonHandle } from './daemon.js';

export const SECRET = 'test-cluster-secret-0123456789';

/** Raft timing for tests: 50 ms ticks, elections after 0.5–1 s. */
export const TEST_RAFT = { tickMs: 50, electionTicks: 10, heartbeatTicks: 2, requestTimeoutMs: 3000 };

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface Member {
  port: number;
  dataDir: string;
  url: string;
  id?: number;
  daemon?: DaemonHandle;
}

export class TestCluster {
  readonly members: Member[] = [];
  #config: string;
  #dirs: string[] = [];

  private constructor(raft: Record<string, number>) {
    const dir = tempDataDir();
    this.#dirs.push(dir);
    this.#config = join(dir, 'config.json');
    writeFileSync(this.#config, JSON.stringify({ raft }));
  }

  /** Starts `n` members: the first bootstraps, the rest join through it and are promoted. */
  static async start(n: number, raft: Record<string, number> = TEST_RAFT): Promise<TestCluster> {
    const c = new TestCluster(raft);
    for (let i = 0; i < n; i++) {
      const port = await freePort();
      const dataDir = tempDataDir();
      c.#dirs.push(dataDir);
      c.members.push({ port, dataDir, url: `http://127.0.0.1:${port}` });
    }
    await c.startMember(0);
    for (let i = 1; i < n; i++) await c.startMember(i, 0);
    await c.waitFor(async () => (await c.status(0)).voters.length === n, `${n} voters`);
    return c;
  }

  /** (Re)starts member `i`; with `joinVia`, it joins through that member on first start. */
  async startMember(i: number, joinVia?: number, extraArgs: string[] = []): Promise<DaemonHandle> {
    const m = this.members[i]!;
    const args = ['--listen', `127.0.0.1:${m.port}`, '--cluster-secret', SECRET, '--config', this.#config, ...extraArgs];
    if (joinVia !== undefined) args.push('--join', `127.0.0.1:${this.members[joinVia]!.port}`);
    m.daemon = await spawnDaemon({ dataDir: m.dataDir, args });
    m.id = (await this.status(i)).id;
    return m.daemon;
  }

  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.members[i]!.daemon?.kill(signal);
    this.members[i]!.daemon = undefined;
  }

  live(): number[] {
    return this.members.flatMap((m, i) => (m.daemon ? [i] : []));
  }

  async status(i: number): Promise<any> {
    const r = await api(this.members[i]!.url, 'GET', '/v1/cluster');
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
    return api(this.members[i]!.url, 'PUT', `/v1/kv/${encodeURIComponent(key)}`, { value, ...extra });
  }

  async get(i: number, key: string, consistency: 'linearizable' | 'stale' = 'linearizable'): Promise<{ status: number; body: any }> {
    return api(this.members[i]!.url, 'GET', `/v1/kv/${encodeURIComponent(key)}?consistency=${consistency}`);
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.daemon?.kill('SIGKILL')));
    for (const m of this.members) m.daemon?.proc.kill('SIGCONT');
    for (const d of this.#dirs) removeDir(d);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
