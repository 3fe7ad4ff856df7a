/** `novacron cluster …`, `novacron kv …` and `novacron lock …`. */
import type { Command } from 'commander';
import Table from 'cli-table3';
import type { NovaClient } from './client.js';
import { NovaError } from '../errors.js';
import type { ClusterStatus } from '../cluster/cluster.js';
import type { HostRecord, MigrationSummary, Placement } from '../cluster/inventory.js';

export function addClusterCommands(program: Command, client: () => NovaClient, json: () => boolean): void {
  const print = (v: unknown) => console.log(JSON.stringify(v, null, 2));
  const cluster = program.command('cluster').description('cluster membership and Raft state (new daemons join with `novacron daemon --join HOST:PORT`)');

  cluster.command('init')
    .description('make a data directory the first member of a new cluster, offline, with its CA, and print how others join (a daemon started without --join does this itself)')
    .option('--data-dir <dir>', 'data directory', './data')
    .option('--advertise <host:port>', 'where peers will reach this member\'s cluster port: the daemon\'s --peer-advertise, or its --peer-listen address', '127.0.0.1:7701')
    .option('--cluster-secret <secret>', 'shared secret (default: generated)')
    .action(async (opts: { dataDir: string; advertise: string; clusterSecret?: string }) => {
      const [{ bootstrapCluster }, { bootstrapMaterial }, { caPin }, { ConfigSchema, parseListen }] = await Promise.all([
        import('../cluster/cluster.js'), import('../cluster/cluster-ca.js'), import('../tls/pki.js'), import('../config.js'),
      ]);
      // The daemon's own rules for these two settings.
      const checked = ConfigSchema.pick({ peerAdvertise: true, clusterSecret: true }).safeParse({ peerAdvertise: opts.advertise, clusterSecret: opts.clusterSecret });
      const flag = (key: PropertyKey) => String(key).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
      if (!checked.success) throw new NovaError('CONFIG_INVALID', checked.error.issues.map((i) => `--${i.path.map(flag).join('.')}: ${i.message}`).join('; '));
      const id = bootstrapCluster(opts.dataDir, opts.advertise, opts.clusterSecret);
      const caHash = caPin((await bootstrapMaterial(opts.dataDir, id.clusterId, id.memberId, [parseListen(opts.advertise).host])).caPem);
      if (json()) return print({ clusterId: id.clusterId, memberId: id.memberId, secret: id.secret, caHash, dataDir: opts.dataDir, advertise: opts.advertise });
      console.log(`cluster ${id.clusterId}: member ${id.memberId} in ${opts.dataDir}, cluster port reachable at ${opts.advertise}`);
      console.log(`start it:     novacron daemon --data-dir ${opts.dataDir} --peer-listen ${opts.advertise}`);
      console.log(`join others:  novacron daemon --join ${opts.advertise} --ca-hash ${caHash} --cluster-secret-file <a file holding ${id.secret}>`);
    });

  cluster.command('join-command')
    .description('print how another daemon joins this cluster: the cluster port to --join and the CA pin (the secret is in cluster.json on any member)')
    .action(async () => {
      const st = await client().request<ClusterStatus>('GET', '/v1/cluster');
      if (json()) return print({ join: st.peerAddress, caHash: st.caHash });
      console.log(`novacron daemon --join ${st.peerAddress} --ca-hash ${st.caHash} --cluster-secret-file <file holding the "secret" of a member's cluster.json>`);
    });

  cluster.command('status')
    .description('term, leader, commit/applied index and every member\'s replication progress')
    .action(async () => {
      const st = await client().request<ClusterStatus>('GET', '/v1/cluster');
      if (json()) return print(st);
      console.log(`cluster ${st.clusterId}  member ${st.id} (${st.role})  term ${st.term}  leader ${st.leader || 'none'}`);
      console.log(`log ${st.firstIndex}..${st.lastIndex}  commit ${st.commit}  applied ${st.applied}`);
      const table = new Table({ head: ['MEMBER', 'ADDRESS', 'ROLE', 'MATCHED', 'STATE', 'LINK'], style: { head: [], border: [] } });
      const address = new Map(st.addresses.map((a) => [a.id, a.address]));
      const progress = new Map(st.progress.map((p) => [p.id, p]));
      const peers = new Map(st.peers.map((p) => [p.id, p]));
      for (const id of [...st.voters, ...st.learners]) {
        const p = progress.get(id);
        const link = id === st.id ? 'self' : peers.get(id)?.connected ? 'connected' : (peers.get(id)?.lastError ?? '-');
        table.push([
          id === st.leader ? `${id} *` : String(id),
          peers.get(id)?.address ?? address.get(id) ?? '?',
          st.voters.includes(id) ? 'voter' : 'learner',
          p ? String(p.matched) : '-',
          p?.state ?? '-',
          link,
        ]);
      }
      console.log(table.toString());
    });

  cluster.command('hosts')
    .description('every member host: address, role, capacity, VM count, last heartbeat')
    .action(async () => {
      const { items } = await client().request<{ items: Array<HostRecord & { role: string }> }>('GET', '/v1/cluster/hosts');
      if (json()) return print(items);
      const table = new Table({ head: ['MEMBER', 'NODE', 'ADDRESS', 'ROLE', 'DRIVER', 'CPUS', 'MEMORY', 'VMS', 'HEARTBEAT'], style: { head: [], border: [] } });
      for (const h of items) table.push([String(h.member), h.node, h.address, h.role, h.driver, String(h.cpus), `${h.memoryMiB} MiB`, String(h.vms), h.heartbeatAt]);
      console.log(table.toString());
    });

  cluster.command('vms')
    .description('every VM in the cluster and the member it runs on')
    .option('--member <id>', 'only VMs on this member')
    .option('--name <name>', 'only the VM with this name')
    .action(async (opts: { member?: string; name?: string }) => {
      const q = new URLSearchParams({ ...(opts.member ? { member: opts.member } : {}), ...(opts.name ? { name: opts.name } : {}) }).toString();
      const { items } = await client().request<{ items: Placement[] }>('GET', `/v1/cluster/vms${q ? `?${q}` : ''}`);
      if (json()) return print(items);
      const table = new Table({ head: ['ID', 'NAME', 'MEMBER', 'NODE', 'STATE', 'VCPUS', 'MEMORY'], style: { head: [], border: [] } });
      for (const p of items) table.push([p.vmId, p.name, String(p.member), p.node, p.state, String(p.vcpus), `${p.memoryMiB} MiB`]);
      console.log(table.toString());
    });

  cluster.command('migrations')
    .description('migrations in flight and recently finished, across the cluster (both sides of each)')
    .option('--state <state>', 'only running, completed, failed or cancelled ones')
    .action(async (opts: { state?: string }) => {
      const { items } = await client().request<{ items: MigrationSummary[] }>('GET', `/v1/cluster/migrations${opts.state ? `?state=${encodeURIComponent(opts.state)}` : ''}`);
      if (json()) return print(items);
      const table = new Table({ head: ['ID', 'VM', 'MEMBER', 'ROLE', 'MODE', 'STATE', 'PHASE', 'PEER'], style: { head: [], border: [] } });
      for (const m of items) table.push([m.id, m.vmName, String(m.member), m.role, m.mode, m.state, m.phase, m.peer]);
      console.log(table.toString());
    });

  cluster.command('leave')
    .description('remove the daemon at --url from its cluster (it stops taking part once the change commits)')
    .action(async () => {
      const c = client();
      const { id } = await c.request<ClusterStatus>('GET', '/v1/cluster');
      const members = await c.request<{ voters: number[]; learners: number[] }>('DELETE', `/v1/cluster/members/${id}`);
      if (json()) return print(members);
      console.log(`member ${id} left; voters now ${members.voters.join(', ')}`);
    });

  cluster.command('remove <member>')
    .description('remove another member (e.g. a host that is gone for good)')
    .action(async (member: string) => {
      const members = await client().request<{ voters: number[] }>('DELETE', `/v1/cluster/members/${encodeURIComponent(member)}`);
      if (json()) return print(members);
      console.log(`member ${member} removed; voters now ${members.voters.join(', ')}`);
    });

  cluster.command('transfer-leader <member>')
    .description('hand Raft leadership to another voter')
    .action(async (member: string) => {
      const c = client();
      await c.request('POST', '/v1/cluster/leader', { to: Number(member) });
      for (let i = 0; i < 50; i++) {
        const st = await c.request<ClusterStatus>('GET', '/v1/cluster');
        if (String(st.leader) === member) {
          if (json()) return print({ leader: st.leader, term: st.term });
          return console.log(`member ${member} leads now (term ${st.term})`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`leadership did not move to ${member} within 5 s (is it caught up and reachable?)`);
    });

  const kv = program.command('kv').description('the replicated key-value store (linearizable unless --stale)');
  kv.command('get <key>')
    .option('--stale', 'read this member\'s applied state without confirming leadership')
    .action(async (key: string, opts: { stale?: boolean }) => {
      const r = await client().request<{ value: string }>('GET', `/v1/kv/${encodeURIComponent(key)}${opts.stale ? '?consistency=stale' : ''}`);
      if (json()) return print(r);
      console.log(r.value);
    });
  kv.command('put <key> <value>').action(async (key: string, value: string) => {
    const r = await client().request<{ index: number }>('PUT', `/v1/kv/${encodeURIComponent(key)}`, { value });
    if (json()) return print(r);
    console.log(`ok (index ${r.index})`);
  });
  kv.command('delete <key>').action(async (key: string) => {
    const r = await client().request('DELETE', `/v1/kv/${encodeURIComponent(key)}`);
    if (json()) print(r);
  });

  const lock = program.command('lock').description('leased locks with fencing tokens');
  lock.command('acquire <name>')
    .requiredOption('--holder <holder>', 'who takes the lock')
    .option('--ttl <ms>', 'lease length in ms', '30000')
    .action(async (name: string, opts: { holder: string; ttl: string }) => {
      const g = await client().request<{ token: number; expiresMs: number }>('POST', `/v1/locks/${encodeURIComponent(name)}`, { holder: opts.holder, ttlMs: Number(opts.ttl) });
      if (json()) return print(g);
      console.log(`granted: token ${g.token}, expires ${new Date(g.expiresMs).toISOString()}`);
    });
  lock.command('release <name>')
    .requiredOption('--token <token>', 'fencing token from the grant')
    .action(async (name: string, opts: { token: string }) => {
      await client().request('DELETE', `/v1/locks/${encodeURIComponent(name)}?token=${encodeURIComponent(opts.token)}`);
      if (!json()) console.log('released');
    });
  lock.command('get <name>').action(async (name: string) => print(await client().request('GET', `/v1/locks/${encodeURIComponent(name)}`)));
}
