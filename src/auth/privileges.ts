/**
 * Privileges and roles, after Proxmox VE's model: a privilege is one kind of action, a
 * role is a named set of privileges, and an ACL entry grants a role to a principal on a
 * path (see acl.ts). The built-in roles cannot be changed; custom roles can be added.
 */
import { z } from 'zod';

export const PRIVILEGES = [
  /** See a VM, its stats, snapshots, operations and events. */
  'VM.Audit',
  /** Create, delete and template VMs. */
  'VM.Allocate',
  /** Change a VM's settings and disks. */
  'VM.Config',
  /** Start, stop, pause, resume, reboot, checkpoint, restore. */
  'VM.PowerMgmt',
  /** Create, revert and delete snapshots. */
  'VM.Snapshot',
  /** The serial console and VNC. */
  'VM.Console',
  /** Migrate a VM, or receive one. */
  'VM.Migrate',
  /** See pools and volumes. */
  'Pool.Audit',
  /** Create, change and delete volumes in a pool. */
  'Pool.Allocate',
  /** Define and remove pools. */
  'Pool.Modify',
  /** Membership, leadership, internal locks. */
  'Cluster.Admin',
  /** See the cluster's members, hosts and inventory. */
  'Cluster.Audit',
  /** Metrics, the audit log and every event. */
  'Sys.Audit',
  /** Host-level actions: migrations to daemons outside the cluster. */
  'Sys.Modify',
  /** Users, tokens of other users, ACLs and roles. */
  'User.Modify',
  /** The caller's own namespace of the key-value and lock APIs. */
  'KV.Use',
] as const;
export type Privilege = (typeof PRIVILEGES)[number];
export const PrivilegeName = z.enum(PRIVILEGES);

const VM_USE: Privilege[] = ['VM.Audit', 'VM.PowerMgmt', 'VM.Console', 'VM.Snapshot'];

/** The built-in roles. */
export const BUILTIN_ROLES: Readonly<Record<string, readonly Privilege[]>> = {
  Administrator: PRIVILEGES,
  /** Runs the fleet: everything but identities, pool definitions and membership. */
  Operator: [...VM_USE, 'VM.Allocate', 'VM.Config', 'VM.Migrate', 'Pool.Audit', 'Pool.Allocate', 'Cluster.Audit', 'Sys.Audit', 'KV.Use'],
  /** Owns a tenant: its VMs, volumes and users. */
  TenantAdmin: [...VM_USE, 'VM.Allocate', 'VM.Config', 'Pool.Audit', 'Pool.Allocate', 'User.Modify', 'KV.Use'],
  /** Uses a tenant's VMs. */
  TenantUser: [...VM_USE, 'Pool.Audit', 'KV.Use'],
  /** Reads everything, changes nothing. */
  Auditor: ['VM.Audit', 'Pool.Audit', 'Cluster.Audit', 'Sys.Audit'],
};

export const RoleName = z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,63}$/, 'role names are letters, digits, "_" and "-", up to 64');

export function isBuiltinRole(name: string): boolean {
  return Object.hasOwn(BUILTIN_ROLES, name);
}
