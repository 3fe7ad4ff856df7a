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
  return cliWith({}, ...args);
}

function cliWith(opts: { input?: string; env?: Record<string, string> }, ...args: string[]) {
  // The CLI finds the daemon's admin.token in its data directory, as on the daemon's own host.
  const r = spawnSync(process.execPath, [BIN, '--url', d.url, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, NOVACRON_DATA_DIR: d.dataDir, ...opts.env }, ...(opts.input !== undefined ? { input: opts.input } : {}) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('novacron CLI', () => {
  it('manages users, tokens, ACLs, quotas and reads the audit trail, with tables and --json', () => {
    expect(cliWith({ input: 'a long enough password\n' }, 'user', 'create', 'cli-ops', '--tenant', 'acme', '--password-stdin').stdout).toContain('user cli-ops created');
    expect(JSON.parse(cli('--json', 'user', 'list').stdout).find((u: any) => u.name === 'cli-ops')).toMatchObject({ tenant: 'acme', hasPassword: true });
    expect(cli('acl', 'set', '/tenants/acme', 'cli-ops', 'TenantAdmin').code).toBe(0);
    expect(cli('acl', 'list').stdout).toMatch(/\/tenants\/acme\s.*cli-ops\s.*TenantAdmin/);
    const made = JSON.parse(cli('--json', 'token', 'create', 'cli-ops', '--roles', 'TenantUser', '--description', 'ci').stdout);
    expect(made.token).toMatch(/^nc1\./);
    const who = JSON.parse(cliWith({ env: { NOVACRON_API_TOKEN: made.token } }, '--json', 'whoami').stdout);
    expect(who).toMatchObject({ user: 'cli-ops', tenant: 'acme', token: made.id });
    expect(who.privileges).not.toContain('VM.Allocate'); // capped to TenantUser
    expect(cli('token', 'list', 'cli-ops').stdout).toMatch(new RegExp(`${made.id}\\s.*TenantUser.*never.*ci`));
    expect(cli('quota', 'set', 'acme', '--vms', '2', '--memory', '2048', '--disk', 'local=5').code).toBe(0);
    expect(JSON.parse(cli('--json', 'quota', 'get', 'acme').stdout)).toMatchObject({ limits: { vms: 2, memoryMiB: 2048, diskGiB: { local: 5 } }, usage: { vms: 0 } });
    expect(cli('quota', 'get', 'acme').stdout).toMatch(/diskGiB local\s.*0\s.*5/);
    expect(cli('quota', 'get', 'acme').stdout).toMatch(/vms\s.*0\s.*2/);
    expect(cli('token', 'revoke', 'cli-ops', made.id).code).toBe(0);
    expect(cliWith({ env: { NOVACRON_API_TOKEN: made.token } }, 'whoami').code).not.toBe(0);
    const audit = JSON.parse(cli('--json', 'audit', '--limit', '1000').stdout);
    expect(audit.map((r: any) => `${r.method} ${r.path} ${r.status}`)).toEqual(expect.arrayContaining(['POST /v1/users 201', 'PUT /v1/acl 200', 'PUT /v1/tenants/acme/quota 200', 'GET /v1/auth/whoami 401']));
    expect(cli('audit', '--principal', 'admin').stdout).toMatch(/PUT \/v1\/acl\s.*200/);
    expect(cli('quota', 'clear', 'acme').code).toBe(0);
    expect(cli('user', 'delete', 'cli-ops').code).toBe(0);
  });

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
