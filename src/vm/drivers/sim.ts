/**
 * The in-process simulated hypervisor. Used for fast tests and scale benchmarks (it
 * holds 10,000+ VMs in a few MiB), never in place of the QEMU driver.
 *
 * Latency per operation is configurable, and failures can be injected two ways:
 * - a per-operation probability (`failureRate`), for soak tests;
 * - the VM label `sim.novacron.io/fail` = comma-separated ops (e.g. "start,pause"),
 *   for deterministic tests.
 * Simulated VM "processes" live in this process, so they do not survive a daemon
 * restart: after one, `inspect` reports nothing and the service marks them as lost.
 */
import { EventEmitter } from 'node:events';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { DriverError, type DriverInstanceState, type HypervisorDriver, type ShutdownOptions } from '../driver.js';
import type { VmRecord } from '../record.js';
import { SIM_DIRTY_LABEL, SimLiveMigration, SimMemory } from './sim-migration.js';

export const SIM_FAIL_LABEL = 'sim.novacron.io/fail';
export const SIM_OPS = ['create', 'start', 'stop', 'shutdown', 'pause', 'resume', 'reboot', 'destroy'] as const;
export type SimOp = (typeof SIM_OPS)[number];

export interface SimDriverOptions {
  /** Milliseconds each operation takes. Default 0 for all. */
  latencyMs?: Partial<Record<SimOp, number>>;
  /** Probability in [0,1] that an operation fails. Default 0. */
  failureRate?: Partial<Record<SimOp, number>>;
  /** Deterministic source of randomness for failure injection (tests). */
  random?: () => number;
  /** Directory for live-migration sockets. Default: the OS temp directory. */
  runDir?: string;
  /** Simulated guest RAM per VM is capped at this (allocated only when migrated). Default 64. */
  migrationMemoryCapMiB?: number;
}

interface SimInstance {
  status: 'running' | 'paused';
  startedAt: number;
  failOps: ReadonlySet<string>;
  memoryMiB: number;
  dirtyMiBps: number;
  memory?: SimMemory;
}

export class SimDriver implements HypervisorDriver {
  readonly name = 'sim' as const;
  readonly events = new EventEmitter();
  #instances = new Map<string, SimInstance>();
  #failLabels = new Map<string, ReadonlySet<string>>();
  #opts: Required<SimDriverOptions>;
  readonly migration: SimLiveMigration;

  constructor(opts: SimDriverOptions = {}) {
    this.#opts = {
      latencyMs: opts.latencyMs ?? {}, failureRate: opts.failureRate ?? {}, random: opts.random ?? Math.random,
      runDir: opts.runDir ?? tmpdir(), migrationMemoryCapMiB: opts.migrationMemoryCapMiB ?? 64,
    };
    this.migration = new SimLiveMigration({
      runDir: this.#opts.runDir,
      memoryCapMiB: this.#opts.migrationMemoryCapMiB,
      memory: (vmId) => {
        const inst = this.#instances.get(vmId);
        if (!inst) return undefined;
        inst.memory ??= SimMemory.populated(Math.min(inst.memoryMiB, this.#opts.migrationMemoryCapMiB), inst.dirtyMiBps);
        inst.memory.run();
        return inst.memory;
      },
      adopt: (vm, memory) => {
        this.#instances.set(vm.id, { ...this.#newInstance(vm), memory });
        memory.run();
      },
      setRunning: (vmId, running) => {
        const inst = this.#instances.get(vmId);
        if (inst) inst.status = running ? 'running' : 'paused';
      },
    });
  }

  #newInstance(vm: VmRecord): SimInstance {
    return {
      status: 'running', startedAt: Date.now(), failOps: this.#failLabels.get(vm.id) ?? parseFailLabel(vm),
      memoryMiB: vm.spec.memoryMiB, dirtyMiBps: Number(vm.spec.labels[SIM_DIRTY_LABEL] ?? 0) || 0,
    };
  }

  async create(vm: VmRecord): Promise<void> {
    this.#failLabels.set(vm.id, parseFailLabel(vm));
    await this.#op('create', vm.id);
  }

  async start(vm: VmRecord): Promise<DriverInstanceState> {
    this.#failLabels.set(vm.id, parseFailLabel(vm));
    await this.#op('start', vm.id);
    if (this.#instances.has(vm.id)) throw new DriverError('start', `VM ${vm.id} is already running`);
    const inst = this.#newInstance(vm);
    this.#instances.set(vm.id, inst);
    return { status: 'running', runtime: { accelerator: 'sim', startedAt: new Date(inst.startedAt).toISOString() } };
  }

  checkpointPath(vmId: string): string {
    return `sim://${vmId}/checkpoint`;
  }

  async checkpoint(vmId: string, _path: string): Promise<{ sizeBytes: number }> {
    await this.#op('stop', vmId);
    this.#require(vmId, 'stop');
    this.#end(vmId);
    return { sizeBytes: 0 };
  }

  async stop(vmId: string): Promise<void> {
    await this.#op('stop', vmId);
    this.#end(vmId);
  }

  /** The simulated process ends: its dirtier stops and its RAM is released. */
  #end(vmId: string): boolean {
    const inst = this.#instances.get(vmId);
    inst?.memory?.stop();
    this.migration.forget(vmId);
    return this.#instances.delete(vmId);
  }

  async shutdown(vmId: string, _opts: ShutdownOptions): Promise<{ forced: boolean }> {
    await this.#op('shutdown', vmId);
    this.#end(vmId);
    return { forced: false };
  }

  async pause(vmId: string): Promise<void> {
    await this.#op('pause', vmId);
    this.#require(vmId, 'pause').status = 'paused';
  }

  async resume(vmId: string): Promise<void> {
    await this.#op('resume', vmId);
    this.#require(vmId, 'resume').status = 'running';
  }

  async reboot(vmId: string): Promise<void> {
    await this.#op('reboot', vmId);
    this.#require(vmId, 'reboot').startedAt = Date.now();
  }

  async destroy(vm: VmRecord): Promise<void> {
    await this.#op('destroy', vm.id);
    this.#end(vm.id);
    this.#failLabels.delete(vm.id);
  }

  async inspect(vmId: string): Promise<DriverInstanceState | undefined> {
    const inst = this.#instances.get(vmId);
    return inst && { status: inst.status, runtime: { accelerator: 'sim' } };
  }

  /** Test hook: the simulated process dies as if killed from outside. */
  crash(vmId: string, reason = 'simulated crash'): void {
    if (this.#end(vmId)) this.events.emit('event', { type: 'exited', vmId, reason, expected: false });
  }

  /** Test hook: the guest powers itself off. */
  guestPowerOff(vmId: string): void {
    if (this.#end(vmId)) this.events.emit('event', { type: 'guest-shutdown', vmId });
  }

  get runningCount(): number {
    return this.#instances.size;
  }

  async close(): Promise<void> {
    for (const id of [...this.#instances.keys()]) this.#end(id);
  }

  #require(vmId: string, op: SimOp): SimInstance {
    const inst = this.#instances.get(vmId);
    if (!inst) throw new DriverError(op, `VM ${vmId} is not running`);
    return inst;
  }

  async #op(op: SimOp, vmId: string): Promise<void> {
    const latency = this.#opts.latencyMs[op] ?? 0;
    if (latency > 0) await sleep(latency);
    const injected = this.#failLabels.get(vmId)?.has(op) || this.#opts.random() < (this.#opts.failureRate[op] ?? 0);
    if (injected) throw new DriverError(op, `sim: injected ${op} failure`);
  }
}

function parseFailLabel(vm: VmRecord): ReadonlySet<string> {
  const v = vm.spec.labels[SIM_FAIL_LABEL];
  return new Set(v ? v.split(',').map((s) => s.trim()) : []);
}
