/**
 * The QEMU driver against real QEMU (TCG here: /dev/kvm on these machines is a PVM
 * device that cannot boot a normal guest) and a real Linux guest that prints a
 * heartbeat counter on its serial console every 100 ms.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle, wsTls } from '../helpers/daemon.js';
import { ensureQemuAndGuest, guestVm, heartbeats, installGuest, serial, waitUntil, killGuests } from '../helpers/qemu.js';
import { EventClient } from '../helpers/events.js';

const BOOT_MS = 60_000;
let d: DaemonHandle;
let dataDir: string;

beforeAll(async () => {
  ensureQemuAndGuest();
  dataDir = tempDataDir();
  d = await spawnDaemon({ dataDir, args: ['--driver', 'qemu'] });
  await installGuest(d.url);
}, 300_000);

/** Where the daemon's `local` pool keeps a VM's own volume for `disk`. */
const ownVolume = (dir: string, vmId: string, disk: string) => join(dir, 'pools', 'local', `${vmId}-${disk}`);
afterAll(async () => {
  await d?.kill();
  killGuests(dataDir);
  removeDir(dataDir);
});

async function startVm(name: string, cmdline = '', extra: Record<string, unknown> = {}) {
  const created = await api(d.url, 'POST', '/v1/vms', guestVm(name, cmdline, extra));
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${created.body.id}/start`)).body.id);
  expect(op.state, JSON.stringify(op)).toBe('succeeded');
  return created.body.id as string;
}


/** Whether `pid` is a live process (a zombie has exited; only its entry waits to be reaped). */
function processRuns(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('qemu driver', { timeout: 180_000 }, () => {
  it('boots the guest (accelerator reported), pauses and resumes it without resetting the heartbeat', async () => {
    const id = await startVm('hb-1');
    const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(vm.state).toBe('running');
    // The probe's answer for this host: no vmx/svm (or no /dev/kvm) means TCG, saying why;
    // with them, KVM only if the probe guest ran under it.
    const hardware = /\b(vmx|svm)\b/.test(readFileSync('/proc/cpuinfo', 'utf8')) && existsSync('/dev/kvm');
    if (!hardware) expect(vm.runtime).toMatchObject({ accelerator: 'tcg', accelReason: expect.stringMatching(/vmx\/svm|missing or not accessible/) });
    else expect(vm.runtime.accelReason).toMatch(vm.runtime.accelerator === 'kvm' ? /KVM executed the probe guest/ : /KVM probe guest did not run/);
    expect(vm.runtime.qemu).toMatch(/^\d+\.\d+\.\d+$/);
    await waitUntil(() => heartbeats(dataDir, id).length >= 5, BOOT_MS, 'heartbeats');

    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/pause`)).body.id)).state).toBe('succeeded');
    await new Promise((r) => setTimeout(r, 300)); // let the last in-flight line land
    const atPause = heartbeats(dataDir, id).length;
    await new Promise((r) => setTimeout(r, 1500));
    expect(heartbeats(dataDir, id).length).toBe(atPause); // stopped while paused

    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/resume`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => heartbeats(dataDir, id).length >= atPause + 5, 20_000, 'heartbeats after resume');
    const hb = heartbeats(dataDir, id);
    for (let i = 1; i < hb.length; i++) expect(hb[i]).toBe(hb[i - 1]! + 1); // one boot, no reset, no gap in the counter
  });

  it('runs QEMU under its seccomp sandbox with no_new_privs (no fork/exec, no setuid, no resource control)', async () => {
    const id = await startVm('sandboxed');
    const pid = Number(readFileSync(join(dataDir, 'vms', id, 'qemu.pid'), 'utf8'));
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    expect(status).toMatch(/^Seccomp:\s+2$/m); // filter mode
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).toContain('on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id);
  });

  it('streams the serial console over a WebSocket while still logging it', async () => {
    const id = await startVm('console-1');
    await waitUntil(() => heartbeats(dataDir, id).length >= 2, BOOT_MS, 'boot');
    const { default: WebSocket } = await import('ws');
    const ws = new WebSocket(`${d.url.replace('http', 'ws')}/v1/vms/${id}/console`, { ...wsTls(d.url), headers: authHeaders(d.url) });
    let text = '';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      expect(isBinary).toBe(true);
      text += data.toString('latin1');
    });
    await new Promise((r, j) => { ws.once('open', r); ws.once('error', j); });
    ws.send(Buffer.from('\n'));
    await waitUntil(() => /HB \d+ \d+\r?\n.*HB \d+ \d+/s.test(text), 10_000, 'console output');
    const before = heartbeats(dataDir, id).length;
    await waitUntil(() => heartbeats(dataDir, id).length > before + 3, 10_000, 'log keeps growing while a viewer is attached');
    ws.close();

    // Live statistics: vCPU time from /proc, RSS, block stats; also in /metrics.
    const stats = await api(d.url, 'GET', `/v1/vms/${id}/stats`);
    expect(stats.status).toBe(200);
    expect(stats.body.cpuSeconds).toBeGreaterThan(0);
    expect(stats.body.memoryRssBytes).toBeGreaterThan(16 << 20);
    const metrics = (await api(d.url, 'GET', '/metrics')).body as string;
    expect(metrics).toMatch(new RegExp(`novacron_vm_cpu_seconds\\{vm="${id}",name="console-1"\\} [0-9.]+`));
    expect(metrics).toMatch(new RegExp(`novacron_vm_memory_rss_bytes\\{vm="${id}",name="console-1"\\} \\d+`));
    // The display: the VNC bridge speaks RFB (QEMU's server greets with its version).
    const vnc = new WebSocket(`${d.url.replace('http', 'ws')}/v1/vms/${id}/vnc`, { ...wsTls(d.url), headers: authHeaders(d.url) });
    const banner = await new Promise<string>((r, j) => {
      vnc.once('message', (data: Buffer) => r(data.toString('latin1')));
      vnc.once('error', j);
    });
    expect(banner).toMatch(/^RFB 003\.00\d\n/);
    vnc.close();

    // The same figures stream as telemetry frames.
    const tele = await EventClient.connect(d.url, '', {}, `/v1/telemetry?vmId=${id}`);
    await tele.waitFor((c) => c.frames.some((f) => f.type === 'samples' && f.samples.length === 1), 10_000);
    const sample = tele.frames.find((f) => f.type === 'samples' && f.samples.length === 1).samples[0];
    expect(sample).toMatchObject({ vmId: id, name: 'console-1', stats: { cpuSeconds: expect.any(Number) } });
    tele.close();
    const unknown = new WebSocket(`${d.url.replace('http', 'ws')}/v1/vms/nope/console`, { ...wsTls(d.url), headers: authHeaders(d.url) });
    const status = await new Promise((r) => unknown.once('unexpected-response', (_q, res) => r(res.statusCode)));
    expect(status).toBe(404);
  });

  it('checkpoints and restores: the heartbeat continues from where it was, not from zero', async () => {
    const id = await startVm('ckpt-1', 'nc.dirty_mib=16 nc.rate=4 nc.model=sparse nc.verify_every=1');
    await waitUntil(() => heartbeats(dataDir, id).length >= 20, BOOT_MS, 'boot');
    const ck = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/checkpoint`)).body.id);
    expect(ck, JSON.stringify(ck)).toMatchObject({ state: 'succeeded', result: { sizeBytes: expect.any(Number) } });
    const saved = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(saved).toMatchObject({ state: 'stopped', checkpoint: { path: ck.result.path } });
    expect(existsSync(ck.result.path)).toBe(true);
    const last = heartbeats(dataDir, id).at(-1)!;
    const boots = (serial(dataDir, id).match(/NOVACRON-GUEST up/g) ?? []).length;

    const restored = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/restore`)).body.id);
    expect(restored).toMatchObject({ state: 'succeeded', result: { restoredFrom: ck.result.path } });
    await waitUntil(() => heartbeats(dataDir, id).length >= 30, 20_000, 'heartbeats after restore');
    const hb = heartbeats(dataDir, id);
    const afterIdx = hb.lastIndexOf(last);
    expect(hb[afterIdx + 1]).toBe(last + 1); // continues, no reset
    expect((serial(dataDir, id).match(/NOVACRON-GUEST up/g) ?? []).length).toBe(boots); // no new boot
    await waitUntil(() => /VERIFY ok/.test(serial(dataDir, id).slice(serial(dataDir, id).lastIndexOf(`HB ${last + 1} `))), 20_000, 'working set verified after restore');
    expect(serial(dataDir, id)).not.toContain('VERIFY FAIL');
    const vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
    expect(vm.state).toBe('running');
    expect(vm.checkpoint).toBeUndefined();
    expect(existsSync(ck.result.path)).toBe(false); // spent
    expect((await api(d.url, 'POST', `/v1/vms/${id}/restore`)).status).toBe(409);
  });

  it('reboots: the guest boots again and its counter restarts', async () => {
    const id = await startVm('reboot-1');
    await waitUntil(() => heartbeats(dataDir, id).length >= 3, BOOT_MS, 'first boot');
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/reboot`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => (serial(dataDir, id).match(/NOVACRON-GUEST up/g) ?? []).length >= 2, BOOT_MS, 'second boot');
    await waitUntil(() => heartbeats(dataDir, id).filter((n) => n === 0).length >= 2, 20_000, 'counter restart');
    expect((await api(d.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('running');
  });

  it('ACPI shutdown powers the guest off cleanly; force stop kills it', async () => {
    const a = await startVm('acpi-1');
    await waitUntil(() => heartbeats(dataDir, a).length >= 3, BOOT_MS, 'boot');
    const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${a}/shutdown`, { timeoutMs: 30_000 })).body.id);
    expect(op).toMatchObject({ state: 'succeeded', result: { forced: false } });
    expect(serial(dataDir, a)).toContain('NOVACRON-GUEST poweroff');
    expect((await api(d.url, 'GET', `/v1/vms/${a}`)).body.state).toBe('stopped');

    const b = await startVm('force-1');
    const pid = Number(readFileSync(join(dataDir, 'vms', b, 'qemu.pid'), 'utf8'));
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${b}/stop`)).body.id)).state).toBe('succeeded');
    // Dead: gone, or a zombie its parent (the daemon) has not reaped yet.
    expect(processRuns(pid)).toBe(false);
    expect((await api(d.url, 'GET', `/v1/vms/${b}`)).body.state).toBe('stopped');
  });

  it('QEMU killed from outside (SIGKILL) moves the VM to error, the reason naming the signal', async () => {
    const id = await startVm('killed-1');
    const pid = Number(readFileSync(join(dataDir, 'vms', id, 'qemu.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    let vm: any;
    for (let i = 0; i < 100; i++) {
      vm = (await api(d.url, 'GET', `/v1/vms/${id}`)).body;
      if (vm.state === 'error') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(vm.state).toBe('error');
    expect(vm.stateReason).toMatch(/^VM process exited unexpectedly: QEMU exited \(SIGKILL\)/);
    // The operator recovers it.
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
  });

  it('rejects bad specs before starting QEMU, and reports QEMU\'s own start errors', async () => {
    const missing = await api(d.url, 'POST', '/v1/vms', { ...guestVm('bad-1'), boot: { type: 'kernel', kernel: 'local/no-such-kernel' } });
    expect(missing.status).toBe(404);
    expect(missing.body.error).toMatchObject({ code: 'VOLUME_NOT_FOUND' });
    expect(missing.body.error.message).toContain('local/no-such-kernel');
    const huge = await api(d.url, 'POST', '/v1/vms', { ...guestVm('bad-2'), memoryMiB: 8 * 1024 * 1024 });
    expect(huge.status).toBe(422);
    expect(huge.body.error.message).toContain('exceeds the host');

    // A qcow2 volume damaged on disk behind NovaCron's back: QEMU refuses it and says why.
    const created = await api(d.url, 'POST', '/v1/vms', { ...guestVm('bad-3'), disks: [{ name: 'root', sizeMiB: 1, format: 'qcow2' }] });
    expect(created.status).toBe(201);
    writeFileSync(ownVolume(dataDir, created.body.id, 'root'), Buffer.alloc(1 << 20));
    const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${created.body.id}/start`)).body.id);
    expect(op.state).toBe('failed');
    expect(op.error.code).toBe('DRIVER_FAILED');
    expect(op.error.message).toMatch(/QEMU failed to start: .*qcow2/i);
    expect((await api(d.url, 'GET', `/v1/vms/${created.body.id}`)).body.state).toBe('stopped');
  });

  it('disk snapshots: create on stopped and running VMs, list, revert (stopped only), delete', async () => {
    const created = await api(d.url, 'POST', '/v1/vms', { ...guestVm('snap-1'), disks: [{ name: 'data', sizeMiB: 64 }] });
    const id = created.body.id;
    const disk = ownVolume(dataDir, id, 'data');
    const qemuIo = (cmd: string) => execFileSync('qemu-io', ['-f', 'qcow2', '-c', cmd, disk], { encoding: 'utf8' });
    qemuIo('write -P 0xaa 0 64k');
    const s1 = await api(d.url, 'POST', `/v1/vms/${id}/snapshots`, { name: 's1' });
    expect(s1.status, JSON.stringify(s1.body)).toBe(201);
    expect(s1.body).toMatchObject({ name: 's1', disks: ['data'] });
    expect((await api(d.url, 'POST', `/v1/vms/${id}/snapshots`, { name: 's1' })).body.error.code).toBe('SNAPSHOT_EXISTS');
    qemuIo('write -P 0xbb 0 64k');
    const reverted = await api(d.url, 'POST', `/v1/vms/${id}/snapshots/s1/revert`);
    expect(reverted.status, JSON.stringify(reverted.body)).toBe(200);
    expect(qemuIo('read -P 0xaa 0 64k')).toContain('read 65536/65536 bytes'); // the 0xbb write is gone
    expect(() => qemuIo('read -P 0xbb 0 64k')).toThrow();

    // On a running VM, through QMP.
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'POST', `/v1/vms/${id}/snapshots`, { name: 's2' })).status).toBe(201);
    expect((await api(d.url, 'GET', `/v1/vms/${id}/snapshots`)).body.items.map((s: any) => s.name)).toEqual(['s1', 's2']);
    const denied = await api(d.url, 'POST', `/v1/vms/${id}/snapshots/s1/revert`);
    expect(denied.status).toBe(409);
    expect(denied.body.error.code).toBe('VM_INVALID_STATE');
    expect((await api(d.url, 'DELETE', `/v1/vms/${id}/snapshots/s2`)).status).toBe(200);
    expect((await api(d.url, 'DELETE', `/v1/vms/${id}/snapshots/nope`)).body.error.code).toBe('SNAPSHOT_NOT_FOUND');
    expect((await api(d.url, 'GET', `/v1/vms/${id}/snapshots`)).body.items.map((s: any) => s.name)).toEqual(['s1']);
    expect((await api(d.url, 'POST', `/v1/vms/${id}/snapshots`, { name: '../evil' })).status).toBe(400);

    const raw = await api(d.url, 'POST', '/v1/vms', { ...guestVm('snap-raw'), disks: [{ name: 'r', sizeMiB: 8, format: 'raw' }] });
    expect((await api(d.url, 'POST', `/v1/vms/${raw.body.id}/snapshots`, { name: 'x' })).body.error.code).toBe('SNAPSHOT_UNSUPPORTED');
  });

  it('hot-plugs a disk into a running VM and attaches a CD-ROM', async () => {
    const iso = await fetch(`${d.url}/v1/pools/local/volumes/media.iso/content?format=raw&content=iso`, { method: 'PUT', body: Buffer.alloc(2 << 20), headers: authHeaders(d.url) });
    expect(iso.status).toBe(201);
    const id = await startVm('hotplug-1', '', { cdrom: 'local/media.iso' });
    expect(readFileSync(`/proc/${(await api(d.url, 'GET', `/v1/vms/${id}`)).body.runtime.pid}/cmdline`, 'latin1')).toContain(`file=${join(dataDir, 'pools', 'local', 'media.iso')},format=raw,media=cdrom`);
    const added = await api(d.url, 'POST', `/v1/vms/${id}/disks`, { name: 'extra', sizeMiB: 32 });
    expect(added.status, JSON.stringify(added.body)).toBe(201);
    expect(added.body.spec.disks.map((x: any) => x.name)).toEqual(['extra']);
    const stats = (await api(d.url, 'GET', `/v1/vms/${id}/stats`)).body;
    expect(stats.disks.map((x: any) => x.name)).toContain('extra'); // QEMU has the device
    expect((await api(d.url, 'POST', `/v1/vms/${id}/disks`, { name: 'extra', sizeMiB: 8 })).body.error.code).toBe('VM_SPEC_INVALID');
    // Grown while the guest runs: through QEMU (block_resize); an offline qemu-img resize could not even take the image's lock.
    const grown = await api(d.url, 'POST', `/v1/pools/local/volumes/${id}-extra/resize`, { sizeMiB: 48 });
    expect(grown.status, JSON.stringify(grown.body)).toBe(200);
    expect(JSON.parse(execFileSync('qemu-img', ['info', '-U', '-f', 'qcow2', '--output=json', ownVolume(dataDir, id, 'extra')], { encoding: 'utf8' }))['virtual-size']).toBe(48 << 20);
    expect(spawnSync('qemu-img', ['resize', '-f', 'qcow2', ownVolume(dataDir, id, 'extra'), '64M'], { encoding: 'utf8' }).stderr).toMatch(/lock/i);
    // A snapshot of that one volume, taken in the running guest's QEMU; reverting it needs the VM stopped.
    const snap = await api(d.url, 'POST', `/v1/pools/local/volumes/${id}-extra/snapshots`, { name: 'live' });
    expect(snap.status, JSON.stringify(snap.body)).toBe(201);
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-extra/snapshots`)).body.items.map((x: any) => x.name)).toEqual(['live']);
    expect((await api(d.url, 'POST', `/v1/pools/local/volumes/${id}-extra/snapshots/live/revert`)).body.error.code).toBe('VOLUME_IN_USE');
    // The disk stays in the spec: a cold restart brings it up as a regular disk.
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'GET', `/v1/vms/${id}/stats`)).body.disks.map((x: any) => x.name)).toContain('extra');
  });

  it('cloud-init: the guest finds its NoCloud seed (a CD-ROM labelled cidata) with the spec\'s data, rebuilt when the spec changes', async () => {
    const cloudInit = { userData: '#cloud-config\npackages: []\n', hostname: 'ci-host', sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@novacron'], networkConfig: 'version: 2\nethernets: {}\n' };
    const id = await startVm('cloud-1', 'nc.cidata=1', { cloudInit });
    const seedLine = () => /^CIDATA .*$/m.exec(serial(dataDir, id))?.[0];
    await waitUntil(() => seedLine() !== undefined, BOOT_MS, 'the guest to read its seed');
    expect(seedLine()).toBe(`CIDATA instance-id=${id} hostname=ci-host keys=1 userdata=#cloud-config network=yes`);
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-cidata`)).body).toMatchObject({ content: 'iso', owner: id, attachedTo: [id] });
    const seed = join(dataDir, 'pools', 'local', `${id}-cidata`);
    expect(execFileSync('blkid', ['-o', 'value', '-s', 'LABEL', seed], { encoding: 'utf8' }).trim()).toBe('cidata'); // what cloud images look for
    expect(execFileSync('blkid', ['-o', 'value', '-s', 'TYPE', seed], { encoding: 'utf8' }).trim()).toBe('iso9660');
    // A new hostname in the spec: the next boot's seed says so.
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/stop`)).body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'PATCH', `/v1/vms/${id}`, { cloudInit: { ...cloudInit, hostname: 'ci-renamed', networkConfig: undefined } })).status).toBe(200);
    const before = serial(dataDir, id).length;
    expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    const second = () => /^CIDATA .*$/m.exec(serial(dataDir, id).slice(before))?.[0];
    await waitUntil(() => second() !== undefined, BOOT_MS, 'the guest to read its new seed');
    expect(second()).toBe(`CIDATA instance-id=${id} hostname=ci-renamed keys=1 userdata=#cloud-config network=no`);
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id)).state).toBe('succeeded');
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-cidata`)).status).toBe(404);
  });

  it('templates: a stopped VM becomes a template (read-only volumes, never started); linked clones and full copies of it boot; it cannot go while clones depend on it', async () => {
    const src = await api(d.url, 'POST', '/v1/vms', { ...guestVm('tpl-src'), disks: [{ name: 'data', sizeMiB: 8 }] });
    const tid = src.body.id as string;
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 0 1M', ownVolume(dataDir, tid, 'data')]);
    const t = await api(d.url, 'POST', `/v1/vms/${tid}/template`);
    expect(t.status, JSON.stringify(t.body)).toBe(200);
    expect(t.body.template).toBe(true);
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${tid}-data`)).body).toMatchObject({ readOnly: true, content: 'template' });
    expect((await api(d.url, 'POST', `/v1/vms/${tid}/start`)).body.error.code).toBe('VM_INVALID_STATE');
    expect((await api(d.url, 'PATCH', `/v1/vms/${tid}`, { vcpus: 2 })).body.error.code).toBe('VM_INVALID_STATE');

    const linked = await api(d.url, 'POST', '/v1/vms', { name: 'tpl-linked', fromTemplate: 'tpl-src' });
    expect(linked.status, JSON.stringify(linked.body)).toBe(201);
    const lid = linked.body.id as string;
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${lid}-data`)).body).toMatchObject({ backing: `local/${tid}-data`, owner: lid });
    const full = await api(d.url, 'POST', '/v1/vms', { name: 'tpl-full', fromTemplate: tid, linked: false });
    expect(full.status, JSON.stringify(full.body)).toBe(201);
    const fid = full.body.id as string;
    expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${fid}-data`)).body.backing).toBeUndefined();
    for (const id of [lid, fid]) {
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x42 0 1M', ownVolume(dataDir, id, 'data')]); // the template's data
      expect((await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
      await waitUntil(() => heartbeats(dataDir, id).length >= 3, BOOT_MS, 'a VM made from the template to boot');
    }
    // The template's data never changes under its clones.
    expect((await api(d.url, 'DELETE', `/v1/vms/${tid}`)).body.error).toMatchObject({ code: 'VOLUME_IN_USE', details: { dependents: [`local/${lid}-data`] } });
    expect((await api(d.url, 'GET', `/v1/vms/${tid}`)).body).toMatchObject({ state: 'stopped', template: true });
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${lid}?force=true`)).body.id)).state).toBe('succeeded');
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${tid}`)).body.id)).state).toBe('succeeded');
    expect(existsSync(ownVolume(dataDir, tid, 'data'))).toBe(false);
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${fid}?force=true`)).body.id)).state).toBe('succeeded');
  });

  it('refuses hugepage-backed RAM when hugetlbfs is not mounted', async (ctx) => {
    // (The next test mounts it only for itself; a host that has it mounted cannot show the refusal.)
    if (spawnSync('mountpoint', ['-q', '/dev/hugepages']).status === 0) return ctx.skip();
    const r = await api(d.url, 'POST', '/v1/vms', { ...guestVm('huge-1'), memoryBacking: 'hugepages' });
    expect(r.status).toBe(422);
    expect(r.body.error.message).toContain('needs hugetlbfs mounted at /dev/hugepages');
  });

  it('backs guest RAM with hugepages on hugetlbfs when asked (root: mounts and reserves them for the test)', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip();
    const mounted = spawnSync('mountpoint', ['-q', '/dev/hugepages']).status === 0;
    const before = readFileSync('/proc/sys/vm/nr_hugepages', 'utf8').trim();
    try {
      if (!mounted) execFileSync('bash', ['-c', 'mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages']);
      writeFileSync('/proc/sys/vm/nr_hugepages', String(Number(before) + 160));
      const free = () => Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
      const freeBefore = free();
      const id = await startVm('huge-2', '', { memoryBacking: 'hugepages' });
      await waitUntil(() => heartbeats(dataDir, id).length >= 2, BOOT_MS, 'boot on hugepages');
      expect(freeBefore - free()).toBeGreaterThanOrEqual(128); // 256 MiB of 2 MiB pages, preallocated
      expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id)).state).toBe('succeeded');
    } finally {
      writeFileSync('/proc/sys/vm/nr_hugepages', before);
      if (!mounted) spawnSync('umount', ['/dev/hugepages']);
    }
  });

  it('makes a VM\'s new disks as volumes in its pool and deletes them with the VM; with keepDisks they stay as ordinary volumes', async () => {
    const created = await api(d.url, 'POST', '/v1/vms', { ...guestVm('disks-1'), disks: [{ name: 'data', sizeMiB: 64 }, { name: 'scratch', sizeMiB: 16, format: 'raw' }] });
    expect(created.status).toBe(201);
    const id = created.body.id;
    const info = JSON.parse(execFileSync('qemu-img', ['info', '-f', 'qcow2', '--output=json', ownVolume(dataDir, id, 'data')], { encoding: 'utf8' }));
    expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': 64 * 1024 * 1024 });
    expect(statSync(ownVolume(dataDir, id, 'scratch')).size).toBe(16 << 20);
    const vol = (await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-data`)).body;
    expect(vol).toMatchObject({ format: 'qcow2', sizeBytes: 64 << 20, owner: id, attachedTo: [id] });
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${id}`)).body.id)).state).toBe('succeeded');
    expect(existsSync(join(dataDir, 'vms', id))).toBe(false);
    for (const disk of ['data', 'scratch']) {
      expect(existsSync(ownVolume(dataDir, id, disk))).toBe(false);
      expect((await api(d.url, 'GET', `/v1/pools/local/volumes/${id}-${disk}`)).status).toBe(404);
    }

    const kept = await api(d.url, 'POST', '/v1/vms', { ...guestVm('disks-2'), disks: [{ name: 'data', sizeMiB: 8 }] });
    const keptId = kept.body.id;
    expect((await waitOp(d.url, (await api(d.url, 'DELETE', `/v1/vms/${keptId}?keepDisks=true`)).body.id)).state).toBe('succeeded');
    const left = await api(d.url, 'GET', `/v1/pools/local/volumes/${keptId}-data`);
    expect(left.status).toBe(200);
    expect(left.body.owner).toBeUndefined();
    expect(left.body.attachedTo).toEqual([]);
    expect(existsSync(ownVolume(dataDir, keptId, 'data'))).toBe(true);
    // ...and another VM can use it as an existing volume.
    const reuse = await api(d.url, 'POST', '/v1/vms', { ...guestVm('disks-3'), disks: [{ name: 'data', volume: `local/${keptId}-data` }] });
    expect(reuse.status, JSON.stringify(reuse.body)).toBe(201);
  });
});

describe('qemu driver across daemon restarts', { timeout: 180_000 }, () => {
  /** A QEMU daemon on its own data dir, and a guest of `name` it runs, booted. */
  async function daemonWithGuest(own: string, name: string): Promise<{ daemon: DaemonHandle; id: string }> {
    const daemon = await spawnDaemon({ dataDir: own, args: ['--driver', 'qemu'] });
    await installGuest(daemon.url);
    const id = (await api(daemon.url, 'POST', '/v1/vms', guestVm(name))).body.id as string;
    expect((await waitOp(daemon.url, (await api(daemon.url, 'POST', `/v1/vms/${id}/start`)).body.id)).state).toBe('succeeded');
    await waitUntil(() => heartbeats(own, id).length >= 3, BOOT_MS, 'boot');
    return { daemon, id };
  }

  it('kill -9 of the daemon leaves the VM running; the restarted daemon reattaches', async () => {
    const own = tempDataDir();
    let { daemon, id } = await daemonWithGuest(own, 'survivor');
    try {
      await daemon.kill('SIGKILL');
      const before = heartbeats(own, id).length;
      await waitUntil(() => heartbeats(own, id).length >= before + 5, 10_000, 'guest keeps running without the daemon');

      daemon = await spawnDaemon({ dataDir: own, args: ['--driver', 'qemu'] });
      const vm = (await api(daemon.url, 'GET', `/v1/vms/${id}`)).body;
      expect(vm.state).toBe('running');
      expect((await waitOp(daemon.url, (await api(daemon.url, 'POST', `/v1/vms/${id}/pause`)).body.id)).state).toBe('succeeded');
      expect((await waitOp(daemon.url, (await api(daemon.url, 'POST', `/v1/vms/${id}/resume`)).body.id)).state).toBe('succeeded');
      const hb = heartbeats(own, id);
      for (let i = 1; i < hb.length; i++) expect(hb[i]).toBe(hb[i - 1]! + 1); // never restarted
      expect((await waitOp(daemon.url, (await api(daemon.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id)).state).toBe('succeeded');
    } finally {
      await daemon.kill();
      removeDir(own);
    }
  });

  it('pause and resume are done before they are acknowledged: one write each, and a kill -9 after QEMU paused the guest but before that write leaves the guest paused, which the restarted daemon records', async () => {
    const own = tempDataDir();
    const cfgDir = tempDataDir();
    const cfg = join(cfgDir, 'faults.json');
    writeFileSync(cfg, JSON.stringify({ faults: { killAfterDriverWork: 'pause' } }));
    let { daemon, id } = await daemonWithGuest(own, 'paused-at-crash');
    try {
      // Answered finished, with the operation's events and the state change in one write.
      const ev = await EventClient.connect(daemon.url, `?vmId=${id}`);
      const paused = await api(daemon.url, 'POST', `/v1/vms/${id}/pause`);
      expect(paused.status).toBe(202);
      expect(paused.body).toMatchObject({ kind: 'pause', state: 'succeeded' });
      await ev.waitFor((c) => c.events.some((e) => e.type === 'operation.succeeded' && e.operationId === paused.body.id));
      const mine = ev.events.filter((e) => e.operationId === paused.body.id || e.type === 'vm.state');
      ev.close();
      expect(mine.map((e) => e.type)).toEqual(['operation.started', 'vm.state', 'operation.succeeded']);
      expect(new Set(mine.map((e) => e.seq - mine[0]!.seq))).toEqual(new Set([0, 1, 2])); // consecutive: one commit
      expect((await api(daemon.url, 'GET', `/v1/vms/${id}`)).body.state).toBe('paused');
      const resumed = await api(daemon.url, 'POST', `/v1/vms/${id}/resume`);
      expect(resumed.body).toMatchObject({ kind: 'resume', state: 'succeeded' });
      await daemon.kill();

      daemon = await spawnDaemon({ dataDir: own, args: ['--driver', 'qemu', '--config', cfg] });
      const lost = await api(daemon.url, 'POST', `/v1/vms/${id}/pause`).then(() => 'answered', (e: Error) => e.message);
      expect(lost, 'the daemon died before answering').not.toBe('answered');
      expect((await daemon.exited).signal).toBe('SIGKILL');
      const at = heartbeats(own, id).length;
      await new Promise((r) => setTimeout(r, 2500));
      expect(heartbeats(own, id).length, 'QEMU paused the guest before the daemon died').toBe(at);

      daemon = await spawnDaemon({ dataDir: own, args: ['--driver', 'qemu'] });
      const vm = (await api(daemon.url, 'GET', `/v1/vms/${id}`)).body;
      expect(vm).toMatchObject({ state: 'paused', stateReason: 'reconciled with the hypervisor after restart' });
      expect((await waitOp(daemon.url, (await api(daemon.url, 'POST', `/v1/vms/${id}/resume`)).body.id)).state).toBe('succeeded');
      await waitUntil(() => heartbeats(own, id).length >= at + 3, 20_000, 'the guest running on after resume');
      expect((await waitOp(daemon.url, (await api(daemon.url, 'DELETE', `/v1/vms/${id}?force=true`)).body.id)).state).toBe('succeeded');
    } finally {
      await daemon.kill();
      removeDir(own);
      removeDir(cfgDir);
    }
  });
});
