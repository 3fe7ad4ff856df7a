/**
 * Live migration between two real daemons (two "hosts" on one machine: own ports, own
 * data directories) with real QEMU 10 (TCG) and the test guest dirtying memory while it
 * moves. The guest itself proves the result: its heartbeat counter continues on the
 * destination without a reset, and it re-verifies every page of its working set there.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle } from '../helpers/daemon.js';
import { EventClient } from '../helpers/events.js';
import { NetNs } from '../helpers/netns.js';
import { diskRecords as guestDiskRecords, ensureQemuAndGuest, guestVm, heartbeats, installGuest, keepSerial, missingRecords, serial, waitUntil, killGuests } from '../helpers/qemu.js';

const BOOT_MS = 60_000;
const dirs: string[] = [];
const daemons: DaemonHandle[] = [];
const namespaces: NetNs[] = [];

async function host(extraArgs: string[] = [], dataDir = tempDataDir()): Promise<DaemonHandle> {
  if (!dirs.includes(dataDir)) dirs.push(dataDir);
  const d = await spawnDaemon({ dataDir, args: ['--driver', 'qemu', ...extraArgs] });
  daemons.push(d);
  await installGuest(d.url);
  return d;
}

beforeAll(() => {
  ensureQemuAndGuest();
}, 300_000);
/**
 * Each test's daemons and guests go when it ends: TCG guests left running (some dirtying
 * memory or writing disks) starve the later tests of a two-core machine.
 */
afterEach(async () => {
  await Promise.all(daemons.splice(0).map((d) => d.kill('SIGKILL')));
  for (const dir of dirs.splice(0)) {
    killGuests(dir);
    removeDir(dir);
  }
  for (const ns of namespaces.splice(0)) ns.destroy();
});

async function startGuest(d: DaemonHandle, name: string, cmdline: string): Promise<string> {
  const created = await api(d.url, 'POST', '/v1/vms', guestVm(name, cmdline));
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${created.body.id}/start`)).body.id);
  expect(op.state, JSON.stringify(op)).toBe('succeeded');
  if (cmdline.includes('verify_every')) await waitUntil(() => /VERIFY ok/.test(serial(d.dataDir, created.body.id)), BOOT_MS, 'guest up with its working set verified');
  else await waitUntil(() => heartbeats(d.dataDir, created.body.id).length >= 3, BOOT_MS, 'guest up');
  return created.body.id;
}

async function waitMigration(d: DaemonHandle, id: string, timeoutMs = 180_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api(d.url, 'GET', `/v1/migrations/${id}`);
    expect(r.status).toBe(200);
    if (r.body.state !== 'running') return r.body;
    if (Date.now() > deadline) throw new Error(`migration ${id} still running: ${JSON.stringify(r.body)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** The source still runs the VM, and its guest keeps counting. */
async function expectStillHere(d: DaemonHandle, id: string): Promise<void> {
  const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
  expect(vm.state, JSON.stringify(vm)).toBe('running');
  const n = heartbeats(d.dataDir, id).length;
  await waitUntil(() => heartbeats(d.dataDir, id).length >= n + 5, 20_000, 'heartbeats continue on the source');
}

/** Waits (up to 20 s) for a daemon across a healed link to answer: the neighbour entry takes a moment to come back. */
async function reachable(d: DaemonHandle): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await api(d.url, 'GET', '/healthz');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function expectNotThere(d: DaemonHandle, id: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await api(d.url, 'GET', `/v1/vms/${id}`)).status === 404) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect((await api(d.url, 'GET', `/v1/vms/${id}`)).status).toBe(404);
}

function diskRecords(d: DaemonHandle, id: string): number[] {
  return guestDiskRecords(d.dataDir, id);
}

/** A guest writing records to a local qcow2 disk of `sizeMiB` that `prefill` (a qemu-io command) wrote before boot. */
async function startDiskWriter(d: DaemonHandle, name: string, cmdline: string, sizeMiB: number, prefill: string): Promise<string> {
  const created = await api(d.url, 'POST', '/v1/vms', guestVm(name, `nc.disk=1 ${cmdline}`.trim(), { disks: [{ name: 'data', sizeMiB, format: 'qcow2' }] }));
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const id = created.body.id as string;
  // Not execFileSync: a gigabyte takes seconds, and a test process that blocks that long
  // finds its keep-alive connections closed by the daemon's idle timeout mid-request.
  await promisify(execFile)('qemu-io', ['-f', 'qcow2', '-c', prefill, dataVolume(d, id)]);
  expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
  await waitUntil(() => diskRecords(d, id).length >= 3, BOOT_MS, 'guest up and writing its disk');
  return id;
}

/** The file of the VM's own `data` volume in `d`'s `local` pool. */
function dataVolume(d: DaemonHandle, id: string): string {
  return join(d.dataDir, 'pools', 'local', `${id}-data`);
}

/**
 * Stops the VM on `d` and checks its disk image holds every record the guest reported
 * (on any host: numbering continues across a migration). Returns the image's bytes.
 */
async function stopAndCheckRecords(d: DaemonHandle, id: string): Promise<Buffer> {
  expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
  const last = Math.max(...diskRecords(d, id));
  const raw = join(d.dataDir, 'check.raw');
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', dataVolume(d, id), raw]);
  const image = readFileSync(raw);
  expect(missingRecords(image, last), `records missing from the disk (of ${last})`).toEqual([]);
  return image;
}

describe('live migration (real QEMU, two daemons)', { timeout: 300_000 }, () => {
  it('moves a guest that dirties memory: heartbeat continues, working set verifies, pages went through the codec', async () => {
    const a = await host();
    const b = await host();
    const id = await startGuest(a, 'mig-1', 'nc.dirty_mib=32 nc.rate=8 nc.model=half nc.verify_every=1');
    const ev = await EventClient.connect(a.url, '?types=migration.*');

    const dry = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, dryRun: true });
    expect(dry.status, JSON.stringify(dry.body)).toBe(200);
    expect(dry.body.prediction).toMatchObject({ converges: expect.any(Boolean), totalMs: expect.any(Number) });
    expect(dry.body.prediction.inputs.memoryBytes).toBeGreaterThan(32 << 20); // the 32 MiB working set is not zero
    expect(dry.body.prediction.inputs.memoryBytes).toBeLessThanOrEqual(256 << 20);
    expect(dry.body.prediction.inputs.firstRatio).toBeGreaterThan(1); // measured on the guest's own non-zero pages

    const started = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs: 300, force: true });
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    expect(started.headers.get('location')).toBe(`/v1/migrations/${started.body.id}`);
    expect((await api(a.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('migrating');
    expect((await api(a.url, 'POST', `/v1/vms/${id}/pause`)).body.error.code).toBe('VM_BUSY');
    // The source's log goes with the VM's directory once it has moved: keep what it said.
    const sourceLog = keepSerial(a.dataDir, id);
    const lastBefore = () => [...sourceLog.text().matchAll(/^HB (\d+) /gm)].map((m) => Number(m[1])).at(-1)!;

    const done = await waitMigration(a, started.body.id);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed', phase: 'done', role: 'source', downtimeMs: { qemu: expect.any(Number), measured: expect.any(Number) } });
    expect(done.progress.bytesWire).toBeGreaterThan(0);
    expect(done.progress.bytesRaw / done.progress.bytesWire).toBeGreaterThan(1.2);
    // QEMU's limit stepped from an eighth of the 300 ms target, never past it.
    expect(done.progress.downtimeLimitMs).toBeGreaterThanOrEqual(37);
    expect(done.progress.downtimeLimitMs).toBeLessThanOrEqual(300);

    // Gone from the source, running on the destination under the same id.
    await expectNotThere(a, id);
    const moved = (await api(b.url, 'GET', `/v1/vms/${id}`)).body;
    expect(moved).toMatchObject({ state: 'running', name: 'mig-1' });
    expect(moved.incoming).toBeUndefined();
    const incoming = (await api(b.url, 'GET', `/v1/migrations/${started.body.id}`)).body;
    expect(incoming).toMatchObject({ role: 'destination', state: 'completed' });

    // The guest's own evidence: the counter continues (no reboot) and the working set
    // re-verifies after it arrived.
    await waitUntil(() => heartbeats(b.dataDir, id).length >= 10, 30_000, 'heartbeats on the destination');
    const there = heartbeats(b.dataDir, id);
    const last = lastBefore();
    sourceLog.stop();
    expect(there[0]).toBeGreaterThan(0);
    expect(there[0]!).toBeLessThanOrEqual(last + 1);
    expect(there[0]!).toBeGreaterThanOrEqual(last - 2);
    for (let i = 1; i < there.length; i++) expect(there[i]).toBe(there[i - 1]! + 1);
    expect(serial(b.dataDir, id)).not.toMatch(/NOVACRON-GUEST up/);
    await waitUntil(() => /VERIFY ok/.test(serial(b.dataDir, id)), 30_000, 'working set verified on the destination');
    expect(serial(b.dataDir, id)).not.toContain('VERIFY FAIL');

    await ev.waitFor((c) => c.events.some((e) => e.type === 'migration.completed'));
    const types = ev.events.map((e) => e.type);
    expect(types[0]).toBe('migration.started');
    expect(types).toContain('migration.progress');
    expect(types.at(-1)).toBe('migration.completed');
    ev.close();

    // And back again, over the same path in the other direction.
    const back = await api(b.url, 'POST', `/v1/vms/${id}/migrate`, { target: a.url, targetToken: a.token, maxDowntimeMs: 300, force: true });
    expect(back.status, JSON.stringify(back.body)).toBe(202);
    expect(await waitMigration(b, back.body.id)).toMatchObject({ state: 'completed' });
    await expectNotThere(b, id);
    expect((await api(a.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('running');
  });

  it('without force, the plan decides: a guest it predicts within maxDowntimeMs migrates and its measured stop→resume is within it; one dirtying faster than the link carries is refused with 422 and keeps running', async () => {
    const a = await host();
    const b = await host();
    const maxDowntimeMs = 300;
    // Accepted: a small working set, dirtied slowly.
    const calm = await startGuest(a, 'mig-calm', 'nc.dirty_mib=8 nc.rate=1 nc.model=half nc.verify_every=1');
    const plan = await api(a.url, 'POST', `/v1/vms/${calm}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs, dryRun: true });
    expect(plan.status, JSON.stringify(plan.body)).toBe(200);
    expect(plan.body.prediction.converges, JSON.stringify(plan.body.prediction)).toBe(true);
    expect(plan.body.prediction.downtimeMs).toBeLessThanOrEqual(maxDowntimeMs);
    const started = await api(a.url, 'POST', `/v1/vms/${calm}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs });
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    const done = await waitMigration(a, started.body.id);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed', policy: { force: false, maxDowntimeMs } });
    expect(done.downtimeMs.measured, JSON.stringify(done.downtimeMs)).toBeLessThanOrEqual(maxDowntimeMs);
    await expectNotThere(a, calm);
    await waitUntil(() => /VERIFY ok/.test(serial(b.dataDir, calm)), 30_000, 'working set verified on the destination');

    // Refused: 64 MiB dirtied at 64 MiB/s over a 1 MB/s link, throttling allowed only to 10%.
    const busy = await startGuest(a, 'mig-busy', 'nc.dirty_mib=64 nc.rate=64 nc.model=random');
    const refused = await api(a.url, 'POST', `/v1/vms/${busy}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs, bandwidthMBps: 1, maxThrottlePercent: 10 });
    expect(refused.status, JSON.stringify(refused.body)).toBe(422);
    expect(refused.body.error.code).toBe('MIGRATION_WONT_CONVERGE');
    const why = refused.body.error.details.prediction;
    expect(why.inputs.dirtyBytesPerSec, 'the dirty rate was measured on the guest').toBeGreaterThan(8 << 20);
    expect(why.converges === false || why.downtimeMs > maxDowntimeMs, JSON.stringify(why)).toBe(true);
    const migrations = (await api(a.url, 'GET', '/v1/migrations')).body.items as Array<{ vmId: string }>;
    expect(migrations.filter((m) => m.vmId === busy)).toEqual([]);
    await expectStillHere(a, busy);
  });

  it('live storage migration: a guest writing to its local disk moves with it; every record it fsynced is in the destination image', async () => {
    const a = await host();
    const b = await host();
    // Data that was on the disk before the VM started must come along too.
    const id = await startDiskWriter(a, 'mig-disk', 'nc.dirty_mib=8 nc.rate=2 nc.model=half nc.verify_every=1', 64, 'write -P 0xcd 8M 2M');
    const records = (d: DaemonHandle) => diskRecords(d, id);
    await waitUntil(() => /VERIFY ok/.test(serial(a.dataDir, id)), BOOT_MS, 'working set verified');
    // The dry run counts the disk copy: at least the 2 MiB written above.
    const dry = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, dryRun: true });
    expect(dry.body.prediction.inputs.diskBytes).toBeGreaterThanOrEqual(2 << 20);
    expect(dry.body.prediction.diskMs).toBeGreaterThan(0);

    const sourceLog = keepSerial(a.dataDir, id);
    const started = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs: 300, force: true });
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    const done = await waitMigration(a, started.body.id);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed', role: 'source' });
    // The source's copy of the VM is gone: its directory and its volume (the destination has them now).
    await waitUntil(() => !existsSync(join(a.dataDir, 'vms', id)) && !existsSync(dataVolume(a, id)), 10_000, 'the source to remove its copy');
    sourceLog.stop();
    expect(done.progress.storageTotalBytes).toBeGreaterThan(0);
    expect(done.progress.storageCopiedBytes).toBe(done.progress.storageTotalBytes);
    await expectNotThere(a, id);
    expect((await api(b.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('running');

    // The guest goes on writing on the destination, without a reboot.
    const lastOnSource = Math.max(...[...sourceLog.text().matchAll(/^DISK (\d+)/gm)].map((m) => Number(m[1])));
    await waitUntil(() => records(b).length >= 5, 30_000, 'disk records on the destination');
    expect(serial(b.dataDir, id)).not.toMatch(/NOVACRON-GUEST up/);
    expect(records(b)[0]).toBeLessThanOrEqual(lastOnSource + 1);
    // Every record the guest reported as fsynced, on either host, is in the destination's image.
    const image = await stopAndCheckRecords(b, id);
    expect(image.subarray(8 << 20, 10 << 20).every((x) => x === 0xcd)).toBe(true);
  });

  it('live migration with the disk in a shared pool: nothing is copied, the destination opens the same volume, every fsynced record is there', async () => {
    const shared = tempDataDir();
    dirs.push(shared);
    const cfg = join(shared, 'config.json');
    writeFileSync(cfg, JSON.stringify({ pools: [{ name: 'nfs', path: join(shared, 'pool'), shared: true }] }));
    const a = await host(['--config', cfg]);
    const b = await host(['--config', cfg]);
    const created = await api(a.url, 'POST', '/v1/vms', guestVm('mig-shared', 'nc.disk=1', { disks: [{ name: 'data', pool: 'nfs', sizeMiB: 64, format: 'qcow2' }] }));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    const volume = join(shared, 'pool', `${id}-data`);
    expect((await waitOp(a.url, (await api(a.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => diskRecords(a, id).length >= 3, BOOT_MS, 'guest writing its disk');
    const sourceLog = keepSerial(a.dataDir, id);
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, maxDowntimeMs: 300, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const done = await waitMigration(a, r.body.id);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'completed' });
    expect(done.progress.storageTotalBytes ?? 0).toBe(0); // no disk mirror
    sourceLog.stop();
    // The one volume is still there and still the VM's, now on the destination.
    expect(existsSync(volume)).toBe(true);
    expect((await api(b.url, 'GET', `/v1/pools/nfs/volumes/${id}-data`)).body).toMatchObject({ owner: id });
    const n = diskRecords(b, id).length;
    await waitUntil(() => diskRecords(b, id).length >= n + 3, 30_000, 'records on the destination');
    expect((await waitOp(b.url, (await api(b.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
    const last = Math.max(...diskRecords(b, id));
    const raw = join(shared, 'check.raw');
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', volume, raw]);
    expect(missingRecords(readFileSync(raw), last)).toEqual([]);
  });

  it('cancel while the disks are being mirrored: the VM and its disk stay on the source, untouched', async () => {
    const a = await host();
    const b = await host();
    // A gigabyte of data makes the mirror take long enough to cancel it in flight.
    const id = await startDiskWriter(a, 'mig-disk-cancel', '', 1024, 'write -P 0x5a 16M 1000M');
    const records = () => diskRecords(a, id);

    const started = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, force: true });
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    for (let i = 0; ; i++) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${started.body.id}`)).body;
      if ((m.progress?.storageCopiedBytes ?? 0) > 0) break;
      if (m.state !== 'running' || i > 3000) throw new Error(`the mirror never started copying: ${JSON.stringify(m)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await api(a.url, 'DELETE', `/v1/migrations/${started.body.id}`)).status).toBeLessThan(300);
    const done = await waitMigration(a, started.body.id);
    expect(done, JSON.stringify(done)).toMatchObject({ state: 'cancelled' });
    expect(done.progress.storageCopiedBytes).toBeLessThan(done.progress.storageTotalBytes);

    await expectStillHere(a, id);
    const n = records().length;
    await waitUntil(() => records().length >= n + 3, 20_000, 'the guest keeps writing its disk on the source');
    await expectNotThere(b, id);
    expect((await waitOp(a.url, (await api(a.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
    await promisify(execFile)('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 16M 1000M', dataVolume(a, id)]);
  });

  it('cold migration: a checkpointed VM moves with its disk and RAM state, and resumes on the target where it stopped', async () => {
    const a = await host();
    const b = await host();
    const created = await api(a.url, 'POST', '/v1/vms', guestVm('mig-cold', 'nc.dirty_mib=8 nc.rate=2 nc.model=sparse nc.verify_every=1', { disks: [{ name: 'data', sizeMiB: 64, format: 'qcow2' }] }));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const id = created.body.id as string;
    const diskA = dataVolume(a, id);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 2M', diskA]);
    expect((await waitOp(a.url, (await api(a.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => /VERIFY ok/.test(serial(a.dataDir, id)), BOOT_MS, 'guest up');
    expect((await waitOp(a.url, (await api(a.url, 'POST', `/v1/vms/${id}/checkpoint`)).body.id)).state).toBe('succeeded');
    const last = heartbeats(a.dataDir, id).at(-1)!;

    const dry = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, dryRun: true });
    expect(dry.body.prediction.inputs.memoryBytes).toBeGreaterThan(2 << 20); // disk + checkpoint bytes
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const m = await waitMigration(a, r.body.id, 60_000);
    expect(m, JSON.stringify(m)).toMatchObject({ mode: 'cold', state: 'completed' });
    expect(m.progress.bytesRaw).toBe(m.progress.totalBytes);
    await expectNotThere(a, id);
    expect(existsSync(join(a.dataDir, 'vms', id))).toBe(false);
    const there = (await api(b.url, 'GET', `/v1/vms/${id}`)).body;
    expect(there).toMatchObject({ state: 'stopped', checkpoint: { path: join(b.dataDir, 'vms', id, 'checkpoint.state') } });
    // The disk's data came along, byte for byte.
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0xab 1M 2M', dataVolume(b, id)]);
    // And the guest resumes from its checkpoint on the target: no reboot, counter continues.
    expect((await waitOp(b.url, (await api(b.url, 'POST', `/v1/vms/${id}/restore`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => heartbeats(b.dataDir, id).length >= 5, 30_000, 'heartbeats on the target');
    expect(heartbeats(b.dataDir, id)[0]).toBe(last + 1);
    await waitUntil(() => /VERIFY ok/.test(serial(b.dataDir, id)), 30_000, 'working set verified on the target');
    expect(serial(b.dataDir, id)).not.toContain('VERIFY FAIL');
  });

  it('rejects bad requests with stable codes and leaves the VM running', async () => {
    const a = await host();
    const id = await startGuest(a, 'mig-bad', '');
    const bad = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: 'not a url' });
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('VALIDATION_FAILED');
    expect((await api(a.url, 'POST', `/v1/vms/nope/migrate`, { target: 'http://127.0.0.1:1', targetToken: 'x'.repeat(16) })).body.error.code).toBe('VM_NOT_FOUND');
    expect((await api(a.url, 'GET', '/v1/migrations/mig-000000000000000000000000')).body.error.code).toBe('MIGRATION_NOT_FOUND');

    // Nothing listens on port 1: the target is unreachable; the VM stays, running.
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: 'http://127.0.0.1:1', targetToken: 'x'.repeat(16), force: true });
    expect(r.status).toBe(202);
    const failed = await waitMigration(a, r.body.id, 30_000);
    expect(failed).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TARGET_UNREACHABLE' } });
    expect((await api(a.url, 'DELETE', `/v1/migrations/${r.body.id}`)).body.error.code).toBe('MIGRATION_NOT_ACTIVE');
    await expectStillHere(a, id);

    // A name the target already uses: the target refuses, nothing changes on either side.
    const b = await host();
    const clash = await api(b.url, 'POST', '/v1/vms', guestVm('mig-bad', ''));
    expect(clash.status).toBe(201);
    const r2 = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, force: true });
    const refused = await waitMigration(a, r2.body.id, 30_000);
    expect(refused).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TARGET_REJECTED' } });
    expect(refused.error.message).toContain('VM_NAME_CONFLICT');
    await expectStillHere(a, id);
    expect((await api(b.url, 'GET', `/v1/vms/${clash.body.id}`)).body.state).toBe('stopped');
  });

  it('cancel mid-flight leaves the VM running on the source and nothing on the destination', async () => {
    const a = await host();
    const b = await host();
    const id = await startGuest(a, 'mig-cancel', 'nc.dirty_mib=64 nc.rate=4 nc.model=random nc.verify_every=1');
    // 2 MB/s on the wire: 64 MiB of random pages take ~30 s, plenty of time to cancel.
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 2, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    for (let i = 0; i < 100; i++) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body;
      if (m.phase === 'precopy' && m.progress.bytesWire > 1 << 20) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    const during = (await api(b.url, 'GET', `/v1/vms/${id}`)).body;
    expect(during).toMatchObject({ state: 'migrating', incoming: { migrationId: r.body.id } });
    expect((await api(a.url, 'DELETE', `/v1/migrations/${r.body.id}`)).status).toBe(202);
    expect(await waitMigration(a, r.body.id, 30_000)).toMatchObject({ state: 'cancelled', error: { code: 'MIGRATION_CANCELLED' } });
    await expectStillHere(a, id);
    await expectNotThere(b, id);
    expect((await api(b.url, 'GET', `/v1/migrations/${r.body.id}`)).body.state).toBe('failed');
    await waitUntil(() => /VERIFY ok/.test(serial(a.dataDir, id).slice(-4000)), 20_000, 'source working set still verifies');
    expect(serial(a.dataDir, id)).not.toContain('VERIFY FAIL');
  });

  it('a forced migration throttles the vCPU no higher than maxThrottlePercent', async () => {
    const a = await host();
    const b = await host();
    // 8 MiB of random pages re-dirtied at 64 MiB/s over an 8 MB/s link never converges, so
    // QEMU's auto-converge keeps stepping the throttle up each round (about every second).
    const id = await startGuest(a, 'mig-throttle', 'nc.dirty_mib=8 nc.rate=64 nc.model=random');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 8, maxThrottlePercent: 20, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    const seen: number[] = [];
    const deadline = Date.now() + 60_000;
    // The throttle steps up every 2–3.5 s here; 6 s at the ceiling shows it is held there.
    while (seen.filter((t) => t >= 20).length < 12 && Date.now() < deadline) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body;
      expect(m.state, JSON.stringify(m)).toBe('running');
      seen.push(m.progress.throttlePercent);
      await new Promise((res) => setTimeout(res, 500));
    }
    expect(Math.max(...seen), JSON.stringify(seen)).toBe(20);
    expect((await api(a.url, 'DELETE', `/v1/migrations/${r.body.id}`)).status).toBe(202);
    expect(await waitMigration(a, r.body.id, 30_000)).toMatchObject({ state: 'cancelled' });
    await expectStillHere(a, id);
    expect((await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, maxThrottlePercent: 100 })).body.error.code).toBe('VALIDATION_FAILED');
  });

  it('a corrupt page frame is refused by the destination; the VM stays on the source', async () => {
    const cfg = join(tempDataDir(), 'faults.json');
    dirs.push(join(cfg, '..'));
    writeFileSync(cfg, JSON.stringify({ faults: { corruptMigrationFrame: 5 } }));
    const a = await host(['--config', cfg]);
    const b = await host();
    const id = await startGuest(a, 'mig-corrupt', 'nc.dirty_mib=16 nc.rate=4 nc.model=text nc.verify_every=1');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, force: true });
    expect(r.status).toBe(202);
    const m = await waitMigration(a, r.body.id, 60_000);
    expect(m, JSON.stringify(m)).toMatchObject({ state: 'failed', error: { code: 'CODEC_CHECKSUM' } });
    await expectStillHere(a, id);
    await expectNotThere(b, id);
    expect(serial(a.dataDir, id)).not.toContain('VERIFY FAIL');
  });

  it('network cut mid-flight (the data link dies, both daemons live): the VM stays on the source, the destination cleans up, and a retry over a healthy link succeeds', async () => {
    const cfg = join(tempDataDir(), 'faults.json');
    dirs.push(join(cfg, '..'));
    writeFileSync(cfg, JSON.stringify({ faults: { cutMigrationLinkAfterMiB: 4 } }));
    const aDir = tempDataDir();
    let a = await host(['--config', cfg], aDir);
    const b = await host();
    const id = await startGuest(a, 'mig-cut', 'nc.dirty_mib=16 nc.rate=4 nc.model=text nc.verify_every=1');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, force: true });
    expect(r.status).toBe(202);
    const m = await waitMigration(a, r.body.id, 60_000);
    expect(m, JSON.stringify(m)).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TRANSPORT' } });
    expect(m.progress.bytesWire).toBeGreaterThanOrEqual(4 << 20);
    await expectStillHere(a, id);
    await expectNotThere(b, id);
    expect(await waitMigration(b, r.body.id, 30_000)).toMatchObject({ state: 'failed' });
    // The source daemon restarts without the fault (the guest runs on meanwhile); the retry goes through.
    await a.kill('SIGKILL');
    a = await host([], aDir);
    await expectStillHere(a, id);
    const again = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, force: true });
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    expect(await waitMigration(a, again.body.id, 120_000)).toMatchObject({ state: 'completed' });
    await waitUntil(() => /VERIFY ok/.test(serial(b.dataDir, id).slice(-4000)), 30_000, 'working set verifies on the destination');
    expect(serial(b.dataDir, id)).not.toContain('VERIFY FAIL');
  });

  it('network blackholed mid-flight (every packet dropped, nothing closed): the migration fails with MIGRATION_TRANSPORT within the link\'s 10 s liveness timeout plus 10 s, the guest runs on at the source, and the destination drops its half on its own', async () => {
    // The destination is another "host" in a network namespace, reached over a veth pair;
    // its API is HTTPS (not loopback) with its own cluster's CA, which the source trusts.
    const ns = NetNs.create();
    namespaces.push(ns);
    const bDir = tempDataDir();
    dirs.push(bDir);
    const b = await spawnDaemon({ dataDir: bDir, netns: ns.name, host: ns.ip, args: ['--driver', 'qemu'] });
    daemons.push(b);
    await installGuest(b.url);
    const a = await host(['--trust-ca-file', join(bDir, 'tls', 'ca.pem')]);
    const id = await startGuest(a, 'mig-blackhole', 'nc.dirty_mib=64 nc.rate=4 nc.model=random');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 2, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    for (let i = 0; ; i++) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body;
      if (m.progress?.bytesWire > 2 << 20) break;
      if (m.state !== 'running' || i > 1200) throw new Error(`the migration never got going: ${JSON.stringify(m)}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    ns.blackhole();
    const cut = Date.now();
    const m = await waitMigration(a, r.body.id, 60_000);
    const tookMs = Date.now() - cut;
    expect(m, JSON.stringify(m)).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TRANSPORT' } });
    expect(tookMs, m.error.message).toBeLessThan(20_000);
    await expectStillHere(a, id);
    // The destination heard nothing either: it gave up by itself, which shows once it can be asked.
    ns.heal();
    expect(await waitMigration(b, r.body.id, 30_000)).toMatchObject({ state: 'failed' });
    await expectNotThere(b, id);
  });

  it("a direct stream (QEMU to QEMU over TLS) blackholed mid-flight: the source fails it with MIGRATION_TRANSPORT once QEMU's stream has moved nothing for 10 s, within 20 s of the cut; the guest runs on at the source, and the destination, whose control connection fell silent, drops its half on its own", async () => {
    // A direct stream needs a member of the source's cluster as the target: A and a third
    // member C on this side keep the quorum, B (the destination) is across the veth pair.
    const ns = NetNs.create();
    namespaces.push(ns);
    const member = async (at: string, netns?: string, join?: { peer: string; caHash: string }, driver = 'qemu'): Promise<DaemonHandle> => {
      const dataDir = tempDataDir();
      dirs.push(dataDir);
      const args = ['--driver', driver, '--api-tls', 'on', '--peer-listen', `${at}:0`, '--cluster-secret', 'migration-test-cluster-secret-0123', ...(join ? ['--join', join.peer, '--ca-hash', join.caHash] : [])];
      const d = await spawnDaemon({ dataDir, host: at, args, ...(netns ? { netns } : {}) });
      daemons.push(d);
      return d;
    };
    const a = await member(ns.hostIp);
    const joinA = { peer: `${ns.hostIp}:${a.peerPort}`, caHash: (await api(a.url, 'GET', '/v1/cluster')).body.caHash };
    await member(ns.hostIp, undefined, joinA, 'sim');
    const b = await member(ns.ip, ns.name, joinA);
    await installGuest(a.url);
    await installGuest(b.url);
    const bId = (await api(b.url, 'GET', '/v1/cluster')).body.id;
    for (let i = 0; (await api(a.url, 'GET', '/v1/cluster')).body.voters?.length !== 3; i++) {
      if (i > 300) throw new Error('the three members never all voted');
      await new Promise((res) => setTimeout(res, 100));
    }
    const id = await startGuest(a, 'mig-direct-blackhole', 'nc.dirty_mib=64 nc.rate=4 nc.model=random');
    // Capped (QEMU's own max-bandwidth) so the cut lands mid-stream.
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: String(bId), transport: 'direct', bandwidthMBps: 2, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    expect(r.body.transport).toBe('direct');
    for (let i = 0; ; i++) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body;
      if (m.progress?.bytesRaw > 2 << 20) break;
      if (m.state !== 'running' || i > 1200) throw new Error(`the migration never got going: ${JSON.stringify(m)}`);
      await new Promise((res) => setTimeout(res, 50));
    }
    ns.blackhole();
    const cut = Date.now();
    const m = await waitMigration(a, r.body.id, 60_000);
    const tookMs = Date.now() - cut;
    expect(m, JSON.stringify(m)).toMatchObject({ state: 'failed', transport: 'direct', error: { code: 'MIGRATION_TRANSPORT' } });
    expect(m.error.message).toMatch(/moved nothing for \d+ ms/);
    expect(tookMs, m.error.message).toBeLessThan(20_000);
    await expectStillHere(a, id);
    ns.heal();
    await reachable(b);
    const gone = await waitMigration(b, r.body.id, 30_000);
    expect(gone, JSON.stringify(gone)).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TRANSPORT' } });
    expect(gone.error.message).toMatch(/nothing arrived from the source/);
    // (In a cluster every member answers for every VM: B's own half is its VM directory.)
    await waitUntil(() => !existsSync(join(b.dataDir, 'vms', id)), 10_000, "the destination's half removed");
    const aId = (await api(a.url, 'GET', '/v1/cluster')).body.id;
    const placed = (await api(b.url, 'GET', '/v1/cluster/vms')).body.items.find((p: { vmId: string }) => p.vmId === id);
    expect(placed?.member).toBe(aId);
  });

  it('destination daemon killed mid-flight: source keeps the VM; the restarted destination has no trace of it', async () => {
    const a = await host();
    const bDir = tempDataDir();
    const b = await host([], bDir);
    const id = await startGuest(a, 'mig-dkill', 'nc.dirty_mib=64 nc.rate=4 nc.model=random');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 2, force: true });
    expect(r.status).toBe(202);
    for (let i = 0; i < 100; i++) {
      if ((await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body.progress.bytesWire > 1 << 20) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    await b.kill('SIGKILL');
    expect(await waitMigration(a, r.body.id, 60_000)).toMatchObject({ state: 'failed', error: { code: 'MIGRATION_TRANSPORT' } });
    await expectStillHere(a, id);
    const b2 = await host([], bDir);
    await expectNotThere(b2, id);
    expect((await api(b2.url, 'GET', `/v1/migrations/${r.body.id}`)).body.state).toBe('failed');
  });

  it('destination daemon killed while the disks are mirrored: the source keeps the VM and its disk, and a later migration elsewhere carries every record', async () => {
    const a = await host();
    const bDir = tempDataDir();
    const b = await host([], bDir);
    const c = await host();
    const id = await startDiskWriter(a, 'mig-disk-kill', '', 1024, 'write -P 0x5a 16M 1000M');
    // Capped at 20 MB/s, the gigabyte takes long enough to kill the destination mid-copy.
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 20, force: true });
    expect(r.status, JSON.stringify(r.body)).toBe(202);
    for (let i = 0; ; i++) {
      const m = (await api(a.url, 'GET', `/v1/migrations/${r.body.id}`)).body;
      if ((m.progress?.storageCopiedBytes ?? 0) > 1 << 20) break;
      if (m.state !== 'running' || i > 3000) throw new Error(`the mirror never got going: ${JSON.stringify(m)}`);
      await new Promise((res) => setTimeout(res, 20));
    }
    await b.kill('SIGKILL');
    expect(await waitMigration(a, r.body.id, 60_000)).toMatchObject({ state: 'failed' });
    await expectStillHere(a, id);
    const b2 = await host([], bDir);
    await expectNotThere(b2, id);

    const again = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: c.url, targetToken: c.token, force: true });
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    const moved = await waitMigration(a, again.body.id);
    expect(moved, JSON.stringify(moved)).toMatchObject({ state: 'completed' });
    await waitUntil(() => diskRecords(c, id).length >= 3, 30_000, 'disk records on the new host');
    const image = await stopAndCheckRecords(c, id);
    expect(image.subarray(16 << 20, (16 << 20) + (1000 << 20)).every((x) => x === 0x5a)).toBe(true);
  });

  it('source daemon killed mid-flight: the guest keeps running there; the restarted source reattaches and records the failure', async () => {
    const aDir = tempDataDir();
    const a = await host([], aDir);
    const b = await host();
    const id = await startGuest(a, 'mig-skill', 'nc.dirty_mib=64 nc.rate=4 nc.model=random');
    const r = await api(a.url, 'POST', `/v1/vms/${id}/migrate`, { target: b.url, targetToken: b.token, bandwidthMBps: 2, force: true });
    expect(r.status).toBe(202);
    await new Promise((res) => setTimeout(res, 3000));
    await a.kill('SIGKILL');
    const n = heartbeats(aDir, id).length;
    await waitUntil(() => heartbeats(aDir, id).length >= n + 5, 20_000, 'guest keeps running without its daemon');
    const a2 = await host([], aDir);
    expect((await api(a2.url, 'GET', `/v1/migrations/${r.body.id}`)).body).toMatchObject({ state: 'failed' });
    await expectStillHere(a2, id);
    await expectNotThere(b, id);
  });
});
