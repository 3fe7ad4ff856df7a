import { NovaError } from '../errors.js';
import type { VmRecord } from '../vm/record.js';
import type { VmService } from '../vm/service.js';

/** The VM named by a raw (percent-encoded) `:id` path segment, by id or name. */
export function vmFromParam(vms: VmService, raw: string): VmRecord {
  let ref: string;
  try {
    ref = decodeURIComponent(raw);
  } catch {
    throw new NovaError('VM_NOT_FOUND', `no VM with id or name "${raw}"`);
  }
  return vms.get(ref);
}
