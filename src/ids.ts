/** Resource ids shared by every domain (VMs, operations, migrations). */
import { randomBytes } from 'node:crypto';

let lastMs = 0;
let counter = 0;
/**
 * Time-ordered ids (`vm-` + 12 hex ms + 4 hex counter + 8 hex random), so listing in id
 * order is listing in creation order and pagination cursors are stable.
 */
/** The smallest id `newId(prefix)` could have made at `ms`: every id below it is older. */
export function idAt(prefix: string, ms: number): string {
  return `${prefix}-${Math.max(0, Math.floor(ms)).toString(16).padStart(12, '0')}`;
}

export function newId(prefix: string): string {
  const now = Date.now();
  counter = now === lastMs ? counter + 1 : 0;
  lastMs = now;
  return `${prefix}-${now.toString(16).padStart(12, '0')}${(counter & 0xffff).toString(16).padStart(4, '0')}${randomBytes(4).toString('hex')}`;
}
