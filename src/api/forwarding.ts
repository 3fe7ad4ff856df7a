/**
 * Any member answers for any VM: a request about a VM, operation or migration this
 * member does not have is forwarded to the member that owns it (found through the
 * cluster inventory), and its reply passed back as it is. The caller's credentials stay
 * on the member they were given to: the forwarded request carries this member's signed
 * assertion of who called (cluster/member-assertion.ts), and the owner checks that
 * user's privileges itself. A forwarded request carries `x-novacron-forwarded-by`; the
 * member receiving it never forwards it again, so a stale inventory cannot make
 * requests loop.
 */
import { Agent, request } from 'undici';
import { NovaError, type ErrorCode } from '../errors.js';
import { apiUrl, clusterHosts, clusterMigrations, clusterPlacements, type HostRecord, type Placement } from '../cluster/inventory.js';
import type { ReplicatedStore } from '../cluster/replicated-store.js';
import type { MemberAssertions } from '../cluster/member-assertion.js';
import type { Principal } from '../auth/principal.js';

/** What a route's `:id` names, when requests about it may be forwarded. */
export type ForwardKind = 'vm' | 'operation' | 'migration';

/** The local error that sends a request on to the owner. */
export const NOT_HERE: Record<ForwardKind, ErrorCode> = { vm: 'VM_NOT_FOUND', operation: 'OPERATION_NOT_FOUND', migration: 'MIGRATION_NOT_FOUND' };

export const FORWARDED_BY = 'x-novacron-forwarded-by';
/** Set on a reply that another member produced: that member's id. */
export const ANSWERED_BY = 'x-novacron-member';

export interface ForwardRequest {
  method: string;
  /** Path and query, as received. */
  url: string;
  /** Content headers (never credentials). */
  headers: Record<string, string>;
  body?: Buffer;
  /** The caller, as this member authenticated it (the owner checks its privileges). */
  as?: Principal | undefined;
}

export interface ForwardedReply {
  status: number;
  contentType: string | undefined;
  location: string | undefined;
  body: Buffer;
  /** The member that answered. */
  member: number;
}

/** The server's view of forwarding (see `ClusterForwarder`). */
export interface Forwarder {
  /** This member's id (what forwarded requests say they come from). */
  readonly self: number;
  /** CA certificates (PEM) other members' HTTPS APIs are checked against (undefined: the system's). */
  readonly ca?: string[] | undefined;
  /** The member that owns `ref`, when another one does; any question asked on the way is asked as `as`. */
  locate(kind: ForwardKind, ref: string, as: Principal | undefined): Promise<HostRecord | undefined>;
  send(to: HostRecord, req: ForwardRequest): Promise<ForwardedReply>;
  /** The Authorization header of this member's request to member `to` (`method` on `url`) on behalf of `as`. */
  authorization(to: number, method: string, url: string, as: Principal | undefined): string;
  /** Every other member (for cluster-wide lists), as the inventory read at most a second ago says. */
  others(): Promise<HostRecord[]>;
  /** Synchronous: false only when that read found no other member (a lone member then answers lists without a hop). */
  mayHaveOthers(): boolean;
  /** Synchronous: whether the Raft configuration this member saw last (at most half a second ago) has no other member. */
  alone(): boolean;
}

/** How long an inventory read is reused before the next lookup reads it again. */
const INVENTORY_TTL_MS = 1000;
/** Operation ids learned from forwarded replies (an operation's owner is not in the inventory). */
const KNOWN_OPERATIONS = 10_000;

export class ClusterForwarder implements Forwarder {
  #agent: Agent;
  #placements: { at: number; byRef: Map<string, Placement[]> } | undefined;
  #hosts: { at: number; byMember: Map<number, HostRecord> } | undefined;
  #operations = new Map<string, number>();

  readonly self: number;

  constructor(
    private readonly store: ReplicatedStore,
    private readonly assertions: MemberAssertions,
    /** CA certificates (PEM) other members' HTTPS APIs are checked against. */
    readonly ca?: string[],
    /** The members in the Raft configuration this member saw last (undefined: not seen yet). */
    private readonly members: () => readonly number[] | undefined = () => undefined,
  ) {
    this.self = assertions.self;
    this.#agent = new Agent({ keepAliveTimeout: 30_000, connections: 64, ...(ca ? { connect: { ca } } : {}) });
  }

  authorization(to: number, method: string, url: string, as: Principal | undefined): string {
    // A member acting for itself (its own request, forwarded on) asserts only itself.
    return this.assertions.header(to, method, url, as && as.member === undefined ? { user: as.user, tokenId: as.tokenId } : undefined);
  }

  async locate(kind: ForwardKind, ref: string, as: Principal | undefined): Promise<HostRecord | undefined> {
    if (kind === 'vm') return this.#vmOwner(ref);
    if (kind === 'migration') {
      // Both sides keep a record; the source's can be cancelled.
      const sides = (await clusterMigrations(this.store, true)).filter((m) => m.id === ref && m.member !== this.self);
      const m = sides.find((s) => s.role === 'source') ?? sides[0];
      return m && this.#host(m.member);
    }
    const known = this.#operations.get(ref);
    if (known !== undefined) return this.#host(known);
    return this.#findOperation(ref, as);
  }

  async send(to: HostRecord, req: ForwardRequest): Promise<ForwardedReply> {
    let res;
    try {
      res = await request(`${apiUrl(to)}${req.url}`, {
        method: req.method as 'GET',
        headers: { ...req.headers, authorization: this.authorization(to.member, req.method, req.url, req.as), [FORWARDED_BY]: String(this.self) },
        ...(req.body ? { body: req.body } : {}),
        dispatcher: this.#agent,
        headersTimeout: 60_000,
        bodyTimeout: 60_000,
      });
    } catch (err) {
      throw new NovaError('CLUSTER_MEMBER_UNREACHABLE', `member ${to.member} (${to.address}), which has this resource, did not answer: ${(err as Error).message}`, { member: to.member });
    }
    const body = Buffer.from(await res.body.arrayBuffer());
    const header = (name: string) => {
      const v = res.headers[name];
      return typeof v === 'string' ? v : undefined;
    };
    const reply: ForwardedReply = { status: res.statusCode, contentType: header('content-type'), location: header('location'), body, member: to.member };
    if (reply.status === 202) this.#learnOperation(reply);
    return reply;
  }

  async others(): Promise<HostRecord[]> {
    return [...(await this.#hostMap()).values()].filter((h) => h.member !== this.self);
  }

  mayHaveOthers(): boolean {
    if (!this.#hosts || Date.now() - this.#hosts.at >= INVENTORY_TTL_MS) return true;
    for (const member of this.#hosts.byMember.keys()) if (member !== this.self) return true;
    return false;
  }

  alone(): boolean {
    const members = this.members();
    return members !== undefined && members.every((m) => m === this.self);
  }

  close(): void {
    void this.#agent.close();
  }

  async #vmOwner(ref: string): Promise<HostRecord | undefined> {
    let found = (await this.#placementMap(false)).get(ref);
    // Perhaps created since the last read: a linearizable read sees every placement published before it.
    if (!found) found = (await this.#placementMap(true)).get(ref);
    const elsewhere = (found ?? []).filter((p) => p.member !== this.self);
    if (elsewhere.length === 0) return undefined;
    const vms = new Set(elsewhere.map((p) => p.vmId));
    if (vms.size > 1) {
      throw new NovaError('VM_NAME_CONFLICT', `${vms.size} VMs in the cluster are named "${ref}"; name one by id (${[...vms].join(', ')})`, { ids: [...vms] });
    }
    // A VM in flight shows on both hosts; the source's record says `migrating`.
    const owner = elsewhere.find((p) => p.state !== 'migrating') ?? elsewhere[0]!;
    return this.#host(owner.member);
  }

  async #placementMap(fresh: boolean): Promise<Map<string, Placement[]>> {
    if (!fresh && this.#placements && Date.now() - this.#placements.at < INVENTORY_TTL_MS) return this.#placements.byRef;
    const byRef = new Map<string, Placement[]>();
    for (const p of await clusterPlacements(this.store, !fresh)) {
      for (const key of [p.vmId, p.name]) {
        const list = byRef.get(key);
        if (list) list.push(p);
        else byRef.set(key, [p]);
      }
    }
    this.#placements = { at: Date.now(), byRef };
    return byRef;
  }

  async #hostMap(fresh = false): Promise<Map<number, HostRecord>> {
    if (!fresh && this.#hosts && Date.now() - this.#hosts.at < INVENTORY_TTL_MS) return this.#hosts.byMember;
    const byMember = new Map((await clusterHosts(this.store, !fresh)).map((h) => [h.member, h]));
    this.#hosts = { at: Date.now(), byMember };
    return byMember;
  }

  async #host(member: number): Promise<HostRecord | undefined> {
    return (await this.#hostMap()).get(member) ?? (await this.#hostMap(true)).get(member);
  }

  /** An operation nobody told us about: ask the other members (rare: a client polling a member it did not start the operation through). */
  async #findOperation(id: string, as: Principal | undefined): Promise<HostRecord | undefined> {
    const hosts = await this.others();
    const answers = await Promise.all(
      hosts.map(async (h) => {
        try {
          return (await this.send(h, { method: 'GET', url: `/v1/operations/${encodeURIComponent(id)}`, headers: {}, as })).status === 200 ? h : undefined;
        } catch {
          return undefined;
        }
      }),
    );
    const owner = answers.find((h) => h !== undefined);
    if (owner) this.#remember(id, owner.member);
    return owner;
  }

  #learnOperation(reply: ForwardedReply): void {
    try {
      const id = (JSON.parse(reply.body.toString('utf8')) as { id?: unknown }).id;
      if (typeof id === 'string' && id.startsWith('op-')) this.#remember(id, reply.member);
    } catch {
      /* not JSON: nothing to learn */
    }
  }

  #remember(opId: string, member: number): void {
    this.#operations.set(opId, member);
    if (this.#operations.size > KNOWN_OPERATIONS) this.#operations.delete(this.#operations.keys().next().value!);
  }
}
