/**
 * This daemon's membership in the cluster: starts the Raft member (bootstrapping a
 * one-member cluster on first start, or joining one with `--join`), wires it to the
 * peer transport, keeps peer addresses current, and promotes learners to voters once
 * they have caught up. A single daemon is simply a one-member cluster.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import { RaftNode, type RaftMembers, type RaftStatus } from '../native/raft-node.js';
import { newClusterId, newMemberId, newSecret, readIdentity, writeIdentity, type Identity } from './identity.js';
import { PeerTransport, type PeerState } from './peer-transport.js';
import type { PeerEndpoint } from './peer-frames.js';
import { withRetry } from './replicated-store.js';

export interface RaftTuning {
  tickMs?: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  requestTimeoutMs?: number;
  compactThreshold?: number;
  keepEntries?: number;
}

export interface ClusterOptions {
  dataDir: string;
  /** host:port where this daemon's API (and peer endpoint) listens. */
  address: string;
  /** Shared secret; generated on bootstrap when not given, required to join. */
  secret?: string;
  /** host:port of any member, to join its cluster on first start. */
  join?: string;
  raft?: RaftTuning;
  log: Logger;
}

/** A learner within this many entries of the commit index counts as caught up. */
const CAUGHT_UP_LAG = 64;
const HOUSEKEEPING_MS = 500;
/** How long a membership change keeps retrying while the cluster elects a leader. */
const MEMBERSHIP_RETRY_MS = 10_000;
/** How long a joining daemon keeps asking while the member it asks is unreachable or leaderless. */
const JOIN_RETRY_MS = 30_000;

export interface ClusterStatus extends RaftStatus {
  clusterId: string;
  peers: PeerState[];
}

export class Cluster implements PeerEndpoint {
  readonly node: RaftNode;
  readonly transport: PeerTransport;
  readonly memberId: number;
  readonly clusterId: string;
  readonly secret: string;
  /** Where peers reach this member now. */
  readonly address: string;
  #log: Logger;
  #timer: NodeJS.Timeout;
  #last: RaftStatus | undefined;
  #promoting = new Set<number>();
  #addressFixed = false;
  refusedMessages = new Map<string, number>();

  private constructor(identity: Required<Identity>, address: string, node: RaftNode, transport: PeerTransport, log: Logger) {
    this.address = address;
    this.memberId = identity.memberId;
    this.clusterId = identity.clusterId;
    this.secret = identity.secret;
    this.node = node;
    this.transport = transport;
    this.#log = log;
    this.#timer = setInterval(() => void this.#housekeeping(), HOUSEKEEPING_MS);
    this.#timer.unref();
  }

  static async open(opts: ClusterOptions): Promise<Cluster> {
    const raftDir = join(opts.dataDir, 'raft');
    mkdirSync(opts.dataDir, { recursive: true });
    let identity = readIdentity(opts.dataDir);
    if (identity && opts.secret && opts.secret !== identity.secret) {
      throw new NovaError('CONFIG_INVALID', 'the cluster secret differs from the one this member joined with (see cluster.json)');
    }
    if (!identity?.clusterId) {
      if (opts.join) {
        if (!opts.secret) throw new NovaError('CONFIG_INVALID', 'joining a cluster needs its secret (--cluster-secret or NOVACRON_CLUSTER_SECRET)');
        identity = identity ?? { memberId: newMemberId(), secret: opts.secret };
        writeIdentity(opts.dataDir, identity); // Before asking: a crash mid-join retries with this id.
        const clusterId = await requestJoin(opts.join, identity, opts.address);
        identity = { ...identity, clusterId };
        writeIdentity(opts.dataDir, identity);
        opts.log.info({ clusterId, memberId: identity.memberId, via: opts.join }, 'joined the cluster as a learner');
      } else {
        identity = bootstrapCluster(opts.dataDir, opts.address, opts.secret);
        opts.log.info({ clusterId: identity.clusterId, memberId: identity.memberId }, 'bootstrapped a new one-member cluster');
      }
    }
    const full = identity as Required<Identity>;
    let cluster: Cluster | undefined;
    const transport = new PeerTransport(
      { clusterId: full.clusterId, secret: full.secret, memberId: full.memberId, address: opts.address },
      { unreachable: (id) => cluster?.node.reportUnreachable(id), snapshot: (id, ok) => cluster?.node.reportSnapshot(id, ok) },
      opts.log,
    );
    const node = RaftNode.start(raftDir, { id: full.memberId, ...opts.raft }, (batch) => transport.send(batch));
    cluster = new Cluster(full, opts.address, node, transport, opts.log);
    await cluster.#housekeeping();
    // The only voter need not wait out an election timeout to lead again.
    const st = cluster.lastStatus;
    if (st && st.voters.length === 1 && st.voters[0] === full.memberId && st.role !== 'leader') node.campaign();
    return cluster;
  }

  // PeerEndpoint
  step(bytes: Buffer): void {
    this.node.step(bytes);
  }

  stepBatch(bytes: Buffer): void {
    this.node.stepBatch(bytes);
  }

  peerAddress(id: number, address: string): void {
    this.transport.setAddress(id, address, true);
  }

  refused(reason: string): void {
    this.refusedMessages.set(reason, (this.refusedMessages.get(reason) ?? 0) + 1);
  }

  /** The newest status seen by housekeeping (for metrics; may be up to 500 ms old). */
  get lastStatus(): RaftStatus | undefined {
    return this.#last;
  }

  async status(): Promise<ClusterStatus> {
    const st = await this.node.status();
    this.#last = st;
    return { ...st, clusterId: this.clusterId, peers: this.transport.peers() };
  }

  /** Adds `id` as a learner (idempotent); housekeeping on the leader promotes it once caught up. */
  async addMember(id: number, address: string): Promise<RaftMembers> {
    const st = await this.node.status();
    if (st.voters.includes(id) || st.learners.includes(id)) {
      this.transport.setAddress(id, address);
      return { voters: st.voters, learners: st.learners };
    }
    return withRetry(() => this.node.changeMembership([{ kind: 'addLearner', id }], [{ id, address }]), Date.now() + MEMBERSHIP_RETRY_MS);
  }

  async removeMember(id: number): Promise<RaftMembers> {
    const st = await this.node.status();
    if (!st.voters.includes(id) && !st.learners.includes(id)) throw new NovaError('CLUSTER_MEMBER_NOT_FOUND', `member ${id} is not in the cluster`);
    if (st.leader === id && st.voters.length > 1) await this.#handOverLeadership(id);
    const members = await withRetry(() => this.node.changeMembership([{ kind: 'remove', id }]), Date.now() + MEMBERSHIP_RETRY_MS);
    this.transport.forget(id);
    return members;
  }

  /**
   * A member restarted on another address (new --listen or --advertise) records it in
   * the replicated state, so members that restart later still find it (peers it dials
   * learn it at once from the handshake). Once per start, retried until it lands.
   */
  #correctOwnAddress(st: RaftStatus): void {
    if (this.#addressFixed || st.leader === 0) return;
    const recorded = st.addresses.find((a) => a.id === this.memberId)?.address;
    if (recorded === undefined || recorded === this.address) {
      this.#addressFixed = recorded !== undefined;
      return;
    }
    this.#addressFixed = true;
    this.node.setAddress(this.memberId, this.address).then(
      () => this.#log.info({ from: recorded, to: this.address }, 'recorded this member\'s new address in the cluster'),
      (err) => {
        this.#addressFixed = false;
        this.#log.warn({ err: (err as Error).message }, 'recording this member\'s new address failed; will retry');
      },
    );
  }

  /**
   * Moves leadership off `from` to the most caught-up other voter and waits for it to
   * take over, so removing the leader costs one transfer instead of an election timeout
   * (and the removed leader never has to commit its own removal).
   */
  async #handOverLeadership(from: number): Promise<void> {
    const deadline = Date.now() + MEMBERSHIP_RETRY_MS;
    for (;;) {
      const st = await this.node.status();
      if (st.leader !== 0 && st.leader !== from) return;
      if (Date.now() > deadline) throw new NovaError('RAFT_TIMEOUT', `leadership could not be moved off member ${from} before removing it`);
      const others = st.voters.filter((v) => v !== from);
      const best = st.progress.filter((p) => others.includes(p.id)).sort((a, b) => b.matched - a.matched)[0]?.id ?? others[0]!;
      if (st.leader === from) this.node.transferLeader(best);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Records a member's new peer address cluster-wide (`PATCH /v1/cluster/members/:id`). */
  async updateAddress(id: number, address: string): Promise<void> {
    const st = await this.node.status();
    if (!st.voters.includes(id) && !st.learners.includes(id)) throw new NovaError('CLUSTER_MEMBER_NOT_FOUND', `member ${id} is not in the cluster`);
    await withRetry(() => this.node.setAddress(id, address), Date.now() + MEMBERSHIP_RETRY_MS);
    this.transport.setAddress(id, address);
  }

  async transferLeader(to: number): Promise<void> {
    const st = await this.node.status();
    if (!st.voters.includes(to)) throw new NovaError('CLUSTER_MEMBER_NOT_FOUND', `member ${to} is not a voter`);
    this.node.transferLeader(to);
  }

  async #housekeeping(): Promise<void> {
    let st: RaftStatus;
    try {
      st = await this.node.status();
    } catch {
      return; // Stopped.
    }
    this.#last = st;
    for (const { id, address } of st.addresses) this.transport.setAddress(id, address);
    this.#correctOwnAddress(st);
    // One membership change at a time: raft-rs refuses a second while one is pending.
    if (st.role !== 'leader' || this.#promoting.size > 0) return;
    for (const p of st.progress) {
      if (!p.learner || p.matched + CAUGHT_UP_LAG < st.commit) continue;
      this.#promoting.add(p.id);
      this.node
        .changeMembership([{ kind: 'addVoter', id: p.id }])
        .then(() => this.#log.info({ member: p.id }, 'promoted a caught-up learner to voter'))
        .catch((e) => this.#log.warn({ member: p.id, err: (e as Error).message }, 'promoting a learner failed; will retry'))
        .finally(() => this.#promoting.delete(p.id));
      return;
    }
  }

  close(): void {
    clearInterval(this.#timer);
    this.transport.close();
    this.node.stop();
  }
}

/** Asks a member to add us; returns the cluster id. Retries while it is down or leaderless. */
/**
 * Makes `dataDir` the first member of a new cluster (`novacron cluster init`, or a
 * daemon's first start without --join). `address` is where peers will dial it.
 */
export function bootstrapCluster(dataDir: string, address: string, secret?: string): Required<Identity> {
  const existing = readIdentity(dataDir);
  if (existing?.clusterId) throw new NovaError('CLUSTER_EXISTS', `${dataDir} is already member ${existing.memberId} of cluster ${existing.clusterId}`);
  if (existing) throw new NovaError('CLUSTER_EXISTS', `${dataDir} is in the middle of joining a cluster as member ${existing.memberId}; start its daemon to finish`);
  const identity = { memberId: newMemberId(), secret: secret ?? newSecret(), clusterId: newClusterId() };
  const raftDir = join(dataDir, 'raft');
  mkdirSync(raftDir, { recursive: true });
  RaftNode.bootstrap(raftDir, identity.memberId, address);
  writeIdentity(dataDir, identity);
  return identity;
}

async function requestJoin(via: string, identity: Identity, address: string): Promise<string> {
  const deadline = Date.now() + JOIN_RETRY_MS;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
    let res: Response | undefined;
    let problem: string;
    try {
      res = await fetch(`http://${via}/v1/cluster/members`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id: identity.memberId, address, secret: identity.secret }),
        signal: AbortSignal.timeout(15_000),
      });
      const body = (await res.json().catch(() => ({}))) as { clusterId?: string; error?: { code: string; message: string } };
      if (res.ok && body.clusterId) return body.clusterId;
      problem = body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`;
    } catch (e) {
      problem = `cannot reach it: ${(e as Error).message}`;
    }
    // 4xx is a definite refusal (wrong secret, bad request); 5xx and network errors may pass.
    const retryable = !res || res.status >= 500;
    if (!retryable || Date.now() + delay > deadline) throw new NovaError('CLUSTER_JOIN_FAILED', `${via} refused the join: ${problem}`);
    await new Promise((r) => setTimeout(r, delay));
  }
}
