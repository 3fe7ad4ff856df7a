import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, sampleVm, spawnDaemon, waitOp, type DaemonHandle } from '../helpers/daemon.js';

let d: DaemonHandle;
beforeAll(async () => {
  d = await spawnDaemon();
});
afterAll(async () => {
  await d.kill('SIGTERM');
  removeDir(d.dataDir);
});

describe('health and metrics', () => {
  it('serves healthz with the native uWS stack, readyz and Prometheus metrics', async () => {
    const h = await api(d.url, 'GET', '/healthz');
    expect(h.status).toBe(200);
    expect(h.body).toMatchObject({ status: 'ok', driver: 'sim', http: 'uws-native' });
    expect((await api(d.url, 'GET', '/readyz')).status).toBe(200);
    const m = await api(d.url, 'GET', '/metrics');
    expect(m.status).toBe(200);
    expect(m.headers.get('content-type')).toContain('text/plain');
    expect(m.body).toMatch(/^# HELP novacron_vms /m);
    expect(m.body).toMatch(/novacron_http_requests_total\{method="GET",route="\/healthz",status="200"\} \d+/);
    expect(m.body).toMatch(/novacron_process_cpu_seconds_total/);
  });
});

describe('VM lifecycle', () => {
  it('creates, starts, pauses, resumes, reboots, shuts down and deletes a VM', async () => {
    const created = await api(d.url, 'POST', '/v1/vms', sampleVm('web-1', { labels: { app: 'web' } }));
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'web-1', state: 'stopped', generation: 2, spec: { vcpus: 2, tenant: 'default', boot: { type: 'disk' } } });
    expect(created.headers.get('location')).toBe(`/v1/vms/${created.body.id}`);
    const id = created.body.id;

    for (const [action, state] of [['start', 'running'], ['pause', 'paused'], ['resume', 'running'], ['reboot', 'running'], ['shutdown', 'stopped']] as const) {
      const r = await api(d.url, 'POST', `/v1/vms/${id}/${action}`);
      expect(r.status, `${action}: ${JSON.stringify(r.body)}`).toBe(202);
      // Pause and resume are answered done; the others run on after the answer.
      expect(r.body).toMatchObject({ kind: action, vmId: id, state: action === 'pause' || action === 'resume' ? 'succeeded' : 'running' });
      const op = await waitOp(d.url, r.body.id);
      expect(op).toMatchObject({ state: 'succeeded', progress: { percent: 100 } });
      expect((await api(d.url, 'GET', `/v1/vms/${id}`)).body.state).toBe(state);
    }
    // Lookup by name works too.
    expect((await api(d.url, 'GET', '/v1/vms/web-1')).body.id).toBe(id);

    const del = await api(d.url, 'DELETE', `/v1/vms/${id}`);
    expect(del.status).toBe(202);
    expect((await waitOp(d.url, del.body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'GET', `/v1/vms/${id}`)).status).toBe(404);
  });

  it('rejects illegal transitions with 409 VM_INVALID_STATE and leaves the VM intact', async () => {
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('idle-1'));
    const r = await api(d.url, 'POST', `/v1/vms/${vm.id}/pause`);
    expect(r.status).toBe(409);
    expect(r.body.error).toMatchObject({ code: 'VM_INVALID_STATE' });
    expect(r.body.error.details).toMatchObject({ state: 'stopped' });
    expect((await api(d.url, 'GET', `/v1/vms/${vm.id}`)).body).toMatchObject({ state: 'stopped', generation: vm.generation });
  });

  it('refuses to delete a running VM unless forced', async () => {
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('busy-1'));
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
    expect((await api(d.url, 'DELETE', `/v1/vms/${vm.id}`)).status).toBe(409);
    const forced = await api(d.url, 'DELETE', `/v1/vms/${vm.id}?force=true`);
    expect(forced.status).toBe(202);
    expect((await waitOp(d.url, forced.body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'GET', `/v1/vms/${vm.id}`)).status).toBe(404);
  });

  it('reports an injected driver failure on the operation and settles the VM state', async () => {
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('flaky-1', { labels: { 'sim.novacron.io/fail': 'start' } }));
    const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
    expect(op).toMatchObject({ state: 'failed', error: { code: 'DRIVER_FAILED', message: 'sim: injected start failure' } });
    const after = (await api(d.url, 'GET', `/v1/vms/${vm.id}`)).body;
    expect(after.state).toBe('stopped');
    expect(after.stateReason).toContain('start failed');
  });

  it('patches stopped VMs only', async () => {
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('patch-1'));
    const p = await api(d.url, 'PATCH', `/v1/vms/${vm.id}`, { vcpus: 4, labels: { tier: 'gold' } });
    expect(p.status).toBe(200);
    expect(p.body.spec).toMatchObject({ vcpus: 4, labels: { tier: 'gold' }, memoryMiB: 512 });
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
    const denied = await api(d.url, 'PATCH', `/v1/vms/${vm.id}`, { vcpus: 8 });
    expect(denied.status).toBe(409);
    expect(denied.body.error.code).toBe('VM_INVALID_STATE');
  });

  it('lists with filters and cursor pagination', async () => {
    for (let i = 0; i < 7; i++) {
      const r = await api(d.url, 'POST', '/v1/vms', sampleVm(`page-${i}`, { tenant: 'acme', labels: { batch: i % 2 ? 'odd' : 'even' } }));
      expect(r.status).toBe(201);
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const r = await api(d.url, 'GET', `/v1/vms?tenant=acme&limit=3${cursor ? `&cursor=${cursor}` : ''}`);
      expect(r.status).toBe(200);
      expect(r.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...r.body.items.map((v: any) => v.name));
      cursor = r.body.nextCursor;
    } while (cursor);
    expect(seen).toEqual(['page-0', 'page-1', 'page-2', 'page-3', 'page-4', 'page-5', 'page-6']);
    const odd = await api(d.url, 'GET', '/v1/vms?tenant=acme&label=batch%3Dodd');
    expect(odd.body.items.map((v: any) => v.name)).toEqual(['page-1', 'page-3', 'page-5']);
    const stopped = await api(d.url, 'GET', '/v1/vms?state=running,paused&tenant=acme');
    expect(stopped.body.items).toEqual([]);
    const all = await api(d.url, 'GET', '/v1/vms?limit=1000');
    expect(all.body.total).toBe(all.body.items.length);
  });
});

describe('errors', () => {
  it.each([
    ['bad JSON', 'POST', '/v1/vms', '{"name": ', { 'content-type': 'application/json' }, 400, 'BAD_JSON'],
    ['schema violation', 'POST', '/v1/vms', JSON.stringify({ name: 'UPPER', vcpus: 0, memoryMiB: 1 }), {}, 400, 'VALIDATION_FAILED'],
    ['unknown field', 'POST', '/v1/vms', JSON.stringify({ ...sampleVm('x-1'), cpus: 2 }), {}, 400, 'VALIDATION_FAILED'],
    ['wrong media type', 'POST', '/v1/vms', 'name=x', { 'content-type': 'application/x-www-form-urlencoded' }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['unknown route', 'GET', '/v1/nope', undefined, {}, 404, 'ROUTE_NOT_FOUND'],
    ['unknown VM', 'GET', '/v1/vms/vm-000000000000000000000000', undefined, {}, 404, 'VM_NOT_FOUND'],
    ['unknown operation', 'GET', '/v1/operations/op-1', undefined, {}, 404, 'OPERATION_NOT_FOUND'],
    ['wrong method', 'PUT', '/v1/vms', undefined, {}, 405, 'METHOD_NOT_ALLOWED'],
    ['bad query', 'GET', '/v1/vms?limit=0', undefined, {}, 400, 'BAD_QUERY'],
    ['bad state filter', 'GET', '/v1/vms?state=flying', undefined, {}, 400, 'BAD_QUERY'],
    ['inconsistent spec', 'POST', '/v1/vms', JSON.stringify({ name: 'nodisk', vcpus: 1, memoryMiB: 64 }), {}, 422, 'VM_SPEC_INVALID'],
  ])('%s → %i %s', async (_name, method, path, body, headers, status, code) => {
    const r = await api(d.url, method, path, body, headers as Record<string, string>);
    expect(r.status).toBe(status);
    expect(r.body.error.code).toBe(code);
    expect(typeof r.body.error.message).toBe('string');
    expect(JSON.stringify(r.body)).not.toMatch(/at .*\.(js|ts):\d+/); // no stack traces
  });

  it('405 lists the allowed methods', async () => {
    const r = await api(d.url, 'PUT', '/v1/vms');
    expect(r.headers.get('allow')).toBe('GET, POST');
  });

  it('413 for a body over the limit, and the daemon keeps serving', async () => {
    const big = JSON.stringify({ ...sampleVm('huge-1'), labels: { a: 'x'.repeat(2 << 20) } });
    const r = await api(d.url, 'POST', '/v1/vms', big);
    expect(r.status).toBe(413);
    expect(r.body.error.code).toBe('BODY_TOO_LARGE');
    expect((await api(d.url, 'GET', '/healthz')).status).toBe(200);
  });

  it('409 on a duplicate name, including concurrent creates', async () => {
    const results = await Promise.all([0, 1, 2, 3].map(() => api(d.url, 'POST', '/v1/vms', sampleVm('dup-1'))));
    expect(results.map((r) => r.status).sort()).toEqual([201, 409, 409, 409]);
    expect(results.find((r) => r.status === 409)!.body.error.code).toBe('VM_NAME_CONFLICT');
  });

  it('409 VM_BUSY while another operation runs on the VM', async () => {
    const slow = await spawnDaemon({ env: { NOVACRON_CONFIG: '' }, args: ['--config', await writeConfig({ sim: { latencyMs: { start: 400 } } })] });
    try {
      const { body: vm } = await api(slow.url, 'POST', '/v1/vms', sampleVm('slow-1'));
      const first = await api(slow.url, 'POST', `/v1/vms/${vm.id}/start`);
      expect(first.status).toBe(202);
      expect((await api(slow.url, 'GET', `/v1/vms/${vm.id}`)).body.state).toBe('starting');
      const second = await api(slow.url, 'POST', `/v1/vms/${vm.id}/stop`);
      expect(second.status).toBe(409);
      expect(second.body.error.code).toBe('VM_BUSY');
      expect((await waitOp(slow.url, first.body.id)).state).toBe('succeeded');
    } finally {
      await slow.kill();
      removeDir(slow.dataDir);
    }
  });
});

async function writeConfig(config: unknown): Promise<string> {
  const { writeFileSync, mkdtempSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const file = join(mkdtempSync(join(tmpdir(), 'novacron-cfg-')), 'config.json');
  writeFileSync(file, JSON.stringify(config));
  return file;
}
