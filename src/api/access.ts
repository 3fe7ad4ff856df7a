/**
 * What each route needs: every route in the router table declares a privilege (or says
 * it is public, or open to any authenticated caller, which then filters what it shows),
 * and what object the privilege is checked on. Objects named by a reference (a VM by id
 * or name, a volume, an operation) are resolved by the daemon to their ACL chain.
 */
import type { ObjectRef } from '../auth/acl.js';
import type { Privilege } from '../auth/privileges.js';

export type Access = Privilege | 'authenticated' | 'public';

/** An object as a route names it; `resolve` turns it into an `ObjectRef`. */
export type Target =
  | ObjectRef
  | { kind: 'vm-ref'; ref: string }
  | { kind: 'volume-ref'; pool: string; name: string }
  | { kind: 'operation'; id: string }
  | { kind: 'migration'; id: string };

export interface TargetResolver {
  /** The object's ACL identity, or undefined when it is not on this member (async only when it must be read from disk). */
  resolve(t: Target): ObjectRef | undefined | Promise<ObjectRef | undefined>;
}

/**
 * The tenant a create request is for: the one its body names, else the caller's own
 * (a tenant's user), else `default`. Handlers create in this tenant (`withTenant`), so
 * the privilege checked and the object made agree.
 */
export function tenantNamed(req: { body: unknown; principal?: { tenant: string | undefined } | undefined }, given?: string | null): string {
  const t = given !== undefined ? given : typeof req.body === 'object' && req.body !== null ? (req.body as { tenant?: unknown }).tenant : undefined;
  if (typeof t === 'string' && t !== '') return t;
  return req.principal?.tenant ?? 'default';
}

/** The request body with its tenant made explicit (see `tenantNamed`). */
export function withTenant(req: { body: unknown; principal?: { tenant: string | undefined } | undefined }): unknown {
  if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body) || 'tenant' in req.body) return req.body;
  return { ...req.body, tenant: tenantNamed(req) };
}
