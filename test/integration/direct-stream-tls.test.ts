/**
 * A direct migration stream's TLS, as the QEMU driver sets it up on two real QEMUs
 * (src/vm/qemu/migration.ts): the destination admits only the certificate of the member
 * it was told to expect, and the source only a destination whose certificate the cluster
 * CA signed for the host it dials. Certificates are made like members' (src/tls/pki.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/vm/qemu/qmp.js';
import { QemuLiveMigration, type MigrationHost } from '../../src/vm/qemu/migration.js';
import { createCa, createCsr, signMember } from '../../src/tls/pki.js';
import type { StreamTls } from '../../src/vm/driver.js';
import type { VmRecord } from '../../src/vm/record.js';
import { ensureQemuAndGuest, waitUntil } from '../helpers/qemu.js';
import { removeDir } from '../helpers/daemon.js';

const work = mkdtempSync(join(tmpdir(), 'nc-direct-tls-'));
const procs: ChildProcess[] = [];
const creds: StreamTls[] = [];

/** A bare QEMU (no guest: the firmware idles) as VM `vmId`; `incoming` waits for a migration. */
async function qemu(vmId: string, incoming: boolean): Promise<{ qmp: QmpClient; dir: string }> {
  const dir = mkdtempSync(join(work, `${vmId}-`));
  const sock = join(dir, 'qmp.sock');
  const args = ['-machine', 'q35,accel=tcg', '-m', '64', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`, ...(incoming ? ['-incoming', 'defer'] : [])];
  const p = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
  procs.push(p);
  await waitUntil(() => existsSync(sock), 10_000, 'QMP socket');
  return { qmp: await QmpClient.connect(sock, 5000), dir };
}

/** The driver's migration half over one bare QEMU. */
function driverOn(q: { qmp: QmpClient; dir: string }): QemuLiveMigration {
  const host: MigrationHost = {
    vmDir: () => q.dir,
    spawnIncoming: async () => ({}),
    instance: async () => ({ qmp: q.qmp, pid: 0, exited: new Promise<void>(() => undefined), stoppedAt: () => undefined, resumedAt: () => undefined }),
    stop: async () => undefined,
  };
  return new QemuLiveMigration(host);
}

const VM = { id: 'vm-direct', name: 'direct', spec: {} } as unknown as VmRecord;
const params = { channels: 2, downtimeLimitMs: 50, autoConverge: false, maxThrottlePercent: 50, pauseBeforeSwitchover: false };

async function status(qmp: QmpClient): Promise<string> {
  return (await qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none';
}

async function settled(qmp: QmpClient): Promise<string> {
  for (let i = 0; i < 300; i++) {
    const s = await status(qmp);
    if (s === 'completed' || s === 'failed' || s === 'cancelled') return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  return status(qmp);
}

beforeAll(async () => {
  ensureQemuAndGuest();
  const ca = await createCa('direct-test');
  for (const id of [1, 2, 3]) {
    const { keyPem, csrPem } = await createCsr(id);
    creds.push({ caPem: ca.certPem, keyPem, certPem: await signMember(ca, csrPem, id, ['127.0.0.1']) });
  }
}, 300_000);
afterAll(() => {
  for (const p of procs) p.kill('SIGKILL');
  removeDir(work);
});

describe("a direct stream's mutual TLS, on real QEMUs", { timeout: 120_000 }, () => {
  it("the destination admits only the expected member's certificate: another member's is refused and the destination keeps waiting; the expected one's stream completes and the guest runs there", async () => {
    const [m1, m2, m3] = creds as [StreamTls, StreamTls, StreamTls];
    const dst = await qemu('vm-direct', true);
    const prepared = await driverOn(dst).prepareIncoming(VM, 2, { host: '127.0.0.1', tls: m2, peerIdentity: 'CN=member-1' });
    expect(prepared.listen.kind).toBe('direct');
    const port = (prepared.listen as { port: number }).port;
    // The key was on disk only while QEMU loaded it.
    expect(readdirSync(dst.dir)).not.toContain('migration-tls');

    const impostor = await qemu('vm-direct', false);
    await driverOn(impostor).startOutgoing('vm-direct', { ...params, to: { kind: 'direct', host: '127.0.0.1', port, tls: m3, hostname: '127.0.0.1' } });
    expect(await settled(impostor.qmp)).toBe('failed');
    expect(await status(dst.qmp)).toBe('setup');

    const src = await qemu('vm-direct', false);
    await driverOn(src).startOutgoing('vm-direct', { ...params, to: { kind: 'direct', host: '127.0.0.1', port, tls: m1, hostname: '127.0.0.1' } });
    expect(await settled(src.qmp)).toBe('completed');
    expect((await dst.qmp.execute<{ status: string }>('query-status')).status).toBe('running');
  });

  it('the source refuses a destination whose certificate does not name the host it dials', async () => {
    const [m1, m2] = creds as [StreamTls, StreamTls];
    const dst = await qemu('vm-direct', true);
    const prepared = await driverOn(dst).prepareIncoming(VM, 2, { host: '127.0.0.1', tls: m2, peerIdentity: 'CN=member-1' });
    const port = (prepared.listen as { port: number }).port;
    const src = await qemu('vm-direct', false);
    await driverOn(src).startOutgoing('vm-direct', { ...params, to: { kind: 'direct', host: '127.0.0.1', port, tls: m1, hostname: 'member-elsewhere.example' } });
    expect(await settled(src.qmp)).toBe('failed');
    const why = (await src.qmp.execute<{ 'error-desc'?: string }>('query-migrate'))['error-desc'];
    expect(why).toMatch(/certificate|hostname/i);
    expect((await dst.qmp.execute<{ status: string }>('query-status')).status).not.toBe('running');
  });
});
