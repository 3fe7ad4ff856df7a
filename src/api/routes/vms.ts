import { z } from 'zod';
import type { ApiReply, ApiRequest, Handler, Method, RouteOptions, Router } from '../router.js';
import type { Forwarder } from '../forwarding.js';
import { isErrorCode, NovaError } from '../../errors.js';
import type { VmRecord } from '../../vm/record.js';
import { parseWith } from '../validate.js';
import { CreateVmRequest, DiskSpec, FromTemplateRequest, PatchVmRequest } from '../../vm/spec.js';
import { PoolName } from '../../storage/model.js';
import { VM_STATES } from '../../vm/state.js';
import type { ListPage, VmService } from '../../vm/service.js';
import type { OperationKind } from '../../operations/operation.js';
import type { Privilege } from '../../auth/privileges.js';
import { ROOT } from '../../auth/acl.js';
import { tenantNamed, withTenant, type Target } from '../access.js';

/** What creating a VM needs VM.Allocate on: the tenant it names (`default` when none), or the template it copies. */
function createTarget(req: ApiRequest): Target {
  const template = typeof req.body === 'object' && req.body !== null ? (req.body as { fromTemplate?: unknown }).fromTemplate : undefined;
  if (typeof template === 'string') return { kind: 'vm-ref', ref: template };
  return { kind: 'tenant', tenant: tenantNamed(req) };
}

const ListQuery = z.strictObject({
  state: z.array(z.enum(VM_STATES)).optional(),
  tenant: z.string().max(63).optional(),
  label: z.array(z.string().regex(/^[^=]+=[^=]*$/, 'labels are key=value')).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.string().max(64).optional(),
  /** `local`: this member's VMs only (default: the whole cluster). */
  scope: z.enum(['local', 'cluster']).optional(),
  /** Only the VMs of this cluster member. */
  member: z.coerce.number().int().positive().optional(),
});

const ActionBody = z.strictObject({ timeoutMs: z.int().min(0).max(3_600_000).optional() }).optional();
const DeleteQuery = z.strictObject({
  force: z.enum(['true', 'false']).optional(),
  keepDisks: z.enum(['true', 'false']).optional(),
});

/** URLSearchParams → plain object; repeated keys and comma lists for array fields. */
function queryObject(q: URLSearchParams, arrays: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of q) {
    if (arrays.includes(k)) {
      const list = (out[k] as string[] | undefined) ?? [];
      list.push(...(k === 'label' ? [v] : v.split(',').filter(Boolean)));
      out[k] = list;
    } else {
      out[k] = v;
    }
  }
  return out;
}

/** How `GET /v1/vms` reaches the rest of the cluster; `forwarder` is set once the cluster runs. */
export interface ClusterListing {
  forwarder?: Forwarder;
  self?: number;
}

export function vmRoutes(router: Router, vms: VmService, cluster: ClusterListing = {}): void {
  /** A route about the VM its `:id` names: answered by the VM's member, wherever the request arrives. */
  const vmRoute = (method: Method, pattern: string, priv: Privilege, handler: Handler, opts: Omit<RouteOptions, 'priv'> = {}) =>
    router.add(method, pattern, handler, { on: (req) => ({ kind: 'vm-ref', ref: req.params.id! }), ...opts, priv, forward: 'vm' });
  router.add('GET', '/v1/vms', (req) => {
    const q = parseWith(ListQuery, queryObject(req.query, ['state', 'label']), 'BAD_QUERY');
    const labels = q.label && Object.fromEntries(q.label.map((l) => l.split('=', 2) as [string, string]));
    const { forwarder, self } = cluster;
    const here = q.scope === 'local' || !forwarder || q.member === self || (q.member === undefined && !forwarder.mayHaveOthers());
    const who = req.principal;
    const visible = who && !who.can('VM.Audit', ROOT) && ((vm: VmRecord) => who.can('VM.Audit', { kind: 'vm', id: vm.id, tenant: vm.spec.tenant }));
    const local = () => vms.list({ limit: q.limit, ...(q.state && { state: q.state }), ...(q.tenant && { tenant: q.tenant }), ...(labels && { labels }), ...(q.cursor && { cursor: q.cursor }), ...(visible && { visible }) });
    if (!here) return listCluster(forwarder, req, q.limit, q.member, local, (page) => pageReply(vms, page));
    if (q.member !== undefined && q.member !== self) return { status: 200, json: { items: [], total: 0 } };
    return pageReply(vms, local());
  }, { priv: 'authenticated' });

  router.add('POST', '/v1/vms', async (req) => {
    const fromTemplate = typeof req.body === 'object' && req.body !== null && 'fromTemplate' in req.body;
    const vm = fromTemplate ? await vms.createFromTemplate(parseWith(FromTemplateRequest, req.body)) : await vms.create(parseWith(CreateVmRequest, withTenant(req)));
    return { status: 201, json: vm, headers: { location: `/v1/vms/${vm.id}` } };
  }, { priv: 'VM.Allocate', on: createTarget, body: true });

  vmRoute('GET', '/v1/vms/:id', 'VM.Audit', (req) => ({ status: 200, rawJson: vms.getJson(req.params.id!) }));

  vmRoute('PATCH', '/v1/vms/:id', 'VM.Config', async (req) => ({ status: 200, json: await vms.patch(req.params.id!, parseWith(PatchVmRequest, req.body)) }), { body: true });

  vmRoute('DELETE', '/v1/vms/:id', 'VM.Allocate', async (req) => {
    const q = parseWith(DeleteQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const op = await vms.requestAction(req.params.id!, 'delete', { force: q.force === 'true', keepDisks: q.keepDisks === 'true' });
    return { status: 202, json: op, headers: { location: `/v1/operations/${op.id}` } };
  });

  const actions: OperationKind[] = ['start', 'stop', 'shutdown', 'pause', 'resume', 'reboot', 'checkpoint', 'restore'];
  for (const kind of actions) {
    vmRoute('POST', `/v1/vms/:id/${kind}`, 'VM.PowerMgmt', async (req) => {
      const body = parseWith(ActionBody, req.body);
      const op = await vms.requestAction(req.params.id!, kind, body?.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {});
      return { status: 202, json: op, headers: { location: `/v1/operations/${op.id}` } };
    }, { body: true });
  }

  const SnapshotName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, ".", "_" and "-", up to 64');
  const CreateSnapshot = z.strictObject({ name: SnapshotName });
  const snapshotName = (raw: string) => parseWith(SnapshotName, raw);
  vmRoute('POST', '/v1/vms/:id/disks', 'VM.Config', async (req) => ({ status: 201, json: await vms.addDisk(req.params.id!, parseWith(DiskSpec, req.body)) }), { body: true });
  vmRoute('POST', '/v1/vms/:id/template', 'VM.Allocate', async (req) => ({ status: 200, json: await vms.makeTemplate(req.params.id!) }));
  vmRoute('GET', '/v1/vms/:id/stats', 'VM.Audit', async (req) => ({ status: 200, json: await vms.stats(req.params.id!) }));
  vmRoute('GET', '/v1/vms/:id/snapshots', 'VM.Audit', async (req) => ({ status: 200, json: { items: await vms.listSnapshots(req.params.id!) } }));
  vmRoute('POST', '/v1/vms/:id/snapshots', 'VM.Snapshot', async (req) => {
    const { name } = parseWith(CreateSnapshot, req.body);
    return { status: 201, json: await vms.createSnapshot(req.params.id!, name) };
  }, { body: true });
  vmRoute('POST', '/v1/vms/:id/snapshots/:name/revert', 'VM.Snapshot', async (req) => ({ status: 200, json: await vms.revertSnapshot(req.params.id!, snapshotName(req.params.name!)) }));
  vmRoute('DELETE', '/v1/vms/:id/snapshots/:name', 'VM.Snapshot', async (req) => ({ status: 200, json: await vms.deleteSnapshot(req.params.id!, snapshotName(req.params.name!)) }));

  const MoveDisk = z.strictObject({ pool: PoolName, bandwidthMBps: z.number().min(1).max(100_000).optional() });
  vmRoute('POST', '/v1/vms/:id/disks/:disk/move', 'VM.Config', async (req) => {
    const { pool, bandwidthMBps } = parseWith(MoveDisk, req.body);
    const op = await vms.moveDisk(req.params.id!, req.params.disk!, { pool, ...(bandwidthMBps ? { bandwidthMBps } : {}) });
    return { status: 202, json: op, headers: { location: `/v1/operations/${op.id}` } };
  }, { body: true });

  router.add('GET', '/v1/operations/:id', async (req) => ({ status: 200, json: await vms.getOperation(req.params.id!) }), { priv: 'VM.Audit', on: (req) => ({ kind: 'operation', id: req.params.id! }), forward: 'operation' });
  router.add('DELETE', '/v1/operations/:id', async (req) => ({ status: 202, json: await vms.cancelOperation(req.params.id!) }), { priv: 'VM.PowerMgmt', on: (req) => ({ kind: 'operation', id: req.params.id! }), forward: 'operation' });
}

/** This member's page of VMs; the JSON is cached per VM, so the page is assembled without re-serialising records. */
function pageReply(vms: VmService, page: ListPage): ApiReply {
  let rawJson = `{"items":[${page.items.map((vm) => vms.getJson(vm.id)).join(',')}]`;
  if (page.nextCursor) rawJson += `,"nextCursor":${JSON.stringify(page.nextCursor)}`;
  if (page.total >= 0) rawJson += `,"total":${page.total}`;
  return { status: 200, rawJson: rawJson + '}' };
}

interface Page {
  items: VmRecord[];
  nextCursor?: string;
  total?: number;
}

/**
 * The cluster-wide page: every member's page after the same cursor (ids are time-ordered
 * across the cluster), merged in id order and cut to `limit`. A VM in flight between two
 * members is listed once, as its destination or settled side reports it.
 */
async function listCluster(forwarder: Forwarder, req: ApiRequest, limit: number, member: number | undefined, local: () => ListPage, render: (page: ListPage) => ApiReply): Promise<ApiReply> {
  const others = (await forwarder.others()).filter((h) => member === undefined || h.member === member);
  if (others.length === 0 && member === undefined) return render(local());
  const remote = new URLSearchParams(req.query);
  remote.set('scope', 'local');
  remote.delete('member');
  const here = member === undefined ? local() : undefined;
  const pages: Page[] = here ? [{ items: here.items, ...(here.nextCursor ? { nextCursor: here.nextCursor } : {}), ...(here.total >= 0 ? { total: here.total } : {}) }] : [];
  for (const reply of await Promise.all(others.map((h) => forwarder.send(h, { method: 'GET', url: `/v1/vms?${remote}`, headers: {}, as: req.principal })))) {
    const body = JSON.parse(reply.body.toString('utf8'));
    if (reply.status !== 200) {
      const code = body?.error?.code;
      throw new NovaError(isErrorCode(code) ? code : 'CLUSTER_MEMBER_UNREACHABLE', `member ${reply.member} answered ${reply.status}: ${body?.error?.message ?? ''}`);
    }
    pages.push(body as Page);
  }
  const byId = new Map<string, VmRecord>();
  for (const vm of pages.flatMap((p) => p.items)) {
    const seen = byId.get(vm.id);
    if (!seen || seen.state === 'migrating') byId.set(vm.id, vm);
  }
  const all = [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const items = all.slice(0, limit);
  const page: Page = { items };
  if ((all.length > limit || pages.some((p) => p.nextCursor)) && items.length > 0) page.nextCursor = items.at(-1)!.id;
  if (pages.every((p) => p.total !== undefined)) page.total = pages.reduce((n, p) => n + p.total!, 0);
  return { status: 200, json: page };
}
