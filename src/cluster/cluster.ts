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
import { MemberTls, readMaterial, writeMaterial, type CertificateInfo } from '../tls/member-tls.js';
import { caPin } from '../tls/pki.js';
import { FailureLimiter } from '../auth/rate-limit.js';
import { newClusterId, newMemberId, newSecret, readIdentity, writeIdentity, type Identity } from './identity.js';
import { PeerTransport, type PeerState } from './peer-transport.js';
import { secretMatches, type PeerEndpoint } from './peer-frames.js';
import { withRetry } from './replicated-store.js';
import { ClusterPort, type JoinReply, type JoinRequest } from './cluster-port.js';
import { bootstrapMaterial } from './cluster-ca.js';
import { requestJoin } from './join.js';
import { parseListen } from '../config.js';

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
  /** host:port other members dial this member's cluster port at. */
  address: string;
  /** Where the cluster port listens. */
  listen: { host: string; port: number };
  /** Names and addresses this member's certificate carries (besides the address's host). */
  hosts?: string[];
  /** Shared secret; generated on bootstrap when not given, required to join. */
  secret?: string;
  /** host:port of a member's cluster port, to join its cluster on first start. */
  join?: string;
  /** The CA pin a join must find (required with `join`). */
  caHash?: string;
  raft?: RaftTuning;
  log: Logger;
}

/** The cluster CA, once the replicated store is up: signs joiners' certificates and renews this member's. */
export interface MemberCertificates {
  sign(csrPem: string, memberId: number, hosts: string[]): Promise<{ certPem: string; caPem: string }>;
  /** A new key and certificate for this member now (or only when due); true when renewed. */
  renewIfDue(force?: boolean): Promise<boolean>;
}

/** A learner within this many entries of the commit index counts as caught up. */
const CAUGHT_UP_LAG = 64;
const HOUSEKEEPING_MS = 500;
/** How long a membership change keeps retrying while the cluster elects a leader. */
const MEMBERSHIP_RETRY_MS = 10_000;

export interface ClusterStatus extends RaftStatus {
  clusterId: string;
  /** The pin a joining daemon is given (`--ca-hash`). */
  caHash: string;
  /** Where other members reach this member's cluster port. */
  peerAddress: string;
  /** This member's certificate (renewed in place once two thirds of its life have passed). */
  certificate: CertificateInfo;
  peers: PeerState[];
}

export class Cluster implements PeerEndpoint {
  readonly node: RaftNode;
  readonly transport: PeerTransport;
  readonly memberId: number;
  readonly clusterId: string;
  readonly secret: string;
  /** Where peers reach this member's cluster port now. */
  readonly address: string;
  readonly tls: MemberTls;
  /** The pin joiners are given (`--ca-hash`). */
  readonly caHash: string;
  #port: ClusterPort | undefined;
  /** Wrong join secrets per source address (as failed logins on the API). */
  #joinFailures = new FailureLimiter();
  #signer: MemberCertificates | undefined;
  #log: Logger;
  #timer: NodeJS.Timeout;
  #last: RaftStatus | undefined;
  #promoting = new Set<number>();
  #addressFixed = false;
  refusedMessages = new Map<string, number>();

  private constructor(identity: Required<Identity>, address: string, tls: MemberTls, node: RaftNode, transport: PeerTransport, log: Logger) {
    this.address = address;
    this.tls = tls;
    this.caHash = caPin(tls.material.caPem);
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
    const hosts = [parseListen(opts.address).host, ...(opts.hosts ?? [])];
    let identity = readIdentity(opts.dataDir);
    if (identity && opts.secret && opts.secret !== identity.secret) {
      throw new NovaError('CONFIG_INVALID', 'the cluster secret differs from the one this member joined with (see cluster.json)');
    }
    if (!identity?.clusterId) {
      if (opts.join) {
        if (!opts.secret) throw new NovaError('CONFIG_INVALID', 'joining a cluster needs its secret (--cluster-secret or NOVACRON_CLUSTER_SECRET)');
        if (!opts.caHash) throw new NovaError('CONFIG_INVALID', 'joining a cluster needs the pin of its CA (--ca-hash sha256:…; `novacron cluster join-command` on a member prints it)');
        identity = identity ?? { memberId: newMemberId(), secret: opts.secret };
        writeIdentity(opts.dataDir, identity); // Before asking: a crash mid-join retries with this id.
        const joined = await requestJoin(opts.join, { memberId: identity.memberId, secret: identity.secret, address: opts.address, hosts }, opts.caHash);
        writeMaterial(opts.dataDir, joined.material);
        identity = { ...identity, clusterId: joined.clusterId };
        writeIdentity(opts.dataDir, identity);
        opts.log.info({ clusterId: joined.clusterId, memberId: identity.memberId, via: opts.join }, 'joined the cluster as a learner');
      } else {
        const made = bootstrapCluster(opts.dataDir, opts.address, opts.secret);
        await bootstrapMaterial(opts.dataDir, made.clusterId, made.memberId, hosts);
        identity = made;
        opts.log.info({ clusterId: made.clusterId, memberId: made.memberId }, 'bootstrapped a new one-member cluster and its CA');
      }
    }
    const full = identity as Required<Identity>;
    let cluster: Cluster | undefined;
    let material = readMaterial(opts.dataDir);
    let tls: MemberTls | undefined; // until it is set, nothing goes out to peers
    const transport = new PeerTransport(
      { clusterId: full.clusterId, memberId: full.memberId, address: opts.address, tls: () => tls },
      { unreachable: (id) => cluster?.node.reportUnreachable(id), snapshot: (id, ok) => cluster?.node.reportSnapshot(id, ok) },
      opts.log,
    );
    const node = RaftNode.start(raftDir, { id: full.memberId, ...opts.raft }, (batch) => transport.send(batch));
    if (!material) {
      // No certificate: a crash between bootstrapping and making the CA, or a data dir from
      // before certificates. Alone in its cluster, a member makes a CA now; otherwise it
      // cannot prove who it is to anyone.
      const st = await node.status();
      if (st.voters.length !== 1 || st.voters[0] !== full.memberId || st.learners.length > 0) {
        node.stop();
        throw new NovaError('CONFIG_INVALID', `${opts.dataDir} has no cluster certificate (tls/member.pem) and is not its cluster's only member: remove member ${full.memberId} from the cluster and join this host again`);
      }
      material = await bootstrapMaterial(opts.dataDir, full.clusterId, full.memberId, hosts);
      opts.log.warn('this member had no cluster certificate: made a new CA for its one-member cluster');
    }
    tls = new MemberTls(opts.dataDir, full.memberId, material);
    cluster = new Cluster(full, opts.address, tls, node, transport, opts.log);
    try {
      const c = cluster;
      c.#port = await ClusterPort.listen(opts.listen.host, opts.listen.port, tls, { peer: () => c, join: (req, source) => c.#admit(req, source) }, opts.log);
    } catch (err) {
      cluster.close();
      throw new NovaError('CONFIG_INVALID', `the cluster port cannot listen on ${opts.listen.host}:${opts.listen.port}: ${(err as Error).message}`);
    }
    await cluster.#housekeeping();
    // The only voter need not wait out an election timeout to lead again.
    const st = cluster.lastStatus;
    if (st && st.voters.length === 1 && st.voters[0] === full.memberId && st.role !== 'leader') node.campaign();
    return cluster;
  }

  /** The port the cluster port listens on (useful when it was 0). */
  get peerPort(): number {
    return this.#port?.port ?? 0;
  }

  /** From now on, joins are answered with a certificate `signer` makes. */
  useSigner(signer: MemberCertificates): void {
    this.#signer = signer;
  }

  /** Renews this member's certificate now (`POST /v1/cluster/certificate`); open peer links keep the old one until they reconnect. */
  async renewCertificate(): Promise<CertificateInfo> {
    if (!this.#signer) throw new NovaError('RAFT_NO_LEADER', 'this member is still starting; retry');
    await this.#signer.renewIfDue(true);
    return this.tls.certificateInfo();
  }

  /** A daemon asks to join: the cluster secret authenticates it; it becomes a learner and gets its certificate. */
  async #admit(req: JoinRequest, source: string): Promise<JoinReply> {
    this.#joinFailures.check(source);
    if (!secretMatches(req.secret, this.secret)) {
      this.#joinFailures.fail(source);
      this.refused('join');
      this.#log.warn({ source, member: req.id }, 'refused a join with a wrong cluster secret');
      throw new NovaError('CLUSTER_AUTH');
    }
    if (!this.#signer) throw new NovaError('RAFT_NO_LEADER', 'this member is still starting; retry');
    // Signed first: a bad CSR must not leave a learner behind.
    const { certPem, caPem } = await this.#signer.sign(req.csr, req.id, [parseListen(req.address).host, ...req.hosts]);
    const members = await this.addMember(req.id, req.address);
    this.#log.info({ source, member: req.id, address: req.address }, 'admitted a member as a learner');
    return { clusterId: this.clusterId, memberId: req.id, certPem, caPem, ...members };
  }

  // PeerEndpoint
  step(bytes: Buffer, from: number): void {
    this.node.step(bytes, from);
  }

  stepBatch(bytes: Buffer, from: number): void {
    this.node.stepBatch(bytes, from);
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
    return { ...st, clusterId: this.clusterId, caHash: this.caHash, peerAddress: this.address, certificate: this.tls.certificateInfo(), peers: this.transport.peers() };
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
    this.#port?.close();
    this.transport.close();
    this.node.stop();
  }
}

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
