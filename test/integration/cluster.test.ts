/**
 * The cluster under faults, with real daemons (separate processes, real RocksDB, real
 * sockets on loopback): elections, kill -9 and SIGSTOP of the leader under load, a
 * member catching up by snapshot, membership changes, full restarts, and hostile peers.
 * Client histories are checked for linearizability and for lost acknowledged writes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { spawn, spawnSync } from 'node:child_process';
import { BIN, api, authHeaders, spawnDaemon, tempDataDir, removeDir, waitOp, wsTls, type DaemonHandle } from '../helpers/daemon.js';
import { REGISTERS, SECRET, TEST_RAFT, TestCluster, expectAllPresent, expectLinearizable, freePort, kvClients, sleep, writeLoad } from '../helpers/cluster.js';
import { readFileSync, rmSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { caPin, createCa, createCsr, signMember } from '../../src/tls/pki.js';

/** POSTs JSON over TLS verified against `ca` (any server name: members are checked by id, not host). */
async function fetchJson(url: string, ca: string, body: unknown): Promise<any> {
  const dispatcher = new Agent({ connect: { ca, checkServerIdentity: () => undefined } });
  try {
    const res = await request(url, { method: 'POST', dispatcher, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return await res.body.json();
  } finally {
    await dispatcher.close();
  }
}

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

describe('cluster', () => {
  it('three daemons elect a leader and serve linearizable reads of writes made through any member', async () => {
    cluster = await TestCluster.start(3);
    const st = await cluster.status(0);
    expect(st.voters).toHaveLength(3);
    expect(st.learners).toHaveLength(0);
    const leader = await cluster.leader();
    const follower = [0, 1, 2].find((i) => i !== leader)!;
    expect((await cluster.put(follower, 'greeting', 'hello')).status).toBe(200);
    for (const i of [0, 1, 2]) expect((await cluster.get(i, 'greeting')).body.value).toBe('hello');
    expect((await cluster.get(0, 'missing')).body.error.code).toBe('KEY_NOT_FOUND');

    const metrics = await api(cluster.members[leader]!.url, 'GET', '/metrics');
    expect(metrics.body).toMatch(/novacron_raft_is_leader 1/);
    expect(metrics.body).toMatch(/novacron_raft_voters 3/);
  });

  it('kill -9 of the leader under load loses no acknowledged write, keeps the history linearizable, and writes resume through a new leader within 5 s', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    const load = writeLoad(cluster, 4, 'kill');
    const register = kvClients(c, () => c.live(), 4, REGISTERS);
    await sleep(1000);
    const old = await cluster.leader();
    const killedAt = Date.now();
    await cluster.kill(old);
    await sleep(3000);
    await Promise.all([load.stop(), register.stop()]);
    const firstAckAfter = load.ackTimes.find((t) => t > killedAt);
    expect(firstAckAfter, 'writes resumed after the leader died').toBeDefined();
    const failoverMs = firstAckAfter! - killedAt;
    expect(failoverMs).toBeLessThan(5000); // Election timeout 0.5–1 s here; generous for a loaded 2-core CI box.
    expect(load.acked.size).toBeGreaterThan(20);

    await cluster.startMember(old);
    const commit = (await cluster.status(await cluster.leader())).commit;
    await cluster.waitFor(async () => (await cluster!.status(old)).applied >= commit, 'the old leader to catch up');
    await expectAllPresent(cluster, load.acked);
    await register.finalReads(); // the restarted old leader included
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  });

  it('a paused (SIGSTOP) old leader commits nothing after a new leader exists, and the history stays linearizable', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    // Clients on every member read and write a few registers; a paused member's requests
    // hang until it resumes (their outcome is then whatever it answers, or unknown).
    const clients = kvClients(c, () => [0, 1, 2], 6, REGISTERS);
    await sleep(800);
    const old = await c.leader();
    c.members[old]!.daemon!.proc.kill('SIGSTOP');
    const rest = [0, 1, 2].filter((i) => i !== old);
    const newLeader = await c.leader(rest);
    expect(newLeader).not.toBe(old);
    expect((await c.put(newLeader, 'marker', 'new-term')).status).toBe(200);
    await sleep(1000);
    c.members[old]!.daemon!.proc.kill('SIGCONT');
    await sleep(2000);
    await clients.stop();

    // The old leader rejoined as a follower of the new term and sees the new leader's write.
    await c.waitFor(async () => (await c.status(old)).role === 'follower', 'the old leader to step down');
    expect((await c.get(old, 'marker')).body.value).toBe('new-term');
    const oldTerm = (await c.status(old)).term;
    expect(oldTerm).toBe((await c.status(newLeader)).term);
    expect(clients.completed()).toBeGreaterThan(30);
    await clients.finalReads();
    expect(clients.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(clients.history);
  });

  it('a member that was down while the log was compacted catches up by snapshot under load: it has every acknowledged write and the history stays linearizable', async () => {
    cluster = await TestCluster.start(3, { tickMs: 50, electionTicks: 10, heartbeatTicks: 2, compactThreshold: 50, keepEntries: 10 });
    const c = cluster;
    const leader = await cluster.leader();
    const lagging = [0, 1, 2].find((i) => i !== leader)!;
    await cluster.kill(lagging);
    const register = kvClients(c, () => c.live(), 4, REGISTERS);
    const acked = new Map<string, string>();
    for (let i = 0; i < 150; i++) {
      expect((await cluster.put(leader, `snap-${i}`, `value-${i}`)).status).toBe(200);
      acked.set(`snap-${i}`, `value-${i}`);
    }
    const st = await cluster.status(leader);
    expect(st.firstIndex).toBeGreaterThan(50);
    // Back while the clients keep writing: it must take a snapshot, the log it missed is gone.
    await cluster.startMember(lagging);
    await sleep(1000);
    await register.stop();
    const commit = (await cluster.status(leader)).commit;
    await cluster.waitFor(async () => (await cluster!.status(lagging)).applied >= commit, 'the lagging member to catch up');
    // Every acknowledged write, read through every member (the lagging one included, linearizably).
    await expectAllPresent(cluster, acked);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  });

  it('members leave and the cluster restarts as a whole with its data, every acknowledged write and a linearizable history', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    const load = writeLoad(c, 2, 'restart');
    const register = kvClients(c, () => c.live(), 4, REGISTERS);
    await sleep(500);
    const leader = await cluster.leader();
    const leaving = [0, 1, 2].find((i) => i !== leader)!;
    const r = await api(cluster.members[leader]!.url, 'DELETE', `/v1/cluster/members/${cluster.members[leaving]!.id}`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.voters).toHaveLength(2);
    await cluster.kill(leaving);
    expect((await cluster.put(leader, 'after-leave', 'yes')).status).toBe(200);
    const unknown = await api(cluster.members[leader]!.url, 'DELETE', '/v1/cluster/members/12345');
    expect(unknown.body.error.code).toBe('CLUSTER_MEMBER_NOT_FOUND');

    await sleep(500);
    await Promise.all([load.stop(), register.stop()]);

    // Full-cluster restart: every remaining member stops, then all come back.
    const remaining = cluster.live();
    for (const i of remaining) await cluster.kill(i);
    for (const i of remaining) await cluster.startMember(i);
    await cluster.leader();
    for (const i of remaining) expect((await cluster.get(i, 'after-leave')).body.value).toBe('yes');
    await expectAllPresent(c, load.acked);
    expect(load.acked.size).toBeGreaterThan(10);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(5);
    expectLinearizable(register.history);
  });

  it('the cluster port takes Raft traffic only from a member certificate of this cluster\'s CA, valid now, for the member it claims, with messages from that member; joins need the secret (rate-limited) and the right CA pin; malformed traffic is refused; the cluster keeps working', async () => {
    cluster = await TestCluster.start(1);
    const m = cluster.members[0]!;
    const st = await cluster.status(0);
    const own = cluster.material(0)!;
    const ca = { keyPem: readFileSync(join(m.dataDir, 'tls', 'ca.key'), 'utf8'), certPem: own.ca };
    const certFor = async (id: number, by = ca, now = new Date()) => {
      const { keyPem, csrPem } = await createCsr(id);
      return { key: keyPem, cert: await signMember(by, csrPem, id, ['127.0.0.1'], now) };
    };
    const peer = (creds: { key: string; cert: string } | undefined, headers: Record<string, string>) =>
      new Promise<{ status?: number; code?: string; ws?: WebSocket }>((resolve) => {
        const tls: object = { ...creds, ca: own.ca, checkServerIdentity: () => undefined }; // (tls.connect's contract: undefined accepts)
        const ws = new WebSocket(`wss://127.0.0.1:${m.peerPort}/v1/cluster/peer`, { ...tls, headers });
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode!, code: JSON.parse(body).error.code }));
        });
        ws.on('open', () => resolve({ ws }));
        ws.on('error', () => undefined);
      });
    const claims = (id: number) => ({ 'x-novacron-cluster': st.clusterId, 'x-novacron-member': String(id) });
    const stranger = await certFor(77);

    expect(await peer(undefined, claims(77))).toEqual({ status: 401, code: 'CLUSTER_AUTH' }); // no certificate
    const otherCa = await createCa('another-cluster');
    expect(await peer(await certFor(77, otherCa), claims(77))).toEqual({ status: 401, code: 'CLUSTER_AUTH' }); // another CA's
    const expired = await certFor(77, ca, new Date(Date.now() - 200 * 86_400_000));
    expect(await peer(expired, claims(77))).toEqual({ status: 401, code: 'CLUSTER_AUTH' });
    // Member 77's certificate cannot speak for member st.id.
    expect(await peer(stranger, claims(st.id))).toEqual({ status: 403, code: 'CLUSTER_PEER_IDENTITY' });
    expect(await peer(stranger, { ...claims(77), 'x-novacron-cluster': 'some-other-cluster' })).toEqual({ status: 409, code: 'CLUSTER_MISMATCH' });

    // A Raft message on member 77's connection whose sender field names someone else.
    const varint = (n: number) => { const out: number[] = []; while (n > 127) { out.push((n & 127) | 128); n = Math.floor(n / 128); } out.push(n); return out; };
    const heartbeat = (from: number) => Buffer.from([1, 0x08, 8, 0x10, ...varint(st.id), 0x18, ...varint(from), 0x20, 1]);
    const closeCode = async (frame: Buffer) => {
      const { ws } = await peer(stranger, claims(77));
      const closed = new Promise<{ code: number; reason: string }>((r) => ws!.on('close', (code, reason) => r({ code, reason: reason.toString() })));
      ws!.send(frame);
      return closed;
    };
    expect(await closeCode(heartbeat(12345))).toEqual({ code: 4400, reason: expect.stringContaining('member 77\'s connection') });
    for (const garbage of [Buffer.from([1, 0xff, 0xff, 0xff, 0x0f]), Buffer.from([9, 1, 2, 3]), Buffer.from([1]), Buffer.from([4, 0, 0, 0, 9, 1, 2])]) {
      expect((await closeCode(garbage)).code).toBe(4400);
    }
    // A frame over the size limit is refused without being buffered.
    expect((await closeCode(Buffer.concat([Buffer.of(1), Buffer.alloc(4 << 20, 0xab)]))).code).not.toBe(1000);

    // Joins: a wrong secret, a wrong CA pin, none (each from a fresh data directory), a malformed body.
    const tryJoin = async (...args: string[]) => {
      const dir = tempDataDir();
      try {
        return await spawnDaemon({ dataDir: dir, args: ['--join', `127.0.0.1:${m.peerPort}`, ...args], expectFailure: true }).catch((e) => String(e.output ?? e.message));
      } finally {
        removeDir(dir);
      }
    };
    expect(await tryJoin('--cluster-secret', 'wrong-secret-wrong-secret', '--ca-hash', st.caHash)).toMatch(/CLUSTER_JOIN_FAILED.*CLUSTER_AUTH/);
    expect(await tryJoin('--cluster-secret', SECRET, '--ca-hash', caPin(otherCa.certPem))).toMatch(/CLUSTER_CA_MISMATCH/);
    expect(await tryJoin('--cluster-secret', SECRET)).toMatch(/--ca-hash/);
    // Wrong secrets from one address: four more answered CLUSTER_AUTH, then it is refused outright for a while.
    const guess = { id: 5, address: '127.0.0.1:1', secret: 'guessed-secret-guessed-secret', csr: 'x' };
    for (let i = 0; i < 4; i++) expect((await fetchJson(`https://127.0.0.1:${m.peerPort}/v1/cluster/join`, own.ca, guess)).error.code).toBe('CLUSTER_AUTH');
    expect((await fetchJson(`https://127.0.0.1:${m.peerPort}/v1/cluster/join`, own.ca, { ...guess, secret: SECRET })).error.code).toBe('TOO_MANY_ATTEMPTS');
    const malformed = await fetchJson(`https://127.0.0.1:${m.peerPort}/v1/cluster/join`, own.ca, { id: 5, address: 'nonsense', secret: SECRET, csr: 'x' });
    expect(malformed.error.code).toBe('VALIDATION_FAILED');

    expect((await cluster.status(0)).voters).toEqual([st.id]);
    expect((await cluster.put(0, 'still', 'fine')).status).toBe(200);
    expect((await cluster.get(0, 'still')).body.value).toBe('fine');
    const metrics = await api(m.url, 'GET', '/metrics');
    expect(metrics.body).toMatch(/novacron_raft_refused_total\{reason="auth"\} 3/);
    expect(metrics.body).toMatch(/novacron_raft_refused_total\{reason="join"\} 5/);
    expect(metrics.body).toMatch(/novacron_raft_refused_total\{reason="identity"\} 1/);
    expect(metrics.body).toMatch(/novacron_raft_refused_total\{reason="message"\} 5/);
  });

  it('certificates renewed on every member under write load: no write fails, each cluster port serves its new certificate, and members restarted afterwards form the cluster again with them', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    let running = true;
    const outcomes: number[] = [];
    const writers = [0, 1, 2].map(async (w) => {
      for (let n = 0; running; n++) outcomes.push((await c.put((w + n) % 3, `renew-${w}-${n}`, 'v')).status);
    });
    const served = (i: number) =>
      new Promise<string>((resolve, reject) => {
        const s = tlsConnect({ host: '127.0.0.1', port: c.members[i]!.peerPort, rejectUnauthorized: false }, () => {
          resolve(s.getPeerX509Certificate()!.serialNumber);
          s.end();
        });
        s.on('error', reject);
      });
    await sleep(500);
    for (const i of [0, 1, 2]) {
      const before = (await c.status(i)).certificate;
      const renewed = await api(c.members[i]!.url, 'POST', '/v1/cluster/certificate');
      expect(renewed.status).toBe(200);
      expect(renewed.body.serial).not.toBe(before.serial);
      expect(await served(i)).toBe(renewed.body.serial);
      expect(new X509Certificate(readFileSync(join(c.members[i]!.dataDir, 'tls', 'member.pem'))).serialNumber).toBe(renewed.body.serial);
      await sleep(300);
    }
    await sleep(500);
    running = false;
    await Promise.all(writers);
    expect(outcomes.length).toBeGreaterThan(30);
    expect(outcomes.filter((s) => s !== 200)).toEqual([]);
    // Every link is re-made with the new certificates.
    for (const i of [0, 1, 2]) await c.kill(i);
    for (const i of [0, 1, 2]) await c.startMember(i);
    const leader = await c.leader();
    expect((await c.put(leader, 'after-renewal', 'ok')).status).toBe(200);
    for (const i of [0, 1, 2]) expect((await c.get(i, 'after-renewal')).body.value).toBe('ok');
  });

  it('a one-member cluster without certificates (a data dir from before them) makes its CA on the next start and keeps its data; a member of a larger one refuses to start', async () => {
    const dir = tempDataDir();
    try {
      let d = await spawnDaemon({ dataDir: dir });
      expect((await api(d.url, 'PUT', '/v1/kv/kept', { value: 'yes' })).status).toBe(200);
      const before = (await api(d.url, 'GET', '/v1/cluster')).body;
      await d.kill();
      rmSync(join(dir, 'tls'), { recursive: true });
      d = await spawnDaemon({ dataDir: dir });
      const after = (await api(d.url, 'GET', '/v1/cluster')).body;
      expect(after).toMatchObject({ clusterId: before.clusterId, id: before.id, role: 'leader' });
      expect(after.caHash).not.toBe(before.caHash);
      expect((await api(d.url, 'GET', '/v1/kv/kept')).body.value).toBe('yes');
      await d.kill();
    } finally {
      removeDir(dir);
    }
    cluster = await TestCluster.start(2);
    await cluster.kill(1);
    rmSync(join(cluster.members[1]!.dataDir, 'tls'), { recursive: true });
    const refused = await cluster.startMember(1).catch((e) => String(e.output ?? e.message));
    expect(refused).toMatch(/CONFIG_INVALID.*no cluster certificate.*join this host again/);
  });

  it('locks fence stale holders through the API', async () => {
    cluster = await TestCluster.start(3);
    const url = (i: number) => cluster!.members[i]!.url;
    const a = await api(url(0), 'POST', '/v1/locks/vm-1', { holder: 'a', ttlMs: 300 });
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    const held = await api(url(1), 'POST', '/v1/locks/vm-1', { holder: 'b', ttlMs: 300 });
    expect(held.status).toBe(409);
    expect(held.body.error.code).toBe('LOCK_HELD');
    expect((await cluster.put(2, 'vm-1-state', 'a', { fence: { lock: 'vm-1', token: a.body.token } })).status).toBe(200);
    await sleep(400); // a's lease runs out
    const b = await api(url(1), 'POST', '/v1/locks/vm-1', { holder: 'b', ttlMs: 5000 });
    expect(b.status).toBe(200);
    expect(b.body.token).toBeGreaterThan(a.body.token);
    const stale = await cluster.put(2, 'vm-1-state', 'a-late', { fence: { lock: 'vm-1', token: a.body.token } });
    expect(stale.status).toBe(409);
    expect(stale.body.error.code).toBe('LOCK_FENCED');
    expect((await cluster.get(0, 'vm-1-state')).body.value).toBe('a');
    expect((await api(url(0), 'DELETE', `/v1/locks/vm-1?token=${a.body.token}`)).body.error.code).toBe('LOCK_NOT_HELD');
    expect((await api(url(0), 'DELETE', `/v1/locks/vm-1?token=${b.body.token}`)).status).toBe(200);
  });

  it("API users' locks live in their own namespace: a lock named like a VM's internal one never blocks the VM, whose own lock operators can only read", async () => {
    cluster = await TestCluster.start(1, TEST_RAFT, { config: { sim: { latencyMs: { start: 1500 } } } });
    const url = cluster.members[0]!.url;
    const vm = await api(url, 'POST', '/v1/vms', { name: 'locked', vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', sizeMiB: 64 }] });
    expect(vm.status, JSON.stringify(vm.body)).toBe(201);
    const mine = await api(url, 'POST', `/v1/locks/vm%2F${vm.body.id}`, { holder: 'member-elsewhere', ttlMs: 60_000 });
    expect(mine.status).toBe(200);
    expect(mine.body.name).toBe(`vm/${vm.body.id}`);
    const start = await api(url, 'POST', `/v1/vms/${vm.body.id}/start`);
    expect(start.status, JSON.stringify(start.body)).toBe(202);
    // While the start runs, the VM's own lock is held by this member, not by the API user's lock.
    const during = await api(url, 'GET', `/v1/cluster/locks/vm%2F${vm.body.id}`);
    expect(during.body).toMatchObject({ held: true });
    expect(during.body.holder).not.toBe('member-elsewhere');
    expect((await waitOp(url, start.body.id)).state).toBe('succeeded');
    await cluster.waitFor(async () => (await api(url, 'GET', `/v1/cluster/locks/vm%2F${vm.body.id}`)).body.held === false, 'the VM lock to be released', 5000);
    expect((await api(url, 'GET', `/v1/locks/vm%2F${vm.body.id}`)).body).toMatchObject({ held: true, holder: 'member-elsewhere' });
    expect((await api(url, 'DELETE', `/v1/locks/vm%2F${vm.body.id}?token=${mine.body.token}`)).status).toBe(200);
  });

  it('any member lists every host and every VM with the member it runs on; migration, deletion and removal keep it current', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    const url = (i: number) => c.members[i]!.url;
    const create = async (i: number, name: string) => {
      const r = await api(url(i), 'POST', '/v1/vms', { name, vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', sizeMiB: 64 }] });
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      return r.body.id as string;
    };
    const placed = async (i: number) => {
      const r = await api(url(i), 'GET', '/v1/cluster/vms');
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return (r.body.items as Array<{ vmId: string; member: number }>).map((p) => `${p.vmId}@${p.member}`).sort();
    };
    const eventually = (what: string, want: () => Record<string, number>) =>
      c.waitFor(async () => JSON.stringify(await placed(2)) === JSON.stringify(Object.entries(want()).map(([vm, m]) => `${vm}@${m}`).sort()), what, 10_000);

    const a = await create(0, 'inv-a');
    const b = await create(1, 'inv-b');
    await eventually('both VMs to be listed where they were created', () => ({ [a]: c.members[0]!.id!, [b]: c.members[1]!.id! }));
    const byName = await api(url(2), 'GET', '/v1/cluster/vms?name=inv-b');
    expect(byName.body.items).toMatchObject([{ vmId: b, name: 'inv-b', state: 'stopped', vcpus: 1, memoryMiB: 64 }]);
    expect((await api(url(2), 'GET', '/v1/cluster/vms?member=abc')).status).toBe(400);

    await c.waitFor(async () => (await api(url(2), 'GET', '/v1/cluster/hosts')).body.items.length === 3, 'three host records', 5000);
    const hosts = await api(url(2), 'GET', '/v1/cluster/hosts');
    expect(hosts.body.items.filter((h: { role: string }) => h.role === 'leader')).toHaveLength(1);
    expect(hosts.body.items.map((h: { member: number }) => h.member).sort()).toEqual(c.members.map((m) => m.id).sort());

    // Cold migration inside the cluster (the source holds the VM's lock, then hands it on).
    // Members are named by id (all three share this machine's node name, which is ambiguous).
    expect((await api(url(0), 'POST', `/v1/vms/${a}/migrate`, { target: '424242' })).body.error.code).toBe('MIGRATION_TARGET_UNKNOWN');
    const nodeName = hosts.body.items[0].node as string;
    const ambiguous = await api(url(0), 'POST', `/v1/vms/${a}/migrate`, { target: nodeName });
    expect(ambiguous.body.error).toMatchObject({ code: 'MIGRATION_TARGET_UNKNOWN', details: { members: expect.any(Array) } });
    expect((await api(url(0), 'POST', `/v1/vms/${a}/migrate`, { target: String(c.members[0]!.id) })).body.error.code).toBe('VALIDATION_FAILED');
    const mig = await api(url(0), 'POST', `/v1/vms/${a}/migrate`, { target: String(c.members[1]!.id) });
    expect(mig.status, JSON.stringify(mig.body)).toBe(202);
    await c.waitFor(async () => (await api(url(0), 'GET', `/v1/migrations/${mig.body.id}`)).body.state === 'completed', 'the migration');
    await eventually('the migrated VM to be listed on its new member', () => ({ [a]: c.members[1]!.id!, [b]: c.members[1]!.id! }));
    // Both sides of the migration, seen from a third member.
    await c.waitFor(async () => (await api(url(2), 'GET', `/v1/cluster/migrations?vm=${a}&state=completed`)).body.items.length === 2, 'both sides of the migration in the cluster view', 10_000).catch(async (e) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify((await api(url(2), 'GET', `/v1/cluster/migrations?vm=${a}`)).body)}`);
    });
    const sides = (await api(url(2), 'GET', `/v1/cluster/migrations?vm=${a}`)).body.items;
    expect(sides.map((m: { role: string; member: number; id: string }) => [m.role, m.member, m.id]).sort()).toEqual(
      [['destination', c.members[1]!.id, mig.body.id], ['source', c.members[0]!.id, mig.body.id]],
    );
    expect((await api(url(2), 'GET', '/v1/cluster/migrations?state=bogus')).status).toBe(400);
    const start = await api(url(1), 'POST', `/v1/vms/${a}/start`);
    expect(start.status, JSON.stringify(start.body)).toBe(202);
    expect((await waitOp(url(1), start.body.id)).state).toBe('succeeded');

    expect((await api(url(1), 'DELETE', `/v1/vms/${b}`)).status).toBeLessThan(300);
    await eventually('the deleted VM to disappear', () => ({ [a]: c.members[1]!.id! }));

    // A removed member's host record goes with it.
    const leader = await c.leader();
    const gone = [0, 1, 2].find((i) => i !== leader && i !== 1)!;
    expect((await api(url(leader), 'DELETE', `/v1/cluster/members/${c.members[gone]!.id}`)).status).toBe(200);
    await c.kill(gone);
    const left = await api(url(1), 'GET', '/v1/cluster/hosts');
    expect(left.body.items.map((h: { member: number }) => h.member)).not.toContain(c.members[gone]!.id);

    // A member that removes itself (`novacron cluster leave`) cannot delete its own records; the leader does.
    const stays = await c.leader();
    const quitter = c.live().find((i) => i !== stays)!;
    expect((await api(url(quitter), 'DELETE', `/v1/cluster/members/${c.members[quitter]!.id}`)).status).toBe(200);
    await c.kill(quitter);
    await c.waitFor(
      async () => !(await api(url(stays), 'GET', '/v1/cluster/hosts')).body.items.some((h: { member: number }) => h.member === c.members[quitter]!.id),
      'the leader to clear the records of a member that left by itself',
      10_000,
    );
    expect((await api(url(stays), 'GET', '/v1/cluster/vms')).body.items.map((p: { member: number }) => p.member)).not.toContain(c.members[quitter]!.id);
  });

  it('novacron cluster init prepares a first member offline; its daemon leads that cluster and others join it', async () => {
    const [dir, other] = [tempDataDir(), tempDataDir()];
    const port = await freePort();
    const init = (...args: string[]) => spawnSync(process.execPath, [BIN, '--json', 'cluster', 'init', '--data-dir', dir, ...args], { encoding: 'utf8', timeout: 20_000 });
    const daemons: DaemonHandle[] = [];
    try {
      const r = init('--advertise', `127.0.0.1:${port}`);
      expect(r.status, r.stderr).toBe(0);
      const made = JSON.parse(r.stdout);
      expect(made).toMatchObject({ advertise: `127.0.0.1:${port}`, memberId: expect.any(Number), clusterId: expect.any(String) });
      const again = init();
      expect(again.status).toBe(4);
      expect(again.stderr).toMatch(/CLUSTER_EXISTS/);
      expect(init('--data-dir', other, '--advertise', 'nope').status).toBe(2);

      expect(made.caHash).toMatch(/^sha256:[0-9a-f]{64}$/);
      const first = await spawnDaemon({ dataDir: dir, args: ['--peer-listen', `127.0.0.1:${port}`] });
      daemons.push(first);
      const st = (await api(first.url, 'GET', '/v1/cluster')).body;
      expect(st).toMatchObject({ clusterId: made.clusterId, id: made.memberId, role: 'leader', leader: made.memberId, caHash: made.caHash, peerAddress: `127.0.0.1:${port}` });
      const second = await spawnDaemon({ dataDir: other, args: ['--join', `127.0.0.1:${port}`, '--ca-hash', made.caHash, '--cluster-secret', made.secret] });
      daemons.push(second);
      expect((await api(second.url, 'GET', '/v1/cluster')).body.clusterId).toBe(made.clusterId);
    } finally {
      for (const d of daemons) await d.kill();
      removeDir(dir);
      removeDir(other);
    }
  });

  it('a member restarting without a quorum answers 503 STARTING with Retry-After on every route but /healthz and /readyz, never 404, until it is ready; then serves, and a CLI call made meanwhile waits and gets the answer', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    expect((await c.put(0, 'k', 'before')).status).toBe(200);
    for (const i of [0, 1, 2]) await c.kill(i);
    // Member 0 alone: its start waits for the cluster after its API already listens.
    const restarting = c.startMember(0);
    restarting.catch(() => undefined);
    const url = c.members[0]!.url;
    await c.waitFor(async () => (await api(url, 'GET', '/healthz')).status === 200, 'member 0 to listen');
    expect((await api(url, 'GET', '/readyz')).body).toEqual({ status: 'not-ready' });
    for (const [method, path] of [['GET', '/v1/kv/k'], ['GET', '/v1/cluster'], ['GET', '/v1/vms'], ['GET', '/v1/no-such-route'], ['PUT', '/v1/kv/k']] as const) {
      const r = await api(url, method, path, method === 'PUT' ? { value: 'during' } : undefined);
      expect(r.status, `${method} ${path}: ${JSON.stringify(r.body)}`).toBe(503);
      expect(r.body.error.code).toBe('STARTING');
      expect(r.headers.get('retry-after')).toBe('1');
    }
    const upgrade = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/events`, { ...wsTls(url), headers: authHeaders(url) });
      ws.once('open', () => (ws.close(), resolve(101)));
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('error', reject);
    });
    expect(upgrade).toBe(503);
    // Still starting: nothing it was asked meanwhile reached the store.
    expect((await api(url, 'GET', '/readyz')).status).toBe(503);
    // The CLI asked now waits for the member instead of failing on the 503.
    const cli = spawn(process.execPath, [BIN, '--url', url, '--json', 'kv', 'get', 'k'], { env: { ...process.env, NOVACRON_DATA_DIR: c.members[0]!.dataDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let cliOut = '';
    cli.stdout.on('data', (d) => (cliOut += d));
    cli.stderr.on('data', (d) => (cliOut += d));
    const cliExit = new Promise<number | null>((r) => cli.on('exit', r));
    await new Promise((r) => setTimeout(r, 1500));
    expect(cli.exitCode, `the CLI gave up while the member was starting: ${cliOut}`).toBeNull();

    await c.startMember(1);
    await restarting;
    expect(await cliExit, cliOut).toBe(0);
    expect(JSON.parse(cliOut).value).toBe('before');
    expect((await api(url, 'GET', '/readyz')).body).toEqual({ status: 'ready' });
    expect((await c.get(0, 'k')).body.value).toBe('before');
    expect((await api(url, 'GET', '/v1/no-such-route')).body.error.code).toBe('ROUTE_NOT_FOUND');
  });

  it('a member restarted after kill -9 answers at once while it starts (refused or 503 STARTING, never held, never 404) and serves writes and linearizable reads within 500 ms of being ready', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    expect((await c.put(0, 'k', 'v')).status).toBe(200);
    const leader = await c.leader();
    const follower = [0, 1, 2].find((i) => i !== leader)!;
    for (const victim of [follower, leader]) {
      await c.kill(victim);
      const url = c.members[victim]!.url;
      let restarted = false;
      const probes: Array<{ answer: string; ms: number }> = [];
      const probing = (async () => {
        while (!restarted) {
          const t = performance.now();
          const answer = await api(url, 'GET', '/v1/kv/k').then((r) => `${r.status} ${r.body?.error?.code ?? r.body?.value}`, (e) => `refused ${e.cause?.code ?? e.message}`);
          probes.push({ answer, ms: performance.now() - t });
          await sleep(20);
        }
      })();
      await c.startMember(victim);
      restarted = true;
      await probing;
      const t = performance.now();
      const put = await c.put(victim, `after-restart-${victim}`, 'yes');
      const putMs = performance.now() - t;
      const got = await c.get(victim, `after-restart-${victim}`);
      const totalMs = performance.now() - t;
      expect(put.status, JSON.stringify(put.body)).toBe(200);
      expect(got.body.value).toBe('yes');
      expect(totalMs, `first write ${putMs.toFixed(0)} ms, write and read ${totalMs.toFixed(0)} ms`).toBeLessThan(500);
      const odd = probes.filter((p) => !/^(refused|503 STARTING|200 v)/.test(p.answer) || p.ms > 500);
      expect(odd, JSON.stringify(probes)).toEqual([]);
      expect(probes.length).toBeGreaterThan(0);
    }
  });

  it('a member that comes back on another port records its new address, so the others find it even after they all restart', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    const moved = [0, 1, 2].find((i) => i !== 0)!;
    await c.kill(moved);
    await c.movePort(moved);
    await c.startMember(moved);
    const want = `127.0.0.1:${c.members[moved]!.peerPort}`;
    const recorded = async (i: number) => (await c.status(i)).addresses.find((a: { id: number }) => a.id === c.members[moved]!.id)?.address;
    await c.waitFor(async () => (await recorded(0)) === want, 'the new address in the replicated state');

    // Everyone else restarts: they only know the moved member from the replicated state.
    const others = [0, 1, 2].filter((i) => i !== moved);
    for (const i of others) await c.kill(i);
    for (const i of others) await c.startMember(i);
    await c.leader([0, 1, 2]);
    expect((await c.put(moved, 'after-move', 'ok')).status).toBe(200);
    for (const i of [0, 1, 2]) expect((await c.get(i, 'after-move')).body.value).toBe('ok');

    const url = c.members[0]!.url;
    expect((await api(url, 'PATCH', `/v1/cluster/members/${c.members[moved]!.id}`, { address: 'not an address' })).body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(url, 'PATCH', '/v1/cluster/members/12345', { address: '127.0.0.1:1' })).body.error.code).toBe('CLUSTER_MEMBER_NOT_FOUND');
    const patched = await api(url, 'PATCH', `/v1/cluster/members/${c.members[moved]!.id}`, { address: want });
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
  });

  it('a retried write with the same request id is applied once', async () => {
    cluster = await TestCluster.start(1);
    const requestId = 'a'.repeat(32);
    const first = await cluster.put(0, 'once', 'first', { requestId });
    expect((await cluster.put(0, 'once', 'second')).status).toBe(200);
    const retry = await cluster.put(0, 'once', 'first', { requestId });
    expect(retry.body.index).toBe(first.body.index);
    expect((await cluster.get(0, 'once')).body.value).toBe('second');
  });
});
