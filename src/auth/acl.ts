/**
 * ACL paths, the objects they protect, and what a principal may do on an object.
 *
 * Paths: `/`, `/cluster`, `/tenants/<t>`, `/vms/<id>`, `/pools/<p>`. An object is
 * reached through a chain of paths: a VM through `/vms/<id>`, then its tenant, then `/`;
 * a volume through its pool, its tenant and `/`. An ACL entry on an object's own path
 * always applies to it; one on a path further up the chain applies only with
 * `propagate`. Grants add up (no entry takes a privilege away).
 */
import { z } from 'zod';
import type { Privilege } from './privileges.js';
import { RoleName } from './privileges.js';

const Segment = /[A-Za-z0-9][A-Za-z0-9._-]{0,63}/.source;
export const AclPath = z.string().regex(new RegExp(`^(?:/|/cluster|/(?:tenants|vms|pools)/${Segment})$`), 'ACL paths are /, /cluster, /tenants/<t>, /vms/<id> or /pools/<p>');
export const UserName = z.string().regex(/^[a-z0-9][a-z0-9._@-]{0,63}$/, 'user names are lower-case letters, digits, ".", "_", "@" and "-", up to 64');
export const TenantName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'tenant names are lower-case letters, digits, "_" and "-", up to 63');

export const AclEntry = z.strictObject({
  path: AclPath,
  user: UserName,
  role: RoleName,
  propagate: z.boolean().default(true),
});
export type AclEntry = z.infer<typeof AclEntry>;

/** What a route acts on, as far as permissions go. */
export type ObjectRef =
  | { kind: 'root' }
  | { kind: 'cluster' }
  | { kind: 'tenant'; tenant: string }
  | { kind: 'pool'; pool: string }
  | { kind: 'vm'; id: string; tenant: string }
  | { kind: 'volume'; pool: string; tenant: string };

export const ROOT: ObjectRef = { kind: 'root' };

/** The object's own ACL path (if it has one) and the paths it inherits from, nearest first. */
export function chainOf(ref: ObjectRef): { own?: string; up: string[] } {
  switch (ref.kind) {
    case 'root':
      return { own: '/', up: [] };
    case 'cluster':
      return { own: '/cluster', up: ['/'] };
    case 'tenant':
      return { own: `/tenants/${ref.tenant}`, up: ['/'] };
    case 'pool':
      return { own: `/pools/${ref.pool}`, up: ['/'] };
    case 'vm':
      return { own: `/vms/${ref.id}`, up: [`/tenants/${ref.tenant}`, '/'] };
    case 'volume':
      return { up: [`/pools/${ref.pool}`, `/tenants/${ref.tenant}`, '/'] };
  }
}

/** A user's grants, by path: privileges for the path itself, and those that propagate below it. */
export class Grants {
  readonly #own = new Map<string, Set<Privilege>>();
  readonly #below = new Map<string, Set<Privilege>>();

  constructor(entries: Iterable<AclEntry>, roles: ReadonlyMap<string, ReadonlySet<Privilege>>) {
    for (const e of entries) {
      const privs = roles.get(e.role);
      if (!privs) continue; // a deleted custom role grants nothing
      add(this.#own, e.path, privs);
      if (e.propagate) add(this.#below, e.path, privs);
    }
  }

  has(priv: Privilege, ref: ObjectRef): boolean {
    const { own, up } = chainOf(ref);
    if (own !== undefined && this.#own.get(own)?.has(priv)) return true;
    for (const p of up) if (this.#below.get(p)?.has(priv)) return true;
    return false;
  }

  on(ref: ObjectRef): Set<Privilege> {
    const { own, up } = chainOf(ref);
    const out = new Set<Privilege>(own !== undefined ? this.#own.get(own) : undefined);
    for (const p of up) for (const x of this.#below.get(p) ?? []) out.add(x);
    return out;
  }
}

function add(map: Map<string, Set<Privilege>>, path: string, privs: ReadonlySet<Privilege>): void {
  let set = map.get(path);
  if (!set) map.set(path, (set = new Set()));
  for (const p of privs) set.add(p);
}
