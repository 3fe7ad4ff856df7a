/**
 * Moving a VM's disk between pools, with the real QEMU driver and the test guest writing
 * and fsyncing numbered records to that disk (`nc.disk=1`, each reported on the console
 * once fsynced). Live: a mirror, then a pivot; every record the guest reported is on the
 * target afterwards. Cancel and a daemon kill -9 mid-move leave the disk on its volume.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle } from '../helpers/daemon.js';
import { diskRecords, ensureQemuAndGuest, guestVm, installGuest, killGuests, missingRecords, waitUntil } from '../helpers/qemu.js';

const BOOT_MS = 60_000;
let d: DaemonHandle;
let dataDir: string;
const args = () => ['--driver', 'qemu', '--config', join(dataDir, 'config.json')];

beforeAll(async () => {
  ensureQemuAndGuest();
  dataDir = tempDataDir();
  writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ pools: [{ name: 'fast', path: 'pools/fast', mediaClass: 'fast' }, { name: 'tiny', path: 'pools/tiny', capacityGiB: 16 / 1024 }] }));
  d = await spawnDaemon({ dataDir, args: args() });
  await installGuest(d.url);
}, 300_000);
afterAll(async () => {
  await d?.kill();
  killGuests(dataDir);
  removeDir(dataDir);
});

const volumeFile = (pool: string, id: string) => join(dataDir, 'pools', pool, `${id}-data`);
const records = (id: string) => diskRecords(dataDir, id);

/** A running guest writing records to its own 64 MiB qcow2 disk in `local`, 48 MiB of it prefilled (so a copy takes a while). */
async function diskWriter(name: string): Promise<string> {
  const created = await api(d.url, 'POST', '/v1/vms', guestVm(name, 'nc.disk=1', { disks: [{ name: 'data', sizeMiB: 64, format: 'qcow2' }] }));
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const id = created.body.id as string;
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6b 16M 48M', volumeFile('local', id)]);
  expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
  await waitUntil(() => records(id).length >= 3, BOOT_MS, 'the guest writing its disk');
  return id;
}

/** The files the VM's QEMU has open now. */
async function openFiles(id: string): Promise<string[]> {
  const pid = (await api(d.url, 'GET', `/v1/vms/${id}`)).body.runtime.pid;
  return readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
}

/** Stops the VM and checks its disk (in `pool`) holds every record the guest reported, and the prefill. */
async function stopAndCheck(id: string, pool: string): Promise<void> {
  expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
  const last = Math.max(...records(id));
  const raw = join(dataDir, `check-${id}.raw`);
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', volumeFile(pool, id), raw]);
  const image = readFileSync(raw);
  expect(missingRecords(image, last), `records missing (of ${last})`).toEqual([]);
  expect(image.subarray(16 << 20, 64 << 20).every((b) => b === 0x6b)).toBe(true);
}

async function pollOp(id: string, until: (op: any) => boolean, timeoutMs: number): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const op = (await api(d.url, 'GET', `/v1/operations/${id}`)).body;
    if (until(op)) return op;
    if (Date.now() > deadline) throw new Error(`operation ${id}: ${JSON.stringify(op)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('moving a disk between pools (real QEMU)', { timeout: 240_000 }, () => {
  it('live: the running guest keeps writing through the mirror and the pivot; every record it fsynced is on the target volume', async () => {
    const id = await diskWriter('move-live');
    const r = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'fast', bandwidthMBps: 100 });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.body).toMatchObject({ kind: 'move-disk', state: 'running' });
    const during = await pollOp(r.body.id, (op) => op.state !== 'running' || op.progress.detail?.copiedBytes > 0, 60_000);
    const done = await waitOp(d.url, r.body.id, {}, 120_000);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'succeeded', result: { disk: 'data', from: `local/${id}-data`, to: `fast/${id}-data` } });
    if (during.state === 'running') expect(during.progress.detail.totalBytes).toBeGreaterThan(0);

    const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(vm.state).toBe('running');
    expect(vm.spec.disks[0]).toMatchObject({ name: 'data', pool: 'fast' });
    expect(existsSync(volumeFile('local', id))).toBe(false);
    expect((await api(d.url, 'GET', `/v1/pools/fast/volumes/${id}-data`)).body).toMatchObject({ owner: id, attachedTo: [id] });
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-data`)).status).toBe(404);
    const open = await openFiles(id);
    expect(open).toContain(volumeFile('fast', id));
    expect(open).not.toContain(volumeFile('local', id));
    // The guest never noticed: it goes on writing, now to the new volume.
    const n = records(id).length;
    await waitUntil(() => records(id).length >= n + 5, 30_000, 'records after the pivot');
    await stopAndCheck(id, 'fast');
  });

  it('cancel mid-copy: the disk stays on its volume, the half-copied target is removed, the guest goes on writing', async () => {
    const id = await diskWriter('move-cancel');
    const r = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'fast', bandwidthMBps: 2 });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    await pollOp(r.body.id, (op) => op.progress.detail?.copiedBytes > 0, 60_000);
    expect(existsSync(volumeFile('fast', id))).toBe(true);
    const c = await api(d.url, 'DELETE', `/v1/operations/${r.body.id}`);
    expect(c.status, JSON.stringify(c.body)).toBe(202);
    const done = await waitOp(d.url, r.body.id, {}, 60_000);
    expect(done).toMatchObject({ state: 'failed', error: { code: 'OPERATION_CANCELLED' } });
    expect((await api(d.url, 'DELETE', `/v1/operations/${r.body.id}`)).body.error.code).toBe('OPERATION_NOT_CANCELLABLE');
    const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(vm).toMatchObject({ state: 'running', spec: { disks: [{ name: 'data', pool: 'local' }] } });
    expect(existsSync(volumeFile('fast', id))).toBe(false);
    expect((await api(d.url, 'GET', `/v1/pools/fast/volumes/${id}-data`)).status).toBe(404);
    expect(await openFiles(id)).toContain(volumeFile('local', id));
    const n = records(id).length;
    await waitUntil(() => records(id).length >= n + 5, 30_000, 'records after the cancel');
    await stopAndCheck(id, 'local');
  });

  it('daemon kill -9 mid-copy: after the restart the disk is on its volume, the target is gone, the guest never stopped writing', async () => {
    const id = await diskWriter('move-crash');
    const r = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'fast', bandwidthMBps: 2 });
    expect(r.status).toBe(202);
    await pollOp(r.body.id, (op) => op.progress.detail?.copiedBytes > 0, 60_000);
    await d.kill('SIGKILL');
    const n = records(id).length;
    await waitUntil(() => records(id).length >= n + 3, 30_000, 'the guest writing while no daemon runs');
    d = await spawnDaemon({ dataDir, args: args() });
    const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(vm).toMatchObject({ state: 'running', spec: { disks: [{ name: 'data', pool: 'local' }] } });
    expect((await api(d.url, 'GET', `/v1/operations/${r.body.id}`)).body).toMatchObject({ state: 'failed' });
    expect(existsSync(volumeFile('fast', id))).toBe(false);
    expect((await api(d.url, 'GET', `/v1/pools/fast/volumes/${id}-data`)).status).toBe(404);
    // QEMU's mirror job is gone too: a new move works.
    const again = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'fast' });
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    expect((await waitOp(d.url, again.body.id, {}, 120_000)).state).toBe('succeeded');
    await stopAndCheck(id, 'fast');
  });

  it('a stopped VM\'s disk is copied; refusals come before anything is made', async () => {
    const created = await api(d.url, 'POST', '/v1/vms', guestVm('move-cold', '', { disks: [{ name: 'data', sizeMiB: 64, format: 'qcow2' }] }));
    const id = created.body.id as string;
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6b 16M 48M', volumeFile('local', id)]);
    expect((await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'local' })).body.error.code).toBe('VM_SPEC_INVALID');
    expect((await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'nowhere' })).body.error.code).toBe('POOL_NOT_FOUND');
    expect((await api(d.url, 'POST', `/v1/vms/${id}/disks/nope/move`, { pool: 'fast' })).body.error.code).toBe('VM_SPEC_INVALID');
    // 48 MiB of data into a pool with room for 16: refused before anything is made.
    const full = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'tiny' });
    expect([full.status, full.body.error.code]).toEqual([507, 'POOL_FULL']);
    expect(readdirSync(join(dataDir, 'pools', 'tiny')).filter((f) => f !== '.novacron')).toEqual([]);
    const r = await api(d.url, 'POST', `/v1/vms/${id}/disks/data/move`, { pool: 'fast' });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect((await waitOp(d.url, r.body.id, {}, 60_000)).state).toBe('succeeded');
    expect(existsSync(volumeFile('local', id))).toBe(false);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x6b 16M 48M', volumeFile('fast', id)]);
    expect((await api(d.url, 'GET', `/v1/vms/${id}`)).body.spec.disks[0]).toMatchObject({ pool: 'fast' });
  });
});
