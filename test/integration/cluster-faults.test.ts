/**
 * The cluster under network faults and membership changes, with real daemons whose peer
 * traffic all passes through a fault-injecting proxy (partitions, delay, connection
 * loss). Every test records a client history of a few registers, reads every register
 * through every member after healing, and checks the whole for linearizability (per key),
 * and checks that every acknowledged write is still there on every member.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { api } from '../helpers/daemon.js';
import { REGISTERS, TEST_RAFT, TestCluster, expectAllPresent, expectLinearizable, kvClients, sleep, writeLoad } from '../helpers/cluster.js';

let cluster: TestCluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

/** Waits until every live member has applied the leader's commit index. */
async function converged(c: TestCluster): Promise<void> {
  const leader = await c.leader();
  const { commit } = await c.status(leader);
  for (const i of c.live()) await c.waitFor(async () => (await c.status(i)).applied >= commit, `member ${i} to apply ${commit}`);
}

describe('cluster under network faults', () => {
  it('five members: an isolated leader, then a minority with the leader, commit nothing; the majority carries on; healed, nothing acknowledged is lost', async () => {
    cluster = await TestCluster.start(5, TEST_RAFT, { withFaults: true });
    const c = cluster;
    const net = c.net!;
    const all = [0, 1, 2, 3, 4];
    const register = kvClients(c, () => all, 5, REGISTERS);
    const load = writeLoad(c, 3, 'partition');
    await sleep(800);

    // 1. The leader alone on its side.
    const first = await c.leader();
    const majority1 = all.filter((i) => i !== first);
    net.partition([first], majority1);
    const second = await c.leader(majority1);
    expect((await c.put(second, 'side', 'majority-1')).status).toBe(200);
    expect((await c.put(first, 'lost-1', 'minority')).status).toBe(503);
    net.heal();
    await c.leader(all);

    // 2. The leader and one follower against the other three.
    const leader = await c.leader(all);
    const minority = [leader, all.find((i) => i !== leader)!];
    const majority2 = all.filter((i) => !minority.includes(i));
    net.partition(minority, majority2);
    const third = await c.leader(majority2);
    expect((await c.put(third, 'side', 'majority-2')).status).toBe(200);
    expect((await c.put(minority[1]!, 'lost-2', 'minority')).status).toBe(503);
    net.heal();
    await c.leader(all);
    await sleep(500);

    await Promise.all([register.stop(), load.stop()]);
    await converged(c);
    for (const i of all) {
      expect((await c.get(i, 'side')).body.value).toBe('majority-2');
      // Entries a minority appended were never committed and are gone everywhere.
      expect((await c.get(i, 'lost-1')).body.error?.code).toBe('KEY_NOT_FOUND');
      expect((await c.get(i, 'lost-2')).body.error?.code).toBe('KEY_NOT_FOUND');
    }
    // A floor, so that a run where (nearly) every write failed fails: each writer that hits a
    // minority member waits 10 s for its 503, so a loaded 2-core box acknowledges a few dozen.
    expect(load.acked.size).toBeGreaterThan(25);
    await expectAllPresent(c, load.acked);
    expect(register.completed()).toBeGreaterThan(50);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  }, 120_000); // The minority writes each retry for 10 s before answering 503.

  it('a blackholed leader (its links drop everything, nothing is closed): the other two elect a leader and commit; healed, nothing acknowledged is lost and the history is linearizable', async () => {
    cluster = await TestCluster.start(3, TEST_RAFT, { withFaults: true });
    const c = cluster;
    const net = c.net!;
    const all = [0, 1, 2];
    const register = kvClients(c, () => all, 4, REGISTERS);
    const load = writeLoad(c, 3, 'blackhole');
    await sleep(800);
    const old = await c.leader();
    const others = all.filter((i) => i !== old);
    net.blackhole([old], others);
    // No FIN, no reset: the others notice only that the leader went quiet.
    const next = await c.leader(others);
    expect(next).not.toBe(old);
    expect((await c.put(next, 'side', 'majority')).status).toBe(200);
    await sleep(1000);
    net.heal();
    await c.leader(all);
    await sleep(500);

    await Promise.all([register.stop(), load.stop()]);
    await converged(c);
    for (const i of all) expect((await c.get(i, 'side')).body.value).toBe('majority');
    expect(load.acked.size).toBeGreaterThan(25);
    await expectAllPresent(c, load.acked);
    expect(register.completed()).toBeGreaterThan(30);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  }, 90_000);

  it('delayed and jittered links, a leadership transfer and lossy connections keep the history linearizable', async () => {
    cluster = await TestCluster.start(3, TEST_RAFT, { withFaults: true });
    const c = cluster;
    const net = c.net!;
    const all = [0, 1, 2];
    net.everyLink(all, { delayMs: 20, jitterMs: 40 });
    const register = kvClients(c, () => all, 4, REGISTERS);
    const load = writeLoad(c, 3, 'delay');
    await sleep(1500);
    // Each commit waits for a follower's answer: at least two delayed hops.
    const from = await c.leader();
    const t = performance.now();
    expect((await c.put(from, 'probe', 'delayed')).status).toBe(200);
    expect(performance.now() - t).toBeGreaterThanOrEqual(38);

    const to = all.find((i) => i !== from)!;
    const moved = await api(c.members[from]!.url, 'POST', '/v1/cluster/leader', { to: c.members[to]!.id });
    expect(moved.status, JSON.stringify(moved.body)).toBeLessThan(300);
    await c.waitFor(async () => (await c.leader()) === to, 'leadership to move under delay');
    await sleep(1000);

    // Connections reset at random (in-flight messages lost) on top of the delay.
    const resetsBefore = net.lossResets;
    net.everyLink(all, { delayMs: 10, jitterMs: 20, loss: 0.01 });
    await sleep(2500);
    net.heal();
    expect(net.lossResets - resetsBefore, 'connections the lossy links reset').toBeGreaterThan(0);
    await sleep(500);

    await Promise.all([register.stop(), load.stop()]);
    await converged(c);
    expect(load.acked.size).toBeGreaterThan(30);
    await expectAllPresent(c, load.acked);
    expect(register.completed()).toBeGreaterThan(30);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  }, 60_000);

  it('membership changes under load: two members join and are promoted, then a follower and the leader are removed', async () => {
    cluster = await TestCluster.start(3);
    const c = cluster;
    const voters = async () => (await c.status(await c.leader())).voters as number[];
    // Clients talk to the original three until they are removed, and to the new ones too.
    const removed = new Set<number>();
    const serving = () => c.live().filter((i) => !removed.has(i));
    const register = kvClients(c, serving, 4, REGISTERS);
    const load = writeLoad(c, 2, 'members');
    await sleep(800);

    const fourth = await c.grow(0);
    await c.waitFor(async () => (await voters()).length === 4, 'the fourth member to be promoted');
    const fifth = await c.grow(1);
    await c.waitFor(async () => (await voters()).length === 5, 'the fifth member to be promoted');
    expect(await c.get(fifth, 'members-0-0')).toMatchObject({ status: 200 });

    const leader = await c.leader();
    const follower = [0, 1, 2].find((i) => i !== leader)!;
    const r1 = await api(c.members[leader]!.url, 'DELETE', `/v1/cluster/members/${c.members[follower]!.id}`);
    expect(r1.status, JSON.stringify(r1.body)).toBe(200);
    removed.add(follower);
    await c.kill(follower);

    // Removing the leader hands leadership over first, so the cluster never waits out an election.
    const r2 = await api(c.members[leader]!.url, 'DELETE', `/v1/cluster/members/${c.members[leader]!.id}`);
    expect(r2.status, JSON.stringify(r2.body)).toBe(200);
    expect(r2.body.voters).toHaveLength(3);
    removed.add(leader);
    await c.kill(leader);
    const remaining = c.live();
    expect(remaining).toContain(fourth);
    const newLeader = await c.leader(remaining);
    expect(newLeader).not.toBe(leader);
    await sleep(1000);

    await Promise.all([register.stop(), load.stop()]);
    await converged(c);
    expect((await c.status(newLeader)).voters.sort()).toEqual(remaining.map((i) => c.members[i]!.id).sort());
    await expectAllPresent(c, load.acked);
    expect(register.completed()).toBeGreaterThan(30);
    await register.finalReads();
    expect(register.acknowledgedWrites()).toBeGreaterThan(10);
    expectLinearizable(register.history);
  }, 60_000);
});
