/**
 * The daemon's `TargetResolver`: finds the tenant of the VM, volume, operation or
 * migration a route names, so its privilege can be checked on the right ACL chain.
 */
import type { ObjectRef } from '../auth/acl.js';
import { isErrorCode } from '../errors.js';
import type { MigrationService } from '../migration/service.js';
import type { StorageService } from '../storage/service.js';
import { volumeRef } from '../storage/model.js';
import type { VmService } from '../vm/service.js';
import type { Target, TargetResolver } from './access.js';

/**
 * The tenant of an object whose VM is gone (an old operation or migration): no ACL path
 * names it, so only grants on `/` reach it.
 */
const GONE = '';

export function daemonResolver(vms: VmService, storage: StorageService, migrations: () => MigrationService | undefined): TargetResolver {
  const vmObject = (id: string): ObjectRef => ({ kind: 'vm', id, tenant: vms.tryGet(id)?.spec.tenant ?? GONE });
  return {
    resolve(t: Target) {
      switch (t.kind) {
        case 'vm-ref': {
          const vm = vms.tryGet(t.ref);
          return vm && { kind: 'vm', id: vm.id, tenant: vm.spec.tenant };
        }
        case 'volume-ref': {
          try {
            return { kind: 'volume', pool: t.pool, tenant: storage.get(volumeRef(t.pool, t.name)).tenant };
          } catch (err) {
            // An unknown pool or volume: checked on the pool, then the handler says what is missing.
            if (isErrorCode((err as { code?: unknown }).code)) return { kind: 'volume', pool: t.pool, tenant: GONE };
            throw err;
          }
        }
        case 'operation': {
          const op = vms.peekOperation(t.id);
          if (op) return vmObject(op.vmId);
          return vms.getOperation(t.id).then(
            (o) => vmObject(o.vmId),
            () => undefined,
          );
        }
        case 'migration': {
          try {
            const m = migrations()?.get(t.id);
            return m && vmObject(m.vmId);
          } catch {
            return undefined;
          }
        }
        default:
          return t;
      }
    },
  };
}
