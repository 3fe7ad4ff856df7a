/** `novacron whoami`, `user …`, `token …`, `acl …`, `role …`, `quota …` and `audit`. */
import type { Command } from 'commander';
import Table from 'cli-table3';
import type { NovaClient } from './client.js';

type Row = Record<string, unknown>;

export function addAuthCommands(program: Command, client: () => NovaClient, json: () => boolean): void {
  const print = (v: unknown) => console.log(JSON.stringify(v, null, 2));
  /** `items` as a table of `columns` (header → field), or JSON. */
  const table = (items: Row[], columns: Record<string, (r: Row) => unknown>) => {
    if (json()) return print(items);
    const t = new Table({ head: Object.keys(columns), style: { head: [], border: [] } });
    for (const r of items) t.push(Object.values(columns).map((f) => String(f(r) ?? '-')));
    console.log(t.toString());
  };
  const enc = encodeURIComponent;

  program.command('whoami')
    .description('the caller: user, tenant, token and privileges')
    .action(async () => {
      const me = await client().request<Row>('GET', '/v1/auth/whoami');
      if (json()) return print(me);
      console.log(`${me.user}${me.tenant ? ` (tenant ${me.tenant})` : ''}${me.token ? `, token ${me.token}` : ''}`);
      console.log(`privileges: ${(me.privileges as string[]).join(' ') || 'none'}`);
    });

  const user = program.command('user').description('users (local realm; OIDC users are named <sub>@oidc)');
  user.command('list').action(async () => {
    const { items } = await client().request<{ items: Row[] }>('GET', '/v1/users');
    table(items, { NAME: (r) => r.name, TENANT: (r) => r.tenant, PASSWORD: (r) => (r.hasPassword ? 'yes' : 'no'), DISABLED: (r) => (r.disabled ? 'yes' : 'no'), CREATED: (r) => r.createdAt });
  });
  user.command('create <name>')
    .option('--tenant <tenant>', 'a tenant\'s user')
    .option('--password-stdin', 'read a password from stdin (never from the command line)')
    .action(async (name: string, opts: { tenant?: string; passwordStdin?: boolean }) => {
      const password = opts.passwordStdin ? (await readStdin()).replace(/\r?\n$/, '') : undefined;
      const u = await client().request<Row>('POST', '/v1/users', { name, ...(opts.tenant ? { tenant: opts.tenant } : {}), ...(password ? { password } : {}) });
      if (json()) return print(u);
      console.log(`user ${u.name} created`);
    });
  user.command('disable <name>').action(async (name: string) => void (await client().request('PATCH', `/v1/users/${enc(name)}`, { disabled: true })));
  user.command('enable <name>').action(async (name: string) => void (await client().request('PATCH', `/v1/users/${enc(name)}`, { disabled: false })));
  user.command('delete <name>').action(async (name: string) => void (await client().request('DELETE', `/v1/users/${enc(name)}`)));

  const token = program.command('token').description('API tokens (the secret is shown once, at creation)');
  token.command('list <user>').action(async (u: string) => {
    const { items } = await client().request<{ items: Row[] }>('GET', `/v1/users/${enc(u)}/tokens`);
    table(items, { ID: (r) => r.id, ROLES: (r) => (r.roles as string[] | undefined)?.join(',') ?? 'all', EXPIRES: (r) => (r.expiresAt ? new Date(r.expiresAt as number).toISOString() : 'never'), DESCRIPTION: (r) => r.description, CREATED: (r) => r.createdAt });
  });
  token.command('create <user>')
    .option('--roles <roles>', 'cap the token to these roles (comma-separated)')
    .option('--expires-in <seconds>', 'lifetime in seconds')
    .option('--description <text>')
    .action(async (u: string, opts: { roles?: string; expiresIn?: string; description?: string }) => {
      const t = await client().request<Row>('POST', `/v1/users/${enc(u)}/tokens`, {
        ...(opts.roles ? { roles: opts.roles.split(',').filter(Boolean) } : {}),
        ...(opts.expiresIn ? { expiresInSeconds: Number(opts.expiresIn) } : {}),
        ...(opts.description ? { description: opts.description } : {}),
      });
      if (json()) return print(t);
      console.log(`token ${t.id} for ${u} (shown only now):\n${t.token}`);
    });
  token.command('revoke <user> <id>').action(async (u: string, id: string) => void (await client().request('DELETE', `/v1/users/${enc(u)}/tokens/${enc(id)}`)));

  const acl = program.command('acl').description('ACL entries: a role for a user on a path (/, /cluster, /tenants/<t>, /vms/<id>, /pools/<p>)');
  acl.command('list').action(async () => {
    const { items } = await client().request<{ items: Row[] }>('GET', '/v1/acl');
    table(items, { PATH: (r) => r.path, USER: (r) => r.user, ROLE: (r) => r.role, PROPAGATE: (r) => (r.propagate ? 'yes' : 'no') });
  });
  acl.command('set <path> <user> <role>')
    .option('--no-propagate', 'the path itself only, not what is below it')
    .action(async (path: string, u: string, role: string, opts: { propagate: boolean }) => {
      const e = await client().request<Row>('PUT', '/v1/acl', { path, user: u, role, propagate: opts.propagate });
      if (json()) print(e);
    });
  acl.command('delete <path> <user>').action(async (path: string, u: string) => void (await client().request('DELETE', `/v1/acl?path=${enc(path)}&user=${enc(u)}`)));

  program.command('role').description('roles').command('list').action(async () => {
    const { items } = await client().request<{ items: Row[] }>('GET', '/v1/roles');
    table(items, { ROLE: (r) => r.name, BUILTIN: (r) => (r.builtin ? 'yes' : 'no'), PRIVILEGES: (r) => (r.privileges as string[]).join(' ') });
  });

  const quota = program.command('quota').description('tenant quotas (cluster-wide)');
  quota.command('get <tenant>').action(async (t: string) => {
    const q = await client().request<{ limits: Row | null; usage: Row }>('GET', `/v1/tenants/${enc(t)}/quota`);
    if (json()) return print(q);
    const disk = (q.usage.diskBytes ?? {}) as Record<string, number>;
    const diskLimits = (q.limits?.diskGiB ?? {}) as Record<string, number>;
    const rows = [
      ...['vms', 'vcpus', 'memoryMiB', 'migrations'].map((k) => ({ k, used: q.usage[k], limit: q.limits?.[k] ?? 'none' })),
      ...[...new Set([...Object.keys(disk), ...Object.keys(diskLimits)])].map((p) => ({ k: `diskGiB ${p}`, used: Math.round(((disk[p] ?? 0) / 2 ** 30) * 100) / 100, limit: diskLimits[p] ?? 'none' })),
    ];
    table(rows, { RESOURCE: (r) => r.k, USED: (r) => r.used, LIMIT: (r) => r.limit });
  });
  quota.command('set <tenant>')
    .option('--vms <n>').option('--vcpus <n>').option('--memory <MiB>').option('--migrations <n>', 'outgoing migrations at once')
    .option('--disk <pool=GiB>', 'provisioned GiB in a pool (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .action(async (t: string, opts: { vms?: string; vcpus?: string; memory?: string; migrations?: string; disk?: string[] }) => {
      const disk = opts.disk && Object.fromEntries(opts.disk.map((d) => { const [pool, gib] = d.split('='); return [pool, Number(gib)]; }));
      const limits = { ...(opts.vms ? { vms: Number(opts.vms) } : {}), ...(opts.vcpus ? { vcpus: Number(opts.vcpus) } : {}), ...(opts.memory ? { memoryMiB: Number(opts.memory) } : {}), ...(opts.migrations ? { migrations: Number(opts.migrations) } : {}), ...(disk ? { diskGiB: disk } : {}) };
      const q = await client().request<Row>('PUT', `/v1/tenants/${enc(t)}/quota`, limits);
      if (json()) print(q);
    });
  quota.command('clear <tenant>').action(async (t: string) => void (await client().request('DELETE', `/v1/tenants/${enc(t)}/quota`)));

  program.command('audit')
    .description('the audit trail: mutating requests and refused credentials or privileges')
    .option('--since <seq>', 'after this sequence number', '0')
    .option('--principal <user>')
    .option('--limit <n>', 'at most', '100')
    .action(async (opts: { since: string; principal?: string; limit: string }) => {
      const q = new URLSearchParams({ since: opts.since, limit: opts.limit, ...(opts.principal ? { principal: opts.principal } : {}) });
      const { items } = await client().request<{ items: Row[] }>('GET', `/v1/audit?${q}`);
      table(items, { SEQ: (r) => r.seq, TIME: (r) => r.time, PRINCIPAL: (r) => r.principal, REQUEST: (r) => `${r.method} ${r.path}`, STATUS: (r) => (r.code ? `${r.status} ${r.code}` : r.status), SOURCE: (r) => r.source });
    });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
