import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, removeDir, spawnDaemon, type DaemonHandle } from '../helpers/daemon.js';

let d: DaemonHandle;
beforeAll(async () => {
  d = await spawnDaemon();
});
afterAll(async () => {
  await d.kill();
  removeDir(d.dataDir);
});

function cli(...args: string[]) {
  // The CLI finds the daemon's admin.token in its data directory, as on the daemon's own host.
  const r = spawnSync(process.execPath, [BIN, '--url', d.url, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, NOVACRON_DATA_DIR: d.dataDir } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('novacron CLI', () => {
  it('creates, starts, lists and deletes a VM, with --json for scripts', () => {
    const created = cli('--json', 'vm', 'create', '--name', 'cli-1', '--vcpus', '2', '--memory', '256', '--disk', 'root:512', '--label', 'app=db');
    expect(created.code, created.stderr).toBe(0);
    const vm = JSON.parse(created.stdout);
    expect(vm).toMatchObject({ name: 'cli-1', state: 'stopped', spec: { memoryMiB: 256, labels: { app: 'db' }, disks: [{ name: 'root', sizeMiB: 512 }] } });

    const started = cli('vm', 'start', 'cli-1');
    expect(started.code, started.stderr).toBe(0);
    expect(started.stdout).toContain('start succeeded');

    const listed = cli('vm', 'list');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/cli-1\s.*running/);
    const listedJson = JSON.parse(cli('--json', 'vm', 'list', '--label', 'app=db').stdout);
    expect(listedJson.map((v: any) => v.name)).toEqual(['cli-1']);

    const get = cli('vm', 'get', vm.id);
    expect(get.stdout).toContain('running');

    const del = cli('--json', 'vm', 'delete', 'cli-1', '--force');
    expect(del.code, del.stderr).toBe(0);
    expect(JSON.parse(del.stdout)).toMatchObject({ kind: 'delete', state: 'succeeded' });
  });

  it('uses stable exit codes', () => {
    expect(cli('vm', 'get', 'nope').code).toBe(3);
    cli('vm', 'create', '--name', 'cli-2', '--vcpus', '1', '--memory', '64', '--disk', 'r:1');
    const conflict = cli('vm', 'pause', 'cli-2');
    expect(conflict.code).toBe(4);
    expect(conflict.stderr).toContain('VM_INVALID_STATE');
    expect(cli('vm', 'create', '--name', 'BAD NAME', '--vcpus', '1', '--memory', '64').code).toBe(7);
    expect(cli('vm', 'frobnicate').code).toBe(2);
    const unreachable = spawnSync(process.execPath, [BIN, '--url', 'http://127.0.0.1:1', 'vm', 'list'], { encoding: 'utf8' });
    expect(unreachable.status).toBe(5);
    expect(unreachable.stderr).toContain('cannot reach the NovaCron daemon');
  });

  it('reports a failed operation with exit code 6', () => {
    cli('vm', 'create', '--name', 'cli-3', '--vcpus', '1', '--memory', '64', '--disk', 'r:1', '--label', 'sim.novacron.io/fail=start');
    const r = cli('vm', 'start', 'cli-3');
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('injected start failure');
  });
});
