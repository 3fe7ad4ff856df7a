import { z } from 'zod';
import type { Router } from '../router.js';
import { parseWith } from '../validate.js';
import { CreateVmRequest, DiskSpec, PatchVmRequest } from '../../vm/spec.js';
import { VM_STATES } from '../../vm/state.js';
import type { VmService } from '../../vm/service.js';
import type { OperationKind } from '../../operations/operation.js';

const ListQuery = z.strictObject({
  state: z.array(z.enum(VM_STATES)).optional(),
  tenant: z.string().max(63).optional(),
  label: z.array(z.string().regex(/^[^=]+=[^=]*$/, 'labels are key=value')).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  cursor: z.string().max(64).optional(),
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

export function vmRoutes(router: Router, vms: VmService): void {
  router.add('GET', '/v1/vms', (req) => {
    const q = parseWith(ListQuery, queryObject(req.query, ['state', 'label']), 'BAD_QUERY');
    const labels = q.label && Object.fromEntries(q.label.map((l) => l.split('=', 2) as [string, string]));
    const page = vms.list({ limit: q.limit, ...(q.state && { state: q.state }), ...(q.tenant && { tenant: q.tenant }), ...(labels && { labels }), ...(q.cursor && { cursor: q.cursor }) });
    // VM JSON is cached per VM; assemble the page without re-serialising records.
    let rawJson = `{"items":[${page.items.map((vm) => vms.getJson(vm.id)).join(',')}]`;
    if (page.nextCursor) rawJson += `,"nextCursor":${JSON.stringify(page.nextCursor)}`;
    if (page.total >= 0) rawJson += `,"total":${page.total}`;
    return { status: 200, rawJson: rawJson + '}' };
  });

  router.add('POST', '/v1/vms', async (req) => {
    const vm = await vms.create(parseWith(CreateVmRequest, req.body));
    return { status: 201, json: vm, headers: { location: `/v1/vms/${vm.id}` } };
  }, { body: true });

  router.add('GET', '/v1/vms/:id', (req) => ({ status: 200, rawJson: vms.getJson(req.params.id!) }));

  router.add('PATCH', '/v1/vms/:id', async (req) => ({ status: 200, json: await vms.patch(req.params.id!, parseWith(PatchVmRequest, req.body)) }), { body: true });

  router.add('DELETE', '/v1/vms/:id', async (req) => {
    const q = parseWith(DeleteQuery, Object.fromEntries(req.query), 'BAD_QUERY');
    const op = await vms.requestAction(req.params.id!, 'delete', { force: q.force === 'true', keepDisks: q.keepDisks === 'true' });
    return { status: 202, json: op, headers: { location: `/v1/operations/${op.id}` } };
  });

  const actions: OperationKind[] = ['start', 'stop', 'shutdown', 'pause', 'resume', 'reboot', 'checkpoint', 'restore'];
  for (const kind of actions) {
    router.add('POST', `/v1/vms/:id/${kind}`, async (req) => {
      const body = parseWith(ActionBody, req.body);
      const op = await vms.requestAction(req.params.id!, kind, body?.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {});
      return { status: 202, json: op, headers: { location: `/v1/operations/${op.id}` } };
    }, { body: true });
  }

  const SnapshotName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, ".", "_" and "-", up to 64');
  const CreateSnapshot = z.strictObject({ name: SnapshotName });
  const snapshotName = (raw: string) => parseWith(SnapshotName, raw);
  router.add('POST', '/v1/vms/:id/disks', async (req) => ({ status: 201, json: await vms.addDisk(req.params.id!, parseWith(DiskSpec, req.body)) }), { body: true });
  router.add('GET', '/v1/vms/:id/stats', async (req) => ({ status: 200, json: await vms.stats(req.params.id!) }));
  router.add('GET', '/v1/vms/:id/snapshots', async (req) => ({ status: 200, json: { items: await vms.listSnapshots(req.params.id!) } }));
  router.add('POST', '/v1/vms/:id/snapshots', async (req) => {
    const { name } = parseWith(CreateSnapshot, req.body);
    return { status: 201, json: await vms.createSnapshot(req.params.id!, name) };
  }, { body: true });
  router.add('POST', '/v1/vms/:id/snapshots/:name/revert', async (req) => ({ status: 200, json: await vms.revertSnapshot(req.params.id!, snapshotName(req.params.name!)) }));
  router.add('DELETE', '/v1/vms/:id/snapshots/:name', async (req) => ({ status: 200, json: await vms.deleteSnapshot(req.params.id!, snapshotName(req.params.name!)) }));

  router.add('GET', '/v1/operations/:id', async (req) => ({ status: 200, json: await vms.getOperation(req.params.id!) }));
}
