/**
 * Keeps VM records true to the hypervisor: after a daemon restart (every VM's state is
 * checked against what the driver reports), and when the driver reports a change no
 * operation made (a crash, a guest power-off, a pause on an I/O error).
 */
import type { Logger } from 'pino';
import type { VmClaims } from './claims.js';
import type { DriverEvent, HypervisorDriver } from './driver.js';
import type { VmRecord } from './record.js';
import type { VmRegistry } from './registry.js';
import { canTransition, type VmState } from './state.js';

export interface ReconcilerDeps {
  driver: HypervisorDriver;
  registry: VmRegistry;
  claims: VmClaims;
  log: Logger;
  /** Removes a VM that never finished arriving by migration (its process is gone). */
  abandonIncoming(vmId: string): Promise<void>;
}

export class Reconciler {
  #deps: ReconcilerDeps;

  constructor(deps: ReconcilerDeps) {
    this.#deps = deps;
  }

  /** Follows the driver's events from now on. */
  watch(): void {
    const { driver, log } = this.#deps;
    driver.events.on('event', (ev: DriverEvent) => {
      this.#onDriverEvent(ev).catch((err) => log.error({ err, ev }, 'handling driver event failed'));
    });
  }

  /** After a restart: every VM's state is reconciled with what the driver reports. */
  async recover(): Promise<void> {
    const { driver, registry } = this.#deps;
    for (const vm of [...registry.all()]) {
      if (vm.incoming) {
        // It never finished arriving: the source still has it (or reports the failure).
        if (await driver.inspect(vm.id).catch(() => undefined)) await driver.stop(vm.id).catch(() => undefined);
        await this.#deps.abandonIncoming(vm.id);
        continue;
      }
      if (vm.state === 'stopped' || vm.state === 'error') continue;
      const actual = await driver.inspect(vm.id).catch(() => undefined);
      if (vm.state === 'pending') {
        await registry.commit(vm.id, { to: 'error', reason: 'creation was interrupted by a daemon restart' });
      } else if (vm.state === 'deleting') {
        await registry.commit(vm.id, { to: 'error', reason: 'deletion was interrupted by a daemon restart; delete again' });
      } else if (actual) {
        if (actual.status !== vm.state) await this.#force(vm, actual.status, 'reconciled with the hypervisor after restart', actual.runtime);
      } else if (vm.state !== 'stopping') {
        await this.#force(vm, 'error', 'VM process not found after daemon restart');
      } else {
        await this.#force(vm, 'stopped', 'reconciled with the hypervisor after restart');
      }
    }
  }

  /** The hypervisor's truth wins, via a legal path where one exists. */
  async #force(vm: VmRecord, to: VmState, reason: string, runtime?: Record<string, unknown>): Promise<void> {
    const { registry } = this.#deps;
    if (!canTransition(vm.state, to) && canTransition(vm.state, 'error') && canTransition('error', to)) {
      await registry.commit(vm.id, { to: 'error', reason });
    }
    const now = registry.get(vm.id).state;
    await registry.commit(vm.id, { to: canTransition(now, to) ? to : 'error', reason, ...(runtime !== undefined ? { runtime } : {}) });
  }

  async #onDriverEvent(ev: DriverEvent): Promise<void> {
    const { registry, claims } = this.#deps;
    const vm = registry.find(ev.vmId);
    if (!vm || claims.isClaimed(vm.id)) return; // Work in flight settles the state itself.
    switch (ev.type) {
      case 'exited':
        if (!ev.expected) await registry.commit(vm.id, { to: 'error', reason: `VM process exited unexpectedly: ${ev.reason}` });
        break;
      case 'guest-shutdown':
        if (canTransition(vm.state, 'stopping')) {
          await registry.commit(vm.id, { to: 'stopping', reason: 'guest powered off' });
          await registry.commit(vm.id, { to: 'stopped', reason: 'guest powered off' });
        }
        break;
      case 'paused':
        if (vm.state === 'running') await this.#force(vm, 'paused', ev.reason);
        break;
      case 'resumed':
        if (vm.state === 'paused') await this.#force(vm, 'running', 'resumed by the hypervisor');
        break;
      case 'guest-reset':
        break;
    }
  }
}
