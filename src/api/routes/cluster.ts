/**
 * Cluster membership (`/v1/cluster`), the replicated key-value API (`/v1/kv`, like
 * etcd's: linearizable reads unless `?consistency=stale`, retry-safe writes with a
 * request id) and leased locks with fencing tokens (`/v1/locks`).
 */
import { z } from 'zod';
import { NovaError } from '../../errors.js';
import type { ApiRequest, Router } from '../router.js';
import type { Target } from '../access.js';
import { ROOT } from '../../auth/acl.js';
import { page, PageQuery } from '../paging.js';
import { parseWith } from '../validate.js';
import type { Cluster } from '../../cluster/cluster.js';
import type { ReplicatedStore } from '../../cluster/replicated-store.js';
import type { LockService } from '../../cluster/locks.js';
import { HostPort } from '../../config.js';
import { clusterHosts, clusterMigrations, clusterPlacements, forgetMember } from '../../cluster/inventory.js';

const MemberId = z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const TransferBody = z.strictObject({ to: MemberId });
const AddressBody = z.strictObject({ address: HostPort });
const RequestIdHex = z.string().regex(/^[0-9a-f]{32}$/, 'request ids are 32 hex digits');
const PutBody = z.strictObject({
  value: z.string().max(1 << 20),
  requestId: RequestIdHex.optional(),
  fence: z.strictObject({ lock: z.string().min(1).max(256), token: z.int().min(1) }).optional(),
});
const Consistency = z.enum(['linearizable', 'stale']).default('linearizable');
const ReadQuery = z.strictObject({ consistency: Consistency });
const MigrationsQuery = z.strictObject({ consistency: Consistency, state: z.enum(['running', 'completed', 'failed', 'cancelled']).optional(), vm: z.string().min(1).max(64).optional(), ...PageQuery });
const InventoryQuery = z.strictObject({ consistency: Consistency, member: MemberId.optional(), name: z.string().min(1).max(256).optional(), ...PageQuery });
const KeyParam = z.string().min(1).max(1024);
const LockName = z.string().min(1).max(256);
const AcquireBody = z.strictObject({ holder: z.string().min(1).max(256), ttlMs: z.int().min(100).max(3_600_000), requestId: RequestIdHex.optional() });
const ReleaseQuery = z.strictObject({ token: z.coerce.number().int().min(1) });

/** User keys live under their own prefix, apart from NovaCron's control-plane state. */
const KV_PREFIX = 'kv/';
const LOCK_PREFIX = 'api/';

export function clusterRoutes(router: Router, cluster: Cluster, store: ReplicatedStore, locks: LockService): void {
  router.add('GET', '/v1/cluster', async () => ({ status: 200, json: await cluster.status() }), { priv: 'Cluster.Audit', on: onCluster });
  // (Daemons join on the cluster port, over TLS: cluster/cluster-port.ts.)
  router.add('POST', '/v1/cluster/certificate', async () => ({ status: 200, json: await cluster.renewCertificate() }), { priv: 'Cluster.Admin', on: onCluster });
  router.add('DELETE', '/v1/cluster/members/:id', async (req) => {
    const id = parseWith(MemberId, req.params.id, 'BAD_QUERY');
    const members = await cluster.removeMember(id);
    // Its inventory goes with it, written by a remaining member. A member that removed
    // itself can no longer write: the leader's sweep clears its records instead.
    if (id !== cluster.memberId) await forgetMember(store, id).catch(() => undefined);
    return { status: 200, json: members };
  }, { priv: 'Cluster.Admin', on: onCluster });
  // A member's peer address changed (etcd's `member update`); a restarted member also does this itself.
  router.add('PATCH', '/v1/cluster/members/:id', async (req) => {
    const id = parseWith(MemberId, req.params.id, 'BAD_QUERY');
    const { address } = parseWith(AddressBody, req.body);
    await cluster.updateAddress(id, address);
    return { status: 200, json: { id, address } };
  }, { priv: 'Cluster.Admin', on: onCluster, body: true });
  // The cluster-wide inventory: every host, and every VM with the member it runs on.
  router.add('GET', '/v1/cluster/hosts', async (req) => {
    const q = parseWith(ReadQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const [hosts, st] = await Promise.all([clusterHosts(store, q.consistency === 'stale'), cluster.status()]);
    const role = (m: number) => (m === st.leader ? 'leader' : st.voters.includes(m) ? 'voter' : st.learners.includes(m) ? 'learner' : 'removed');
    return { status: 200, json: { items: hosts.map((h) => ({ ...h, role: role(h.member) })) } };
  }, { priv: 'Cluster.Audit', on: onCluster });
  router.add('GET', '/v1/cluster/migrations', async (req) => {
    const q = parseWith(MigrationsQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const all = await clusterMigrations(store, q.consistency === 'stale');
    const items = all.filter((m) => (q.state === undefined || m.state === q.state) && (q.vm === undefined || m.vmId === q.vm || m.vmName === q.vm));
    const key = (m: (typeof items)[number]) => `${m.createdAt}|${m.id}|${m.role}`;
    return { status: 200, json: page(items.sort((a, b) => (key(a) < key(b) ? 1 : -1)), key, q, 'desc') };
  }, { priv: 'Cluster.Audit', on: onCluster });
  router.add('GET', '/v1/cluster/vms', async (req) => {
    const q = parseWith(InventoryQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const all = await clusterPlacements(store, q.consistency === 'stale');
    const items = all.filter((p) => (q.member === undefined || p.member === q.member) && (q.name === undefined || p.name === q.name)).sort((a, b) => (a.vmId < b.vmId ? -1 : 1));
    return { status: 200, json: page(items, (p) => p.vmId, q) };
  }, { priv: 'Cluster.Audit', on: onCluster });
  router.add('POST', '/v1/cluster/leader', async (req) => {
    const { to } = parseWith(TransferBody, req.body);
    await cluster.transferLeader(to);
    return { status: 202, json: { transferringTo: to } };
  }, { priv: 'Cluster.Admin', on: onCluster, body: true });

  // The key-value and lock APIs: each user has its own namespace (`kv/<user>/…`, locks
  // `api/<user>/…`), apart from each other and from the daemon's own keys and locks.
  const kvKey = (req: ApiRequest) => `${KV_PREFIX}${req.principal!.user}/${parseWith(KeyParam, req.params.key, 'BAD_QUERY')}`;
  const lockName = (req: ApiRequest, name = req.params.name) => `${LOCK_PREFIX}${req.principal!.user}/${parseWith(LockName, name, 'BAD_QUERY')}`;
  const kv = { priv: 'KV.Use', on: ownNamespace } as const;
  router.add('GET', '/v1/kv/:key', async (req) => {
    const q = parseWith(ReadQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const value = await store.get(kvKey(req), { stale: q.consistency === 'stale' });
    if (value === undefined) throw new NovaError('KEY_NOT_FOUND', `no key ${JSON.stringify(req.params.key)}`);
    return { status: 200, json: { key: req.params.key, value: value.toString() } };
  }, kv);
  router.add('PUT', '/v1/kv/:key', async (req) => {
    const key = kvKey(req);
    const body = parseWith(PutBody, req.body);
    const index = await store.writeIndex([{ key, value: Buffer.from(body.value) }], {
      ...(body.requestId ? { requestId: Buffer.from(body.requestId, 'hex') } : {}),
      ...(body.fence ? { fence: { lock: lockName(req, body.fence.lock), token: body.fence.token } } : {}),
    });
    return { status: 200, json: { key: req.params.key, index } };
  }, { ...kv, body: true });
  router.add('DELETE', '/v1/kv/:key', async (req) => ({ status: 200, json: { key: req.params.key, index: await store.writeIndex([{ key: kvKey(req) }]) } }), kv);

  const shown = <T extends { name: string }>(req: ApiRequest, v: T): T => ({ ...v, name: req.params.name! });
  router.add('GET', '/v1/locks/:name', (req) => ({ status: 200, json: shown(req, locks.get(lockName(req))) }), kv);
  router.add('POST', '/v1/locks/:name', async (req) => {
    const body = parseWith(AcquireBody, req.body);
    const grant = await locks.acquire(lockName(req), body.holder, body.ttlMs, body.requestId ? Buffer.from(body.requestId, 'hex') : undefined);
    return { status: 200, json: shown(req, grant) };
  }, { ...kv, body: true });
  router.add('DELETE', '/v1/locks/:name', async (req) => {
    const { token } = parseWith(ReleaseQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    await locks.release(lockName(req), token);
    return { status: 200, json: { name: req.params.name, released: true } };
  }, kv);
  // The daemon's own locks (a VM's is `vm/<id>`), for operators: read-only.
  router.add('GET', '/v1/cluster/locks/:name', (req) => ({ status: 200, json: locks.get(parseWith(LockName, req.params.name, 'BAD_QUERY')) }), { priv: 'Cluster.Admin', on: onCluster });
}

const onCluster = (): Target => ({ kind: 'cluster' });
/** KV.Use is checked on the caller's own tenant (a tenant's users), or on `/`. */
const ownNamespace = (req: ApiRequest): Target => (req.principal?.tenant ? { kind: 'tenant', tenant: req.principal.tenant } : ROOT);
