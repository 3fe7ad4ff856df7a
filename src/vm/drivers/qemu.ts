/**
 * The QEMU/KVM driver: one `qemu-system-x86_64` process per VM, driven over QMP.
 *
 * VM processes are started in their own session (detached) so they outlive the
 * daemon; each VM's directory under `<dataDir>/vms/<id>/` holds its QMP socket, pid
 * file, serial console log and QEMU's stderr. After a daemon restart `inspect` finds the
 * process by its pid file, checks it is really this VM's QEMU, and reattaches over QMP.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statfsSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { DriverError, type DiskMedia, type DiskMover, type DiskSnapshot, type DiskSnapshots, type DriverInstanceState, type HypervisorDriver, type LiveMigration, type MediaResolver, type ShutdownOptions, type VmMedia, type VmStats } from '../driver.js';
import type { VmRecord } from '../record.js';
import { unrestrictedUserNic, type VmSpec } from '../spec.js';
import { probeAccelerator } from '../qemu/accel.js';
import { QemuLiveMigration } from '../qemu/migration.js';
import { QemuDiskMover } from '../qemu/disk-move.js';
import { QmpClient, type QmpEvent } from '../qemu/qmp.js';

export interface QemuDriverOptions {
  dataDir: string;
  log: Logger;
  /** Path or name of qemu-system-x86_64. */
  binary?: string;
  /** Path or name of qemu-img. */
  imgBinary?: string;
  /** Skip the probe and use this accelerator. */
  accel?: 'kvm' | 'tcg';
  /** hugetlbfs mount used for `memoryBacking: hugepages`. Default /dev/hugepages. */
  hugepagesPath?: string;
  /** Resolves a VM's volumes into what QEMU opens (every path checked by the storage service). */
  media: MediaResolver;
}

/** Free PCIe root ports created at start so disks can be hot-plugged on q35. */
const HOTPLUG_PORTS = 4;
const HUGETLBFS_MAGIC = 0x958458f6;

interface Instance {
  pid: number;
  qmp: QmpClient;
  /** Set when NovaCron itself asked the process to end. */
  expectedExit: boolean;
  /** The guest powered itself off (QMP SHUTDOWN with guest=true). */
  guestShutdown: boolean;
  exited: Promise<void>;
  child?: ChildProcess;
  /** QMP timestamps (ms since epoch) of the last STOP and RESUME events. */
  stoppedAt?: number;
  resumedAt?: number;
}

const UNIX_PATH_MAX = 107;
/** USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on Linux x86-64). */
const CLOCK_TICKS = 100;

export class QemuDriver implements HypervisorDriver {
  readonly name = 'qemu' as const;
  readonly events = new EventEmitter();
  #opts: Required<Omit<QemuDriverOptions, 'accel'>> & Pick<QemuDriverOptions, 'accel'>;
  #instances = new Map<string, Instance>();

  readonly migration: LiveMigration;
  readonly diskMover: DiskMover;

  constructor(opts: QemuDriverOptions) {
    this.#opts = { binary: 'qemu-system-x86_64', imgBinary: 'qemu-img', hugepagesPath: '/dev/hugepages', ...opts };
    this.migration = new QemuLiveMigration({
      vmDir: (id) => this.vmDir(id),
      spawnIncoming: async (vm) => {
        await this.create(vm); // its volumes were made by the VM service, empty for a storage migration to fill
        return (await this.#spawn(vm, 'incoming')).runtime;
      },
      instance: async (id) => {
        const inst = await this.#require(id, 'migrate');
        return { qmp: inst.qmp, pid: inst.pid, exited: inst.exited, stoppedAt: () => inst.stoppedAt, resumedAt: () => inst.resumedAt };
      },
      stop: (id) => this.stop(id),
    });
    this.diskMover = new QemuDiskMover((id) => this.#require(id, 'move-disk'));
  }

  vmDir(vmId: string): string {
    return join(this.#opts.dataDir, 'vms', vmId);
  }

  /** The guest's serial console socket, while its QEMU runs. */
  consoleSocket(vmId: string): string | undefined {
    const path = join(this.vmDir(vmId), 'console.sock');
    return this.#instances.has(vmId) && existsSync(path) ? path : undefined;
  }

  /** The VM's VNC server socket (one connection per viewer), while its QEMU runs. */
  vncSocket(vmId: string): string | undefined {
    const path = join(this.vmDir(vmId), 'vnc.sock');
    return this.#instances.has(vmId) && existsSync(path) ? path : undefined;
  }

  /** Problems QEMU would hit, found before it is started (→ 422). */
  validate(spec: VmSpec): string[] {
    const problems: string[] = [];
    if (spec.memoryMiB * 1024 * 1024 > totalmem()) problems.push(`memoryMiB ${spec.memoryMiB} exceeds the host's ${Math.floor(totalmem() / 1048576)} MiB`);
    if (spec.memoryBacking === 'hugepages') {
      let magic: number | undefined;
      try {
        magic = statfsSync(this.#opts.hugepagesPath).type;
      } catch {
        /* reported below */
      }
      if (magic !== HUGETLBFS_MAGIC) problems.push(`memoryBacking hugepages needs hugetlbfs mounted at ${this.#opts.hugepagesPath}`);
    }
    return problems;
  }

  async create(vm: VmRecord): Promise<void> {
    const dir = this.vmDir(vm.id);
    if (join(dir, 'qmp.sock').length > UNIX_PATH_MAX) throw new DriverError('create', `data directory path too long for a unix socket: ${dir}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** Adds a disk; on a running VM it is hot-plugged into a free PCIe root port. */
  async attachDisk(vm: VmRecord, disk: DiskMedia, running: boolean): Promise<void> {
    if (!running) return;
    const { qmp } = await this.#require(vm.id, 'attach-disk');
    const node = `drive-${disk.name}`;
    await qmp.execute('blockdev-add', { driver: disk.format, 'node-name': node, 'read-only': disk.readOnly, file: { driver: 'file', filename: disk.path } });
    let lastError: Error | undefined;
    for (let port = 0; port < HOTPLUG_PORTS; port++) {
      try {
        await qmp.execute('device_add', { driver: 'virtio-blk-pci', drive: node, id: `disk-${disk.name}`, bus: `hp${port}` });
        return;
      } catch (err) {
        lastError = err as Error; // port taken; try the next one
      }
    }
    await qmp.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
    throw new DriverError('attach-disk', `no free hot-plug port (${HOTPLUG_PORTS} per boot): ${lastError?.message}`);
  }

  async diskSnapshot(vmId: string, disk: string, op: 'create' | 'delete', name: string): Promise<void> {
    const { qmp } = await this.#require(vmId, 'snapshot');
    await qmp.execute(op === 'create' ? 'blockdev-snapshot-internal-sync' : 'blockdev-snapshot-delete-internal-sync', { device: `drive-${disk}`, name }).catch((err: Error) => {
      throw new DriverError('snapshot', `QEMU could not ${op} snapshot "${name}" of disk "${disk}": ${err.message}`);
    });
  }

  async resizeDisk(vmId: string, disk: string, sizeBytes: number): Promise<void> {
    const { qmp } = await this.#require(vmId, 'resize');
    // A disk from the command line is the block backend `drive-<disk>`; a hot-plugged one is the node of that name.
    try {
      await qmp.execute('block_resize', { device: `drive-${disk}`, size: sizeBytes });
    } catch {
      await qmp.execute('block_resize', { 'node-name': `drive-${disk}`, size: sizeBytes }).catch((err: Error) => {
        throw new DriverError('resize', `QEMU could not resize disk "${disk}": ${err.message}`);
      });
    }
  }

  vmFilePath(vmId: string, name: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw new DriverError('migrate', `refusing file name "${name}"`);
    mkdirSync(this.vmDir(vmId), { recursive: true });
    return join(this.vmDir(vmId), name);
  }

  /** qcow2 internal snapshots: QMP on a running VM, qemu-img on a stopped one. */
  readonly snapshots: DiskSnapshots = {
    list: async (vm) => {
      const byName = new Map<string, DiskSnapshot>();
      for (const disk of this.#qcow2Disks(vm)) {
        const info = JSON.parse(run(this.#opts.imgBinary, ['info', '-U', '-f', 'qcow2', '--output=json', disk.path], 'snapshot')) as {
          snapshots?: Array<{ name: string; 'date-sec': number; 'vm-state-size': number }>;
        };
        for (const s of info.snapshots ?? []) {
          const entry = byName.get(s.name) ?? { name: s.name, createdAt: new Date(s['date-sec'] * 1000).toISOString(), vmStateBytes: s['vm-state-size'], disks: [] };
          entry.disks.push(disk.name);
          byName.set(s.name, entry);
        }
      }
      return [...byName.values()].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
    },
    create: async (vm, name, running) => {
      for (const disk of this.#qcow2Disks(vm)) {
        if (running) await (await this.#require(vm.id, 'snapshot')).qmp.execute('blockdev-snapshot-internal-sync', { device: `drive-${disk.name}`, name });
        else run(this.#opts.imgBinary, ['snapshot', '-f', 'qcow2', '-c', name, disk.path], 'snapshot');
      }
    },
    revert: async (vm, name) => {
      for (const disk of this.#qcow2Disks(vm)) run(this.#opts.imgBinary, ['snapshot', '-f', 'qcow2', '-a', name, disk.path], 'snapshot');
    },
    remove: async (vm, name, running) => {
      for (const disk of this.#qcow2Disks(vm)) {
        if (running) await (await this.#require(vm.id, 'snapshot')).qmp.execute('blockdev-snapshot-delete-internal-sync', { device: `drive-${disk.name}`, name });
        else run(this.#opts.imgBinary, ['snapshot', '-f', 'qcow2', '-d', name, disk.path], 'snapshot');
      }
    },
  };

  #qcow2Disks(vm: VmRecord): DiskMedia[] {
    return this.#opts.media(vm).disks.filter((d) => d.format === 'qcow2' && !d.readOnly);
  }

  /** CPU time from the vCPU threads (/proc), RSS, and QEMU's block statistics. */
  async stats(vmId: string): Promise<VmStats | undefined> {
    const inst = this.#instances.get(vmId);
    if (!inst) return undefined;
    const cpus = await inst.qmp.execute<Array<{ 'thread-id': number }>>('query-cpus-fast');
    let ticks = 0;
    for (const c of cpus) {
      try {
        // Fields after the parenthesised command name: utime and stime are 12th and 13th.
        const fields = readFileSync(`/proc/${inst.pid}/task/${c['thread-id']}/stat`, 'utf8').split(') ')[1]!.split(' ');
        ticks += Number(fields[11]) + Number(fields[12]);
      } catch {
        /* thread gone between the two calls */
      }
    }
    const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${inst.pid}/status`, 'utf8'));
    const blocks = await inst.qmp.execute<Array<{ device: string; qdev?: string; stats: { rd_bytes: number; wr_bytes: number; rd_operations: number; wr_operations: number } }>>('query-blockstats');
    return {
      cpuSeconds: ticks / CLOCK_TICKS,
      memoryRssBytes: rss ? Number(rss[1]) * 1024 : 0,
      disks: blocks
        .map((b) => ({ ...b, name: b.device.startsWith('drive-') ? b.device.slice(6) : /peripheral\/disk-([^/]+)/.exec(b.qdev ?? '')?.[1] }))
        .filter((b): b is typeof b & { name: string } => b.name !== undefined)
        .map((b) => ({ name: b.name, readBytes: b.stats.rd_bytes, writeBytes: b.stats.wr_bytes, readOps: b.stats.rd_operations, writeOps: b.stats.wr_operations })),
    };
  }

  checkpointPath(vmId: string): string {
    return join(this.vmDir(vmId), 'checkpoint.state');
  }

  /** Pauses, streams RAM + device state to `path` (QEMU migration to a file), then quits. */
  async checkpoint(vmId: string, path: string): Promise<{ sizeBytes: number }> {
    const inst = await this.#require(vmId, 'checkpoint');
    rmSync(path, { force: true });
    await inst.qmp.execute('stop');
    try {
      await inst.qmp.execute('migrate', { uri: migrationUri(inst.qmp, path, 'out') });
      await this.#waitMigration(inst.qmp, 'checkpoint');
    } catch (err) {
      rmSync(path, { force: true });
      await inst.qmp.execute('cont').catch(() => undefined); // leave it as it was: running
      throw err instanceof DriverError ? err : new DriverError('checkpoint', (err as Error).message);
    }
    await this.stop(vmId);
    return { sizeBytes: statSync(path).size };
  }

  async start(vm: VmRecord, opts: { restoreFrom?: string } = {}): Promise<DriverInstanceState> {
    if (opts.restoreFrom && !existsSync(opts.restoreFrom)) throw new DriverError('start', `checkpoint ${opts.restoreFrom} is missing`);
    const { inst, runtime } = await this.#spawn(vm, opts.restoreFrom ? 'paused-incoming' : 'paused');
    const { qmp } = inst;
    try {
      if (opts.restoreFrom) {
        await qmp.execute('migrate-incoming', { uri: migrationUri(qmp, opts.restoreFrom, 'in') });
        await this.#waitMigration(qmp, 'restore');
      }
      await qmp.execute('cont');
    } catch (err) {
      await this.stop(vm.id).catch(() => undefined);
      throw new DriverError('start', `QEMU did not start the guest: ${(err as Error).message}`);
    }
    return { status: 'running', runtime };
  }

  /**
   * Starts the VM's QEMU process and connects QMP. `paused`: vCPUs wait for `cont`;
   * `paused-incoming`: also waits for `migrate-incoming`; `incoming`: waits for an
   * incoming migration and runs the guest as soon as it has arrived (no `cont` round
   * trip inside the migration's downtime).
   */
  async #spawn(vm: VmRecord, mode: 'paused' | 'paused-incoming' | 'incoming'): Promise<{ inst: Instance; runtime: Record<string, unknown> }> {
    if (this.#instances.has(vm.id)) throw new DriverError('start', `VM ${vm.id} already has a QEMU process`);
    const dir = this.vmDir(vm.id);
    mkdirSync(dir, { recursive: true });
    const { accel, reason } = await probeAccelerator(this.#opts.binary, this.#opts.accel);
    const sock = join(dir, 'qmp.sock');
    rmSync(sock, { force: true });
    rmSync(join(dir, 'qemu.pid'), { force: true });
    const stderrPath = join(dir, 'qemu.stderr');
    const stderrFd = openSync(stderrPath, 'w');
    const args = this.#args(vm, accel);
    if (mode === 'incoming') args.splice(args.indexOf('-S'), 1);
    if (mode !== 'paused') args.push('-incoming', 'defer');
    const child = spawn(this.#opts.binary, args, { detached: true, stdio: ['ignore', 'ignore', stderrFd] });
    closeSync(stderrFd);
    child.unref(); // The VM must outlive the daemon.
    let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    child.on('exit', (code, signal) => (exitInfo = { code, signal }));
    child.on('error', () => (exitInfo = { code: -1, signal: null }));

    const qmp = await this.#waitForQmp(sock, () => exitInfo !== undefined, 30_000).catch(async (err) => {
      child.kill('SIGKILL');
      await sleep(50);
      throw new DriverError('start', `QEMU failed to start: ${stderrTail(stderrPath) || (err as Error).message}`);
    });
    const inst = this.#track(vm.id, child.pid!, qmp, child);
    return { inst, runtime: { accelerator: accel, accelReason: reason, pid: inst.pid, qemu: versionString(qmp) } };
  }

  async stop(vmId: string): Promise<void> {
    const inst = await this.#require(vmId, 'stop');
    inst.expectedExit = true;
    await inst.qmp.execute('quit', undefined, 5000).catch(() => undefined);
    if (!(await waitFor(inst.exited, 5000))) {
      process.kill(inst.pid, 'SIGKILL');
      await waitFor(inst.exited, 5000);
    }
  }

  async shutdown(vmId: string, opts: ShutdownOptions): Promise<{ forced: boolean }> {
    const inst = await this.#require(vmId, 'shutdown');
    inst.expectedExit = true;
    await inst.qmp.execute('system_powerdown');
    if (await waitFor(inst.exited, opts.timeoutMs)) return { forced: false };
    await this.stop(vmId);
    return { forced: true };
  }

  async pause(vmId: string): Promise<void> {
    await (await this.#require(vmId, 'pause')).qmp.execute('stop');
  }

  async resume(vmId: string): Promise<void> {
    await (await this.#require(vmId, 'resume')).qmp.execute('cont');
  }

  async reboot(vmId: string): Promise<void> {
    await (await this.#require(vmId, 'reboot')).qmp.execute('system_reset');
  }

  async destroy(vm: VmRecord): Promise<void> {
    if (this.#instances.has(vm.id) || (await this.inspect(vm.id))) await this.stop(vm.id);
    rmSync(this.vmDir(vm.id), { recursive: true, force: true });
  }

  async inspect(vmId: string): Promise<DriverInstanceState | undefined> {
    let inst = this.#instances.get(vmId);
    if (!inst) {
      const reattached = await this.#reattach(vmId);
      if (!reattached) return undefined;
      inst = reattached;
    }
    const status = await inst.qmp.execute<{ status: string; running: boolean }>('query-status');
    return {
      status: status.running ? 'running' : 'paused',
      runtime: { pid: inst.pid, qemu: versionString(inst.qmp), qemuStatus: status.status },
    };
  }

  /** Closes QMP connections; VMs keep running (they are reattached on the next start). */
  async close(): Promise<void> {
    for (const inst of this.#instances.values()) {
      inst.expectedExit = true; // Our side closing is not the VM exiting.
      inst.qmp.close();
    }
    this.#instances.clear();
  }

  #args(vm: VmRecord, accel: 'kvm' | 'tcg'): string[] {
    return qemuArgs(vm, { accel, dir: this.vmDir(vm.id), media: this.#opts.media(vm), hugepagesPath: this.#opts.hugepagesPath });
  }

  /** Polls query-migrate until the migration (to or from a file) completes. */
  async #waitMigration(qmp: QmpClient, op: string, timeoutMs = 600_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') throw new DriverError(op, `QEMU migration ${info.status}: ${info['error-desc'] ?? 'no detail'}`);
      if (Date.now() > deadline) throw new DriverError(op, `migration did not complete in ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  async #waitForQmp(sock: string, died: () => boolean, timeoutMs: number): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (died()) throw new Error('QEMU exited during start-up');
      if (existsSync(sock)) {
        try {
          return await QmpClient.connect(sock, 5000);
        } catch {
          /* not accepting yet */
        }
      }
      if (Date.now() > deadline) throw new Error(`no QMP socket after ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  #track(vmId: string, pid: number, qmp: QmpClient, child?: ChildProcess): Instance {
    let markExited!: () => void;
    const inst: Instance = { pid, qmp, expectedExit: false, guestShutdown: false, exited: new Promise<void>((r) => (markExited = r)), ...(child ? { child } : {}) };
    this.#instances.set(vmId, inst);
    let stopReason = 'stopped by QEMU';
    qmp.on('event', (ev: QmpEvent) => {
      this.#opts.log.debug({ vmId, event: ev.event, data: ev.data, at: eventTime(ev) }, 'QMP event');
      switch (ev.event) {
        case 'SHUTDOWN':
          if (ev.data?.guest === true) inst.guestShutdown = true;
          break;
        case 'RESET':
          if (ev.data?.guest === true) this.events.emit('event', { type: 'guest-reset', vmId });
          break;
        case 'BLOCK_IO_ERROR':
          stopReason = `I/O error on ${String(ev.data?.device || ev.data?.['node-name'])}: ${String(ev.data?.reason ?? ev.data?.operation ?? 'unknown')}`;
          break;
        case 'GUEST_PANICKED':
          stopReason = 'guest kernel panicked';
          break;
        // STOP/RESUME that NovaCron did not ask for (its own are inside an operation,
        // which the VM service ignores driver events during).
        case 'STOP':
          inst.stoppedAt = eventTime(ev);
          this.events.emit('event', { type: 'paused', vmId, reason: stopReason });
          stopReason = 'stopped by QEMU';
          break;
        case 'RESUME':
          inst.resumedAt = eventTime(ev);
          this.events.emit('event', { type: 'resumed', vmId });
          break;
      }
    });
    // The QMP socket closes when QEMU exits; confirm with the pid, then report. If the
    // process is still there, only the connection was lost: reconnect.
    qmp.once('close', async () => {
      // After `quit` a loaded host can take seconds to tear QEMU down; report the exit only
      // once the process is really gone (stop() escalates to SIGKILL meanwhile).
      const polls = inst.expectedExit ? 1000 : 100;
      for (let i = 0; i < polls && alive(pid); i++) await sleep(20);
      if (alive(pid) && !inst.expectedExit && this.#instances.get(vmId) === inst) {
        for (let attempt = 0; attempt < 5; attempt++) {
          const again = await QmpClient.connect(join(this.vmDir(vmId), 'qmp.sock'), 2000).catch(() => undefined);
          if (again) {
            this.#opts.log.warn({ vmId, pid }, 'QMP connection lost; reconnected');
            const next = this.#track(vmId, pid, again, child);
            void next.exited.then(markExited);
            return;
          }
          await sleep(200 * 2 ** attempt);
        }
      }
      if (this.#instances.get(vmId) === inst) this.#instances.delete(vmId);
      markExited();
      if (inst.expectedExit) return;
      if (inst.guestShutdown) {
        this.events.emit('event', { type: 'guest-shutdown', vmId });
        return;
      }
      // Our own child: its exit status (SIGKILL, a code) may arrive a moment after QMP closed.
      if (child && child.exitCode === null && child.signalCode === null) await Promise.race([new Promise((r) => child.once('exit', r)), sleep(2000)]);
      const status = child?.exitCode ?? child?.signalCode;
      const tail = stderrTail(join(this.vmDir(vmId), 'qemu.stderr'));
      const reason = `QEMU exited${status !== undefined && status !== null ? ` (${status})` : ''}${alive(pid) ? ' (QMP lost, process still present)' : ''}${tail ? `: ${tail}` : ''}`;
      this.events.emit('event', { type: 'exited', vmId, reason, expected: false });
    });
    return inst;
  }

  async #require(vmId: string, op: string): Promise<Instance> {
    const inst = this.#instances.get(vmId) ?? (await this.#reattach(vmId));
    if (!inst) throw new DriverError(op, `VM ${vmId} has no running QEMU process`);
    return inst;
  }

  /** Finds a QEMU left running by an earlier daemon and reconnects to it. */
  async #reattach(vmId: string): Promise<Instance | undefined> {
    const dir = this.vmDir(vmId);
    let pid: number;
    try {
      pid = Number(readFileSync(join(dir, 'qemu.pid'), 'utf8').trim());
    } catch {
      return undefined;
    }
    if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return undefined;
    // The pid may have been reused: it must be a QEMU whose QMP socket is this VM's.
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return undefined;
    }
    if (!cmdline.includes(join(dir, 'qmp.sock'))) return undefined;
    const qmp = await QmpClient.connect(join(dir, 'qmp.sock'), 5000).catch(() => undefined);
    if (!qmp) return undefined;
    this.#opts.log.info({ vmId, pid }, 'reattached to running QEMU');
    return this.#track(vmId, pid, qmp);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie is gone for our purposes
  } catch {
    return false;
  }
}

async function waitFor(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  const done = await Promise.race([p.then(() => true), timeout]);
  clearTimeout(timer);
  return done;
}

function stderrTail(path: string, lines = 5): string {
  try {
    if (statSync(path).size === 0) return '';
    return readFileSync(path, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}

function run(cmd: string, args: string[], op: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new DriverError(op, `${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new DriverError(op, `${cmd} ${args[0]} failed: ${r.stderr.trim() || `exit ${r.status}`}`);
  return r.stdout;
}

/** QEMU 8.2+ migrates to and from files natively; older versions go through a shell. */
function migrationUri(qmp: QmpClient, path: string, dir: 'in' | 'out'): string {
  const v = qmp.version?.qemu;
  if (!v || v.major > 8 || (v.major === 8 && v.minor >= 2)) return `file:${path}`;
  const quoted = `'${path.replace(/'/g, `'\\''`)}'`;
  return dir === 'out' ? `exec:cat > ${quoted}` : `exec:cat ${quoted}`;
}

function eventTime(ev: QmpEvent): number {
  return ev.timestamp ? ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 : Date.now();
}

function versionString(qmp: QmpClient): string | undefined {
  const v = qmp.version?.qemu;
  return v ? `${v.major}.${v.minor}.${v.micro}` : undefined;
}

/** A stable SMBIOS UUID derived from the VM id. */
function uuidFromId(id: string): string {
  const hex = Buffer.from(id).toString('hex').padEnd(32, '0').slice(-32);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

export interface QemuArgsOptions {
  accel: 'kvm' | 'tcg';
  /** The VM's directory: its QMP, console and VNC sockets, serial log and pid file. */
  dir: string;
  /** What the VM opens: its volumes, resolved and checked. */
  media: VmMedia;
  /** hugetlbfs mount for `memoryBacking: hugepages`. */
  hugepagesPath: string;
}

/**
 * QEMU's command line for a VM: machine, CPU, memory, control sockets, devices, disks,
 * NICs and boot. The driver starts every VM with it (paused by `-S`, resumed over QMP);
 * bench/ starts its bare-QEMU baselines with it too, so both run the same machine.
 */
export function qemuArgs(vm: VmRecord, { accel, dir, media, hugepagesPath }: QemuArgsOptions): string[] {
  const { spec } = vm;
  const args = [
    '-name', `guest=${vm.name},debug-threads=on`,
    '-machine', `q35,accel=${accel}${spec.memoryBacking === 'hugepages' ? ',memory-backend=ram0' : ''}`,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-smp', String(spec.vcpus),
    '-m', `${spec.memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-chardev', `socket,id=qmp,path=${join(dir, 'qmp.sock')},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    // Serial console: a socket for interactive viewers (the /console WebSocket) with
    // everything the guest prints also appended to serial.log.
    '-chardev', `socket,id=serial0,path=${join(dir, 'console.sock')},server=on,wait=off,logfile=${join(dir, 'serial.log')},logappend=on`,
    '-serial', 'chardev:serial0',
    '-vnc', `unix:${join(dir, 'vnc.sock')}`,
    '-pidfile', join(dir, 'qemu.pid'),
    '-uuid', uuidFromId(vm.id),
    '-S',
    // seccomp: no obsolete syscalls, no setuid/setgid, no scheduler or resource changes,
    // and no fork/exec (a guest that escapes QEMU cannot start programs) unless a bridge
    // NIC needs qemu-bridge-helper. QEMU also sets no_new_privs.
    '-sandbox', `on,obsolete=deny,elevateprivileges=deny,spawn=${spec.nics.some((n) => n.mode === 'bridge') ? 'allow' : 'deny'},resourcecontrol=deny`,
  ];
  if (spec.memoryBacking === 'hugepages') {
    args.push('-object', `memory-backend-file,id=ram0,size=${spec.memoryMiB}M,mem-path=${hugepagesPath},share=on,prealloc=on`);
  }
  for (let i = 0; i < HOTPLUG_PORTS; i++) args.push('-device', `pcie-root-port,id=hp${i},chassis=${i + 1}`);
  if (media.cdrom) args.push('-drive', `file=${optionValue(media.cdrom)},format=raw,media=cdrom,readonly=on,if=none,id=cdrom0`, '-device', 'ide-cd,drive=cdrom0,bus=ide.0');
  if (media.cidata) args.push('-drive', `file=${optionValue(media.cidata)},format=raw,media=cdrom,readonly=on,if=none,id=cidata0`, '-device', 'ide-cd,drive=cidata0,bus=ide.1');
  for (const d of media.disks) {
    args.push('-drive', `file=${optionValue(d.path)},format=${d.format},if=none,id=drive-${d.name}${d.readOnly ? ',readonly=on' : ''}`);
    if (d.bus === 'virtio') args.push('-device', `virtio-blk-pci,drive=drive-${d.name},id=disk-${d.name}`);
    else if (d.bus === 'ide') args.push('-device', `ide-hd,drive=drive-${d.name},id=disk-${d.name}`);
    else args.push('-device', `virtio-scsi-pci,id=scsi-${d.name}`, '-device', `scsi-hd,drive=drive-${d.name},id=disk-${d.name},bus=scsi-${d.name}.0`);
  }
  for (const n of spec.nics) {
    args.push('-netdev', n.mode === 'user' ? `user,id=net-${n.name}${unrestrictedUserNic(n) ? '' : ',restrict=on'}` : `bridge,id=net-${n.name},br=${n.bridge}`);
    args.push('-device', `${n.model === 'virtio' ? 'virtio-net-pci' : 'e1000'},netdev=net-${n.name}${n.mac ? `,mac=${n.mac}` : ''}`);
  }
  if (spec.boot.type === 'kernel') {
    if (!media.kernel) throw new DriverError('start', 'kernel boot without a resolved kernel volume');
    args.push('-kernel', media.kernel);
    if (media.initrd) args.push('-initrd', media.initrd);
    if (spec.boot.cmdline) args.push('-append', spec.boot.cmdline);
  }
  return args;
}

/** A value inside a QEMU option list: commas are doubled (QEMU's escape), so a value never adds options. */
export function optionValue(v: string): string {
  return v.replace(/,/g, ',,');
}
