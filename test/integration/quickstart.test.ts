/**
 * The README's quickstart, as written: the daemon `npm start` runs (driver `auto`, which
 * picks QEMU once `npm install` has installed it), then the shell block that follows it in
 * the README, run line by line by bash against that daemon. A real guest must boot from
 * the volumes it uploads and print its heartbeat on the console.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, ROOT, spawnDaemon, type DaemonHandle } from '../helpers/daemon.js';
import { ensureQemuAndGuest, killGuests } from '../helpers/qemu.js';

let d: DaemonHandle;
beforeAll(async () => {
  ensureQemuAndGuest(); // what npm install did on this machine (scripts/build.mjs runs setup-qemu.sh)
  d = await spawnDaemon({ args: ['--driver', 'auto'] });
}, 300_000);
afterAll(async () => {
  await d?.kill();
  killGuests(d.dataDir);
  removeDir(d.dataDir);
});

/** The README's shell block right after "Then, in another shell". */
function quickstartBlock(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const from = readme.indexOf('Then, in another shell');
  const start = readme.indexOf('```sh\n', from) + 6;
  return readme.slice(start, readme.indexOf('```', start));
}

describe('README quickstart', { timeout: 300_000 }, () => {
  it('the daemon npm start runs manages real VMs: the quickstart boots a guest from uploaded volumes and shows its console', async () => {
    expect((await api(d.url, 'GET', '/healthz')).body.driver).toBe('qemu');
    // npm start's daemon keeps its data (and admin.token) in ./data; this one's is elsewhere.
    const script = quickstartBlock().replaceAll('127.0.0.1:7700', `127.0.0.1:${d.port}`).replaceAll('data/admin.token', join(d.dataDir, 'admin.token'));
    expect(script).toContain(join(d.dataDir, 'admin.token'));
    expect(script).toContain('npx novacron vm console demo');
    const r = spawnSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NOVACRON_URL: d.url, NOVACRON_DATA_DIR: d.dataDir }, timeout: 240_000 });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^HB \d+ \d+/m); // the guest's heartbeat, read through `vm console`
    expect(r.stdout).toMatch(/uploaded .*vmlinuz as local\/vmlinuz/);
    const vm = (await api(d.url, 'GET', '/v1/vms/demo')).body;
    expect(vm).toMatchObject({ state: 'running', runtime: { accelerator: expect.stringMatching(/^(kvm|tcg)$/) } });
    expect(r.stdout).toContain(`local/${vm.id}-data`); // `volume list local` shows the VM's own disk
    const volumes = (await api(d.url, 'GET', '/v1/pools/local/volumes')).body.items.map((v: any) => v.ref);
    expect(volumes).toEqual(expect.arrayContaining(['local/vmlinuz', 'local/initrd', `local/${vm.id}-data`]));
  });
});
