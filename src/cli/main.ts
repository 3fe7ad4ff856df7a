/**
 * `novacron`: the command-line interface. Human-readable tables by default, `--json`
 * for scripts, a progress bar for long operations, and stable exit codes (exit-codes.ts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import Table from 'cli-table3';
import cliProgress from 'cli-progress';
import { ApiError, ConnectionError, NovaClient } from './client.js';
import { EXIT } from './exit-codes.js';
import { NovaError } from '../errors.js';
import type { OperationRecord } from '../operations/operation.js';
import type { MigrationRecord } from '../migration/record.js';
import type { VmRecord } from '../vm/record.js';
import { VERSION } from '../version.js';
import { addClusterCommands } from './cluster-commands.js';
import { addAuthCommands } from './auth-commands.js';
import { addStorageCommands, fmtBytes } from './storage-commands.js';

interface GlobalOpts {
  url: string;
  token?: string;
  tokenFile?: string;
  caFile?: string;
  json?: boolean;
}

/** The CA an HTTPS daemon's certificate is checked against: `file`, else this host's cluster CA when readable (else the system's). */
function readCa(file: string | undefined): string | undefined {
  const path = file ?? join(process.env.NOVACRON_DATA_DIR || './data', 'tls', 'ca.pem');
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (file) throw new NovaError('VALIDATION_FAILED', `cannot read the CA file ${file}: ${(err as Error).message}`);
    return undefined;
  }
}

/**
 * The token in `file`; without one, this host's daemon's admin.token (in
 * NOVACRON_DATA_DIR or ./data) when this user can read it, as Jupyter's and etcd's
 * generated credentials are found.
 */
function readToken(file: string | undefined): string | undefined {
  const path = file ?? join(process.env.NOVACRON_DATA_DIR || './data', 'admin.token');
  try {
    return readFileSync(path, 'utf8').trim() || undefined;
  } catch (err) {
    if (file) throw new NovaError('VALIDATION_FAILED', `cannot read the token file ${file}: ${(err as Error).message}`);
    return undefined;
  }
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function buildProgram(): Command {
  const program = new Command('novacron')
    .description('NovaCron: VM management for bare-metal hypervisor hosts')
    .version(VERSION)
    .addOption(new Option('--url <url>', 'daemon API address').env('NOVACRON_URL').default('http://127.0.0.1:7700'))
    .addOption(new Option('--token <token>', 'API bearer token (visible in ps: prefer --token-file or NOVACRON_API_TOKEN)').env('NOVACRON_API_TOKEN'))
    .addOption(new Option('--token-file <file>', 'file holding the API token (default: <data dir>/admin.token when readable)').env('NOVACRON_TOKEN_FILE'))
    .addOption(new Option('--ca-file <file>', 'CA certificate an https:// daemon is checked against (default: <data dir>/tls/ca.pem when readable, plus the system CAs)').env('NOVACRON_CA_FILE'))
    .option('--json', 'machine-readable JSON output')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('daemon')
    .description('run the NovaCron daemon on this host')
    .addOption(new Option('--listen <host:port>', 'API listen address (default 127.0.0.1:7700)').env('NOVACRON_LISTEN'))
    .addOption(new Option('--data-dir <dir>', 'data directory (default ./data)').env('NOVACRON_DATA_DIR'))
    .addOption(new Option('--driver <driver>', 'hypervisor driver').choices(['auto', 'qemu', 'sim']).env('NOVACRON_DRIVER'))
    .addOption(new Option('--node-id <id>', 'this node\'s id (default: hostname)').env('NOVACRON_NODE_ID'))
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).env('NOVACRON_LOG_LEVEL'))
    .addOption(new Option('--api-token <token>', 'also accept this administrator token (visible in ps: prefer --api-token-file)').env('NOVACRON_API_TOKEN'))
    .addOption(new Option('--api-token-file <file>', 'file holding an extra administrator token').env('NOVACRON_API_TOKEN_FILE'))
    .addOption(new Option('--api-tls <mode>', 'HTTPS on the API: auto (on any address but loopback) or on').choices(['auto', 'on']).env('NOVACRON_API_TLS'))
    .addOption(new Option('--api-cert-file <file>', 'the API\'s certificate (PEM), instead of the member certificate').env('NOVACRON_API_CERT_FILE'))
    .addOption(new Option('--api-key-file <file>', 'the key of --api-cert-file (PEM)').env('NOVACRON_API_KEY_FILE'))
    .addOption(new Option('--trust-ca-file <file>', 'also trust these CA certificates (PEM) for HTTPS to daemons outside this cluster (migration targets)').env('NOVACRON_TRUST_CA_FILE'))
    .addOption(new Option('--join <host:port>', 'join the cluster of the member whose cluster port this is, on first start (default: start a new one-member cluster)').env('NOVACRON_JOIN'))
    .addOption(new Option('--ca-hash <sha256:hex>', 'with --join: the pin of the cluster CA (refuses to join anything else)').env('NOVACRON_CA_HASH'))
    .addOption(new Option('--advertise <host:port>', 'API address other members and clients reach this member at (default: the listen address)').env('NOVACRON_ADVERTISE'))
    .addOption(new Option('--peer-listen <host:port>', 'cluster port: members\' mutual-TLS traffic (default: API host, API port + 1)').env('NOVACRON_PEER_LISTEN'))
    .addOption(new Option('--peer-advertise <host:port>', 'address other members dial this member\'s cluster port at (default: the peer listen address)').env('NOVACRON_PEER_ADVERTISE'))
    .addOption(new Option('--cluster-secret <secret>', 'shared secret peers authenticate with (generated when starting a new cluster; visible in ps: prefer --cluster-secret-file)').env('NOVACRON_CLUSTER_SECRET'))
    .addOption(new Option('--cluster-secret-file <file>', 'file holding the cluster secret').env('NOVACRON_CLUSTER_SECRET_FILE'))
    .addOption(new Option('--config <file>', 'JSON config file').env('NOVACRON_CONFIG'))
    .action(async (opts) => {
      const { runDaemon } = await import('./daemon-command.js');
      await runDaemon(opts);
    });

  const vm = program.command('vm').description('manage virtual machines');
  const client = () => {
    const g = program.opts<GlobalOpts>();
    if (program.getOptionValueSource('token') === 'cli') console.error('novacron: warning: --token is visible to every user of this host (ps); use --token-file or NOVACRON_API_TOKEN');
    const token = g.token ?? readToken(g.tokenFile);
    const ca = g.url.startsWith('https:') ? readCa(g.caFile) : undefined;
    return new NovaClient({ url: g.url, ...(token ? { token } : {}), ...(ca ? { ca } : {}) });
  };
  const json = () => program.opts<GlobalOpts>().json === true;

  vm.command('list')
    .description('list VMs')
    .option('--state <states>', 'only these states (comma-separated)')
    .option('--tenant <tenant>', 'only this tenant')
    .option('--label <key=value>', 'only VMs with this label (repeatable)', collect)
    .option('--limit <n>', 'page size', '100')
    .option('--all', 'fetch every page')
    .action(async (opts) => {
      const q = new URLSearchParams();
      if (opts.state) q.set('state', opts.state);
      if (opts.tenant) q.set('tenant', opts.tenant);
      for (const l of opts.label ?? []) q.append('label', l);
      q.set('limit', opts.limit);
      const items: VmRecord[] = [];
      for (;;) {
        const page = await client().listVms(q);
        items.push(...page.items);
        if (!opts.all || !page.nextCursor) break;
        q.set('cursor', page.nextCursor);
      }
      if (json()) return print(items);
      const table = new Table({ head: ['ID', 'NAME', 'STATE', 'VCPUS', 'MEMORY', 'TENANT', 'NODE'], style: { head: [], border: [] } });
      for (const v of items) table.push([v.id, v.name, v.state, v.spec.vcpus, `${v.spec.memoryMiB} MiB`, v.spec.tenant, v.node]);
      console.log(table.toString());
    });

  vm.command('get <vm>')
    .description('show one VM (by id or name)')
    .action(async (ref: string) => {
      const v = await client().getVm(ref);
      if (json()) return print(v);
      const table = new Table({ style: { head: [], border: [] } });
      table.push(
        { id: v.id },
        { name: v.name },
        { state: v.state + (v.stateReason ? ` (${v.stateReason})` : '') },
        { vcpus: String(v.spec.vcpus) },
        { memory: `${v.spec.memoryMiB} MiB` },
        { disks: v.spec.disks.map((d) => `${d.name}:${d.volume ?? `${d.pool}/${v.id}-${d.name}${d.sizeMiB ? ` (${d.sizeMiB} MiB)` : ''}`}`).join(', ') || '-' },
        { nics: v.spec.nics.map((n) => `${n.name}:${n.mode}`).join(', ') || '-' },
        { boot: v.spec.boot.type },
        { labels: Object.entries(v.spec.labels).map(([k, val]) => `${k}=${val}`).join(', ') || '-' },
        { tenant: v.spec.tenant },
        { node: v.node },
        { created: v.createdAt },
        { updated: v.updatedAt },
      );
      console.log(table.toString());
    });

  vm.command('create')
    .description('create a VM')
    .option('-f, --file <spec.json>', 'full spec as JSON (flags override its fields)')
    .option('--name <name>', 'VM name (DNS label)')
    .option('--vcpus <n>', 'virtual CPUs')
    .option('--memory <MiB>', 'memory in MiB')
    .option('--disk <name:sizeMiB[:format[:pool]]>', 'a new disk, a volume made with the VM (repeatable)', collect)
    .option('--attach <name=pool/volume>', 'an existing volume as a disk (repeatable)', collect)
    .option('--kernel <pool/volume>', 'direct kernel boot: kernel volume')
    .option('--initrd <pool/volume>', 'direct kernel boot: initramfs volume')
    .option('--cdrom <pool/volume>', 'an ISO volume as CD-ROM')
    .option('--cmdline <args>', 'direct kernel boot: kernel command line')
    .option('--label <key=value>', 'label (repeatable)', collect)
    .option('--tenant <tenant>', 'tenant')
    .action(async (opts) => {
      const spec: Record<string, unknown> = opts.file ? JSON.parse(readFileSync(opts.file, 'utf8')) : {};
      if (opts.name) spec.name = opts.name;
      if (opts.vcpus) spec.vcpus = toInt(opts.vcpus, '--vcpus');
      if (opts.memory) spec.memoryMiB = toInt(opts.memory, '--memory');
      if (opts.disk || opts.attach) {
        spec.disks = [
          ...((opts.disk as string[] | undefined) ?? []).map((d) => {
            const [name, size, format, pool] = d.split(':');
            return { name, sizeMiB: toInt(size ?? '', '--disk size'), ...(format ? { format } : {}), ...(pool ? { pool } : {}) };
          }),
          ...((opts.attach as string[] | undefined) ?? []).map((a) => {
            const [name, volume] = a.split('=', 2);
            return { name, volume };
          }),
        ];
      }
      if (opts.cdrom) spec.cdrom = opts.cdrom;
      if (opts.kernel) spec.boot = { type: 'kernel', kernel: opts.kernel, ...(opts.initrd ? { initrd: opts.initrd } : {}), ...(opts.cmdline ? { cmdline: opts.cmdline } : {}) };
      if (opts.label) spec.labels = Object.fromEntries((opts.label as string[]).map((l) => l.split('=', 2)));
      if (opts.tenant) spec.tenant = opts.tenant;
      const v = await client().createVm(spec);
      if (json()) return print(v);
      console.log(`created VM ${v.name} (${v.id}), state ${v.state}`);
    });

  const actions: Array<[string, string]> = [
    ['start', 'start a VM'],
    ['stop', 'force-stop a VM (like pulling the plug)'],
    ['shutdown', 'ACPI shutdown; forced after --timeout'],
    ['pause', 'pause a running VM'],
    ['resume', 'resume a paused VM'],
    ['reboot', 'reboot a running VM'],
    ['checkpoint', 'save RAM and device state to disk and stop the VM (the next start resumes it)'],
    ['restore', 'resume a VM from its checkpoint'],
  ];
  for (const [kind, description] of actions) {
    const cmd = vm
      .command(`${kind} <vm>`)
      .description(description)
      .option('--no-wait', 'return once the operation is accepted');
    if (kind === 'shutdown') cmd.option('--timeout <ms>', 'force after this many milliseconds');
    cmd.action(async (ref: string, opts) => {
      const body = opts.timeout ? { timeoutMs: toInt(opts.timeout, '--timeout') } : undefined;
      await follow(client(), await client().action(ref, kind, body), opts.wait, json());
    });
  }

  vm.command('template <vm>')
    .description('turn a stopped VM into a template (read-only volumes; make VMs from it with `vm clone`)')
    .action(async (ref: string) => {
      const v = await client().request<VmRecord>('POST', `/v1/vms/${encodeURIComponent(ref)}/template`);
      if (json()) return print(v);
      console.log(`VM ${v.name} is a template now`);
    });

  vm.command('clone <template> <name>')
    .description('a new VM from a template: linked clones of its disks (qcow2 overlays), or --full copies')
    .option('--full', 'copy the template\'s disks instead of linking to them')
    .action(async (template: string, name: string, opts: { full?: boolean }) => {
      const v = await client().createVm({ name, fromTemplate: template, linked: !opts.full });
      if (json()) return print(v);
      console.log(`created VM ${v.name} (${v.id}) from template ${template}${opts.full ? ' (full copies)' : ' (linked)'}`);
    });

  vm.command('move-disk <vm> <disk>')
    .description('move a disk to another pool (live for a running VM); progress bar, Ctrl-C leaves it running (cancel with `operation cancel`)')
    .requiredOption('--pool <pool>', 'the target pool')
    .option('--bandwidth <MBps>', 'cap the copy, MB/s')
    .option('--no-wait', 'return once the operation is accepted')
    .action(async (ref: string, disk: string, opts: { pool: string; bandwidth?: string; wait: boolean }) => {
      const body = { pool: opts.pool, ...(opts.bandwidth ? { bandwidthMBps: Number(opts.bandwidth) } : {}) };
      const op = await client().request<OperationRecord>('POST', `/v1/vms/${encodeURIComponent(ref)}/disks/${encodeURIComponent(disk)}/move`, body);
      await follow(client(), op, opts.wait, json());
    });

  program.command('operation')
    .description('long-running operations')
    .command('cancel <id>')
    .description('cancel a cancellable operation (a disk move)')
    .action(async (id: string) => {
      const op = await client().request<OperationRecord>('DELETE', `/v1/operations/${encodeURIComponent(id)}`);
      if (json()) return print(op);
      console.log(`cancelling ${op.kind} ${op.id}`);
    });

  vm.command('console <vm>')
    .description('the guest\'s serial console (Ctrl-] leaves); for scripts, --for and --until print it and exit')
    .option('--for <seconds>', 'print the console for this many seconds (with --until: at most), then exit')
    .option('--until <pattern>', 'print the console until its output matches this regular expression (exit 1 if it never does)')
    .action(async (ref: string, opts: { for?: string; until?: string }) => {
      const { runConsole } = await import('./console-command.js');
      if (opts.for !== undefined && !(Number(opts.for) > 0)) throw new UsageError(`--for must be a number of seconds, got "${opts.for}"`);
      let until: RegExp | undefined;
      try {
        until = opts.until !== undefined ? new RegExp(opts.until, 'm') : undefined;
      } catch (e) {
        throw new UsageError(`--until: ${(e as Error).message}`);
      }
      await runConsole(client(), ref, { ...(opts.for !== undefined ? { for: Number(opts.for) } : {}), ...(until ? { until } : {}) });
    });

  vm.command('delete <vm>')
    .description('delete a VM and the volumes made with it')
    .option('--force', 'stop it first if it is running')
    .option('--keep-disks', 'keep the volumes made with it (as ordinary volumes)')
    .option('--no-wait', 'return once the operation is accepted')
    .action(async (ref: string, opts) => {
      await follow(client(), await client().deleteVm(ref, { force: opts.force, keepDisks: opts.keepDisks }), opts.wait, json());
    });

  vm.command('migrate <vm>')
    .description('live-migrate a running VM to another NovaCron daemon')
    .requiredOption('--to <target>', 'target: a cluster member id or node name, or a daemon address like http://10.0.0.2:7700')
    .option('--max-downtime <ms>', 'downtime target (default 50)')
    .option('--bandwidth <MBps>', 'cap on wire bandwidth, MB/s')
    .option('--channels <n>', 'parallel multifd channels (default 2)')
    .addOption(new Option('--transport <path>', "QEMU's stream: through NovaCron's codec (relay), QEMU to QEMU over mutual TLS (direct: members only), or the faster as predicted").choices(['auto', 'relay', 'direct']))
    .option('--dry-run', 'predict downtime and total time, do not migrate')
    .option('--force', 'migrate even if the prediction misses the target (with auto-converge)')
    .option('--max-throttle <percent>', 'ceiling on the vCPU throttle of a forced migration (default 85; each pause is 10 ms × p/(100−p))')
    .option('--no-wait', 'return once the migration has started')
    .action(async (ref: string, opts) => {
      const body: Record<string, unknown> = { target: opts.to, dryRun: Boolean(opts.dryRun), force: Boolean(opts.force) };
      if (opts.maxDowntime) body.maxDowntimeMs = toInt(opts.maxDowntime, '--max-downtime');
      if (opts.bandwidth) body.bandwidthMBps = Number(opts.bandwidth);
      if (opts.channels) body.channels = toInt(opts.channels, '--channels');
      if (opts.transport) body.transport = opts.transport;
      if (opts.maxThrottle) body.maxThrottlePercent = toInt(opts.maxThrottle, '--max-throttle');
      const c = client();
      const r = await c.migrate(ref, body);
      if ('dryRun' in r) {
        if (json()) return print(r);
        const p = r.prediction;
        console.log(`prediction${p.transport ? ` (${p.transport})` : ''}: ${p.converges ? 'converges' : 'does NOT converge without throttling'}; downtime ${fmtMs(p.downtimeMs)}, total ${fmtMs(p.totalMs)}, ${p.rounds} rounds, ${fmtBytes(p.bytesWire)} on the wire`);
        for (const alt of p.alternatives ?? []) console.log(`  ${alt.transport} instead: ${alt.converges ? 'converges' : 'does NOT converge'}; downtime ${fmtMs(alt.downtimeMs)}, total ${fmtMs(alt.totalMs)}`);
        console.log(`inputs: dirty rate ${fmtBytes(p.inputs.dirtyBytesPerSec)}/s, codec ratio ${p.inputs.firstRatio.toFixed(2)}× first send, ${p.inputs.resendRatio.toFixed(2)}× re-sends${p.converges ? '' : `; needs ~${p.throttleNeededPercent}% vCPU throttle`}`);
        return;
      }
      if (!opts.wait) return json() ? print(r) : console.log(`migration ${r.id} started`);
      const tty = process.stderr.isTTY && !json();
      const bar = tty ? new cliProgress.SingleBar({ format: 'migrate {bar} {percentage}% | {phase} | round {rounds} | {wire} on wire ({ratio}×) | {remaining} left', hideCursor: true }, cliProgress.Presets.shades_classic) : undefined;
      bar?.start(100, 0, { phase: r.phase, rounds: 0, wire: '0 B', ratio: '1.00', remaining: '?' });
      const done = await c.waitForMigration(r.id, (m) => {
        const p = m.progress;
        const pct = p.totalBytes > 0 ? Math.min(99, Math.round((1 - p.remainingBytes / p.totalBytes) * 100)) : 0;
        bar?.update(m.state === 'completed' ? 100 : pct, { phase: m.phase, rounds: p.rounds, wire: fmtBytes(p.bytesWire), ratio: p.compressionRatio.toFixed(2), remaining: fmtBytes(p.remainingBytes) });
      });
      bar?.stop();
      if (json()) print(done);
      else if (done.state === 'completed') console.log(`migrated ${done.vmName} to ${done.peer}${done.transport ? ` (${done.transport})` : ''}: downtime ${done.downtimeMs?.qemu ?? '?'} ms (QEMU), ${done.downtimeMs?.measured ?? '?'} ms stop→resume; total ${fmtMs(done.totalMs ?? 0)}; ${fmtBytes(done.progress.bytesWire)} on the wire for ${fmtBytes(done.progress.bytesRaw)} (${done.progress.compressionRatio}×)`);
      else console.error(`migration ${done.state}: ${done.error?.code}: ${done.error?.message}`);
      if (done.state !== 'completed') process.exitCode = EXIT.OPERATION_FAILED;
    });

  const mig = program.command('migration').description('follow and cancel live migrations');
  mig.command('list')
    .description('migrations this daemon took part in, newest first')
    .action(async () => {
      const { items } = await client().request<{ items: MigrationRecord[] }>('GET', '/v1/migrations');
      if (json()) return print(items);
      const table = new Table({ head: ['ID', 'VM', 'ROLE', 'PEER', 'PATH', 'STATE', 'PHASE', 'DOWNTIME', 'WIRE', 'RATIO'], style: { head: [], border: [] } });
      for (const m of items) table.push([m.id, m.vmName, m.role, m.peer, m.transport ?? (m.mode === 'cold' ? 'files' : 'relay'), m.state, m.phase, m.downtimeMs?.qemu !== undefined ? `${m.downtimeMs.qemu} ms` : '-', fmtBytes(m.progress.bytesWire), `${m.progress.compressionRatio}×`]);
      console.log(table.toString());
    });
  mig.command('get <id>')
    .description('show one migration')
    .action(async (id: string) => print(await client().getMigration(id)));
  mig.command('cancel <id>')
    .description('cancel a running migration; the VM keeps running on the source')
    .action(async (id: string) => {
      const m = await client().cancelMigration(id);
      if (json()) return print(m);
      console.log(`cancelling migration ${m.id} of ${m.vmName}`);
    });

  addClusterCommands(program, client, json);
  addAuthCommands(program, client, json);
  addStorageCommands(program, client, json);
  return program;
}

function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return '∞';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Shows an operation to completion with a progress bar (TTY) and sets the exit code. */
async function follow(client: NovaClient, op: OperationRecord, wait: boolean, asJson: boolean): Promise<void> {
  if (!wait) return asJson ? print(op) : console.log(`operation ${op.id} (${op.kind}) accepted`);
  const tty = process.stderr.isTTY && !asJson;
  const bar = tty ? new cliProgress.SingleBar({ format: `${op.kind} {bar} {percentage}% | {message}`, clearOnComplete: false, hideCursor: true }, cliProgress.Presets.shades_classic) : undefined;
  const message = (o: OperationRecord) => {
    const d = o.progress.detail;
    return d?.totalBytes ? `${o.progress.message} | ${fmtBytes(d.copiedBytes ?? 0)} of ${fmtBytes(d.totalBytes)} at ${fmtBytes(d.bytesPerSec ?? 0)}/s` : o.progress.message;
  };
  bar?.start(100, op.progress.percent, { message: message(op) });
  const done = await client.waitForOperation(op.id, (o) => bar?.update(o.progress.percent, { message: message(o) }));
  bar?.stop();
  if (asJson) print(done);
  else if (done.state === 'succeeded') console.log(`${done.kind} succeeded`);
  else console.error(`${done.kind} failed: ${done.error?.code}: ${done.error?.message}`);
  if (done.state !== 'succeeded') process.exitCode = EXIT.OPERATION_FAILED;
}

function print(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}

function toInt(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new UsageError(`${name} must be an integer, got "${value}"`);
  return n;
}

class UsageError extends Error {}

export function exitCodeFor(err: unknown): number {
  if (err instanceof ApiError) {
    if (err.status === 404) return EXIT.NOT_FOUND;
    if (err.status === 409) return EXIT.CONFLICT;
    if (err.status >= 400 && err.status < 500) return EXIT.REJECTED;
    return EXIT.FAILURE;
  }
  if (err instanceof NovaError) {
    if (err.code === 'CONFIG_INVALID') return EXIT.USAGE;
    return err.status === 409 ? EXIT.CONFLICT : EXIT.FAILURE;
  }
  if (err instanceof ConnectionError) return EXIT.UNREACHABLE;
  if (err instanceof UsageError) return EXIT.USAGE;
  return EXIT.FAILURE;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
      return;
    }
    const code = exitCodeFor(err);
    if (program.opts<GlobalOpts>().json && err instanceof ApiError) {
      console.error(JSON.stringify({ error: { code: err.code, message: err.message, details: err.details } }));
    } else {
      console.error(`novacron: ${err instanceof ApiError || err instanceof NovaError ? `${err.code}: ` : ''}${(err as Error).message}`);
    }
    process.exitCode = code;
  }
}
