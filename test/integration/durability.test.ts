import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { api, removeDir, sampleVm, spawnDaemon, tempDataDir, waitOp } from '../helpers/daemon.js';

describe('durability', () => {
  it('kill -9 under write load loses no acknowledged write', async () => {
    const dataDir = tempDataDir();
    const d = await spawnDaemon({ dataDir });
    const acked: string[] = [];
    let stop = false;
    const writers = Array.from({ length: 16 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await api(d.url, 'POST', '/v1/vms', sampleVm(`w${w}-${i}`));
          if (r.status === 201) acked.push(r.body.id);
        } catch {
          return; // Connection dropped by the kill.
        }
      }
    });
    await new Promise((r) => setTimeout(r, 1500));
    const exit = await d.kill('SIGKILL');
    stop = true;
    await Promise.all(writers);
    expect(exit.signal).toBe('SIGKILL');
    expect(acked.length).toBeGreaterThan(50);

    const again = await spawnDaemon({ dataDir });
    try {
      const missing: string[] = [];
      for (const id of acked) {
        const r = await api(again.url, 'GET', `/v1/vms/${id}`);
        if (r.status !== 200) missing.push(id);
      }
      expect(missing).toEqual([]);
      // The store is still writable and consistent after recovery.
      expect((await api(again.url, 'POST', '/v1/vms', sampleVm('after-crash'))).status).toBe(201);
    } finally {
      await again.kill();
      removeDir(dataDir);
    }
  });

  it('reconciles state after a crash: lost sim VMs go to error, interrupted operations fail', async () => {
    const dataDir = tempDataDir();
    // A stop that takes 30 s: it is still running when the daemon dies.
    const config = join(dataDir, 'config.json');
    writeFileSync(config, JSON.stringify({ sim: { latencyMs: { stop: 30_000 } } }));
    const d = await spawnDaemon({ dataDir, args: ['--config', config] });
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('crashy'));
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
    const { body: other } = await api(d.url, 'POST', '/v1/vms', sampleVm('stopping'));
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${other.id}/start`)).body.id);
    const stopping = (await api(d.url, 'POST', `/v1/vms/${other.id}/stop`)).body;
    expect((await api(d.url, 'GET', `/v1/operations/${stopping.id}`)).body.state).toBe('running');
    const lastSeq = (await api(d.url, 'GET', '/healthz')).body.lastEventSeq;
    await d.kill('SIGKILL');

    const again = await spawnDaemon({ dataDir, args: ['--config', config] });
    try {
      const r = await api(again.url, 'GET', `/v1/vms/${vm.id}`);
      expect(r.body.state).toBe('error');
      expect(r.body.stateReason).toBe('VM process not found after daemon restart');
      expect((await api(again.url, 'GET', `/v1/operations/${stopping.id}`)).body).toMatchObject({ state: 'failed', error: { message: 'interrupted by daemon restart' } });
      expect((await api(again.url, 'GET', `/v1/vms/${other.id}`)).body.state).toBe('stopped'); // it was being stopped, and its process is gone
      expect((await api(again.url, 'GET', '/healthz')).body.lastEventSeq).toBeGreaterThan(lastSeq);
      // The operator can recover it.
      const op = await waitOp(again.url, (await api(again.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
      expect(op.state).toBe('succeeded');
    } finally {
      await again.kill();
      removeDir(dataDir);
    }
  });

  it('SIGTERM finishes in-flight operations, flushes, and exits 0', async () => {
    const dataDir = tempDataDir();
    const { writeFileSync } = await import('node:fs');
    const cfg = `${dataDir}/cfg.json`;
    writeFileSync(cfg, JSON.stringify({ sim: { latencyMs: { start: 500 } } }));
    const d = await spawnDaemon({ dataDir, args: ['--config', cfg] });
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('graceful'));
    const op = await api(d.url, 'POST', `/v1/vms/${vm.id}/start`);
    expect(op.status).toBe(202);
    const exit = await d.kill('SIGTERM');
    expect(exit.code).toBe(0);

    const again = await spawnDaemon({ dataDir });
    try {
      const finished = await api(again.url, 'GET', `/v1/operations/${op.body.id}`);
      expect(finished.body.state).toBe('succeeded'); // Not "interrupted": it completed before exit.
    } finally {
      await again.kill();
      removeDir(dataDir);
    }
  });

  it('a second daemon on the same data dir refuses to start with STORE_LOCKED', async () => {
    const dataDir = tempDataDir();
    const d = await spawnDaemon({ dataDir });
    try {
      await expect(spawnDaemon({ dataDir })).rejects.toThrow(/STORE_LOCKED/);
      expect((await api(d.url, 'GET', '/healthz')).status).toBe(200);
    } finally {
      await d.kill();
      removeDir(dataDir);
    }
  });
});

describe('record retention', () => {
  it('finished operations and migrations are deleted once older than recordRetentionMs; a running one stays', async () => {
    const dataDir = tempDataDir();
    writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ recordRetentionMs: 1500, sim: { latencyMs: { stop: 6000 } } }));
    const d = await spawnDaemon({ dataDir, args: ['--config', join(dataDir, 'config.json')] });
    try {
      const vm = (await api(d.url, 'POST', '/v1/vms', sampleVm('kept'))).body;
      const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
      const stopping = (await api(d.url, 'POST', `/v1/vms/${vm.id}/stop`)).body.id; // runs 6 s
      await new Promise((r) => setTimeout(r, 500));
      const cold = (await api(d.url, 'POST', '/v1/vms', sampleVm('cold'))).body;
      const mig = await api(d.url, 'POST', `/v1/vms/${cold.id}/migrate`, { target: 'http://127.0.0.1:1', targetToken: 'x'.repeat(16) });
      expect(mig.status, JSON.stringify(mig.body)).toBe(202); // then fails: nothing listens there
      expect((await api(d.url, 'GET', `/v1/operations/${op.id}`)).status).toBe(200);
      expect((await api(d.url, 'GET', `/v1/migrations/${mig.body.id}`)).status).toBe(200);
      await new Promise((r) => setTimeout(r, 3000));
      expect((await api(d.url, 'GET', `/v1/operations/${op.id}`)).body.error.code).toBe('OPERATION_NOT_FOUND');
      expect((await api(d.url, 'GET', `/v1/migrations/${mig.body.id}`)).body.error.code).toBe('MIGRATION_NOT_FOUND');
      expect((await api(d.url, 'GET', `/v1/operations/${stopping}`)).body.state).toBe('running');
      await waitOp(d.url, stopping);
    } finally {
      await d.kill();
      removeDir(dataDir);
    }
  });
});
