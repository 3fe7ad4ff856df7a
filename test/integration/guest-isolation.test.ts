/**
 * A real QEMU guest with a user-mode NIC tries to drive the host's API through the
 * user-mode gateway (10.0.2.2, which QEMU maps onto the host's 127.0.0.1). The guest's
 * init gets a DHCP lease (proof that its NIC works), POSTs a VM spec once with busybox
 * wget, and prints the outcome on its serial console.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, spawnDaemon, tempDataDir, waitOp, type DaemonHandle } from '../helpers/daemon.js';
import { ensureQemuAndGuest, guestVm, installGuest, serial, waitUntil, killGuests } from '../helpers/qemu.js';

const daemons: DaemonHandle[] = [];

beforeAll(() => {
  ensureQemuAndGuest();
}, 300_000);
afterAll(async () => {
  for (const d of daemons) {
    await d.kill();
    killGuests(d.dataDir);
    removeDir(d.dataDir);
  }
});

async function qemuDaemon(): Promise<DaemonHandle> {
  const d = await spawnDaemon({ dataDir: tempDataDir(), args: ['--driver', 'qemu'] });
  daemons.push(d);
  await installGuest(d.url);
  return d;
}

/** Boots a guest that tries the API of `d` from inside; returns its console lines about the attempt. */
async function guestTriesApi(d: DaemonHandle, nic: Record<string, unknown>): Promise<{ net: string; api: string }> {
  const created = await api(d.url, 'POST', '/v1/vms', guestVm('prober', `nc.api=${d.port}`, { nics: [{ name: 'n0', mode: 'user', ...nic }] }));
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const op = await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${created.body.id}/start`)).body.id);
  expect(op.state, JSON.stringify(op)).toBe('succeeded');
  await waitUntil(() => /^NCAPI /m.test(serial(d.dataDir, created.body.id)), 120_000, 'the guest to report its API attempt');
  const log = serial(d.dataDir, created.body.id);
  return { net: /^NCNET .*$/m.exec(log)?.[0] ?? '', api: /^NCAPI .*$/m.exec(log)![0] };
}

async function vmNames(d: DaemonHandle): Promise<string[]> {
  return (await api(d.url, 'GET', '/v1/vms')).body.items.map((v: { name: string }) => v.name);
}

describe('guests cannot drive the host API', { timeout: 240_000 }, () => {
  it('a guest on a default (restricted) user-mode NIC gets a lease but cannot connect to the daemon on loopback at all; no VM is created', async () => {
    const d = await qemuDaemon();
    const seen = await guestTriesApi(d, {});
    expect(seen.net).toMatch(/^NCNET lease 10\.0\.2\.\d+$/);
    expect(seen.api).not.toMatch(/^NCAPI rc=0/);
    expect(seen.api).not.toMatch(/HTTP\/1\.1 \d{3}/); // no HTTP answer at all: the connection never reached the daemon
    expect(await vmNames(d)).toEqual(['prober']);
  });

  it('a guest on an unrestricted user-mode NIC reaches the daemon on loopback only to get 401 (authentication is always on); no VM is created', async () => {
    const d = await qemuDaemon();
    const seen = await guestTriesApi(d, { restrict: false });
    expect(seen.net).toMatch(/^NCNET lease 10\.0\.2\.\d+$/);
    expect(seen.api).toMatch(/401 Unauthorized/);
    expect(await vmNames(d)).toEqual(['prober']);
  });
});
