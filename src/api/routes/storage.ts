/** Pools and volumes: `/v1/pools…`. */
import { z } from 'zod';
import type { ApiRequest, Router } from '../router.js';
import { tenantNamed, withTenant, type Target } from '../access.js';
import { parseWith } from '../validate.js';
import { CloneVolumeRequest, CONTENT_TYPES, CreateVolumeRequest, PoolDef, PoolName, ResizeVolumeRequest, UploadQuery, VolumeName, volumeRef } from '../../storage/model.js';
import type { StorageService } from '../../storage/service.js';
import { NovaError } from '../../errors.js';

const ListQuery = z.strictObject({
  tenant: z.string().max(63).optional(),
  content: z.enum(CONTENT_TYPES).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.string().max(96).optional(),
});

/** Hooks into the VMs using a volume (an attached disk is resized by its hypervisor). */
export interface VolumeHooks {
  /** Resizes `ref` inside the running VM that has it open; false when no running VM has it. */
  resizeOnline?(ref: string, sizeBytes: number): Promise<boolean>;
  /** Takes or deletes a snapshot of `ref` inside the running VM that has it open; false when none has. */
  snapshotOnline?(ref: string, op: 'create' | 'delete', name: string): Promise<boolean>;
  /** The tiering rules' dry run: the disks they would move now, and why. */
  policyPlan?(): unknown[];
  /** Pools defined through the API, for the whole cluster (set once the cluster runs). */
  pools?: { define(def: PoolDef): Promise<void>; remove(name: string): Promise<void> };
}

const SnapshotName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, ".", "_" and "-", up to 64');

const onPool = (req: ApiRequest): Target => ({ kind: 'pool', pool: String(req.params.pool) });
const onVolume = (req: ApiRequest): Target => ({ kind: 'volume-ref', pool: String(req.params.pool), name: String(req.params.name) });

export function storageRoutes(router: Router, storage: StorageService, hooks: VolumeHooks = {}): void {
  const pool = (p: Record<string, string>) => parseWith(PoolName, p.pool, 'VALIDATION_FAILED');
  const ref = (p: Record<string, string>) => {
    const name = VolumeName.safeParse(p.name);
    if (!name.success) throw new NovaError('VOLUME_NOT_FOUND', `"${p.name}" is not a volume name`);
    return volumeRef(pool(p), name.data);
  };

  router.add('GET', '/v1/pools', async () => ({ status: 200, json: { items: await storage.pools() } }), { priv: 'authenticated' });
  router.add('GET', '/v1/storage/policy/plan', () => ({ status: 200, json: { items: hooks.policyPlan?.() ?? [] } }), { priv: 'Pool.Audit' });
  router.add('GET', '/v1/pools/:pool', async (req) => ({ status: 200, json: await storage.pool(pool(req.params)) }), { priv: 'authenticated' });
  const clusterPools = () => {
    if (!hooks.pools) throw new NovaError('SHUTTING_DOWN', 'the cluster is not running yet');
    return hooks.pools;
  };
  router.add('POST', '/v1/pools', async (req) => {
    const def = parseWith(PoolDef, req.body);
    await clusterPools().define(def);
    return { status: 201, json: await storage.pool(def.name), headers: { location: `/v1/pools/${def.name}` } };
  }, { priv: 'Pool.Modify', body: true });
  router.add('DELETE', '/v1/pools/:pool', async (req) => {
    await clusterPools().remove(pool(req.params));
    return { status: 204 };
  }, { priv: 'Pool.Modify', on: onPool });

  router.add('GET', '/v1/pools/:pool/volumes', async (req) => {
    const q = parseWith(ListQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const p = pool(req.params);
    const who = req.principal;
    const visibleTenant = who && !who.can('Pool.Audit', { kind: 'pool', pool: p }) && ((tenant: string) => who.can('Pool.Audit', { kind: 'volume', pool: p, tenant }));
    return { status: 200, rawJson: await storage.listJson(p, { limit: q.limit, ...(q.tenant ? { tenant: q.tenant } : {}), ...(q.content ? { content: q.content } : {}), ...(q.cursor ? { cursor: q.cursor } : {}), ...(visibleTenant ? { visibleTenant } : {}) }) };
  }, { priv: 'authenticated' });

  router.add('POST', '/v1/pools/:pool/volumes', async (req) => {
    const v = await storage.create(pool(req.params), parseWith(CreateVolumeRequest, withTenant(req)));
    return { status: 201, json: v, headers: { location: `/v1/pools/${v.pool}/volumes/${v.name}` } };
  }, { priv: 'Pool.Allocate', on: (req) => ({ kind: 'volume', pool: String(req.params.pool), tenant: tenantNamed(req) }), body: true });

  router.add('GET', '/v1/pools/:pool/volumes/:name', (req) => ({ status: 200, json: storage.get(ref(req.params)) }), { priv: 'Pool.Audit', on: onVolume });

  router.add('DELETE', '/v1/pools/:pool/volumes/:name', async (req) => {
    await storage.remove(ref(req.params));
    return { status: 204 };
  }, { priv: 'Pool.Allocate', on: onVolume });

  router.add('POST', '/v1/pools/:pool/volumes/:name/resize', async (req) => {
    const r = ref(req.params);
    const { sizeMiB } = parseWith(ResizeVolumeRequest, req.body);
    const online = hooks.resizeOnline;
    const v = await storage.resize(r, sizeMiB, online ? async (bytes) => {
      if (!(await online(r, bytes))) await storage.resizeOffline(r, bytes);
    } : undefined);
    return { status: 200, json: v };
  }, { priv: 'Pool.Allocate', on: onVolume, body: true });

  router.add('POST', '/v1/pools/:pool/volumes/:name/clone', async (req) => {
    const v = await storage.clone(ref(req.params), parseWith(CloneVolumeRequest, req.body));
    return { status: 201, json: v, headers: { location: `/v1/pools/${v.pool}/volumes/${v.name}` } };
  }, { priv: 'Pool.Allocate', on: onVolume, body: true });

  router.add('GET', '/v1/pools/:pool/volumes/:name/snapshots', async (req) => ({ status: 200, json: { items: await storage.snapshots(ref(req.params)) } }), { priv: 'Pool.Audit', on: onVolume });
  const snap = async (r: string, op: 'create' | 'revert' | 'delete', name: string) => {
    const online = hooks.snapshotOnline;
    await storage.snapshot(r, op, name, online ? (o) => online(r, o, name) : undefined);
    return (await storage.snapshots(r)).find((s) => s.name === name) ?? { name, deleted: true };
  };
  router.add('POST', '/v1/pools/:pool/volumes/:name/snapshots', async (req) => {
    const { name } = parseWith(z.strictObject({ name: SnapshotName }), req.body);
    return { status: 201, json: await snap(ref(req.params), 'create', name) };
  }, { priv: 'Pool.Allocate', on: onVolume, body: true });
  router.add('POST', '/v1/pools/:pool/volumes/:name/snapshots/:snapshot/revert', async (req) => ({ status: 200, json: await snap(ref(req.params), 'revert', parseWith(SnapshotName, req.params.snapshot)) }), { priv: 'Pool.Allocate', on: onVolume });
  router.add('DELETE', '/v1/pools/:pool/volumes/:name/snapshots/:snapshot', async (req) => ({ status: 200, json: await snap(ref(req.params), 'delete', parseWith(SnapshotName, req.params.snapshot)) }), { priv: 'Pool.Allocate', on: onVolume });

  router.add('PUT', '/v1/pools/:pool/volumes/:name/content', async (req) => {
    const p = pool(req.params);
    const name = parseWith(VolumeName, req.params.name);
    const q = parseWith(UploadQuery, { ...Object.fromEntries(req.query), tenant: tenantNamed(req, req.query.get('tenant')) }, 'BAD_QUERY');
    const v = await storage.upload(p, name, q, req.stream!, req.contentLength);
    return { status: 201, json: v, headers: { location: `/v1/pools/${v.pool}/volumes/${v.name}` } };
  }, { priv: 'Pool.Allocate', on: (req) => ({ kind: 'volume', pool: String(req.params.pool), tenant: tenantNamed(req, req.query.get('tenant')) }), stream: true });

  router.add('GET', '/v1/pools/:pool/volumes/:name/content', (req) => {
    const d = storage.download(ref(req.params));
    return {
      status: 200,
      stream: { body: d.stream, size: d.sizeBytes, contentType: 'application/octet-stream' },
      headers: { 'x-volume-format': d.meta.format, ...(d.meta.sha256 ? { 'x-volume-sha256': d.meta.sha256 } : {}) },
    };
  }, { priv: 'Pool.Audit', on: onVolume });
}
