/**
 * The registry of NovaCron's stable error codes: code → HTTP status → default message.
 *
 * A code is a contract with API clients and scripts: it is never renamed and never
 * reused for a different meaning. Add new codes at the end of their group. The README's
 * error table is checked against this registry by a test.
 */
export const ERROR_CODES = {
  // Request shape
  BAD_JSON: { status: 400, message: 'request body is not valid JSON' },
  VALIDATION_FAILED: { status: 400, message: 'request does not match the schema' },
  BAD_QUERY: { status: 400, message: 'query string is invalid' },
  UNAUTHORIZED: { status: 401, message: 'missing or invalid bearer token' },
  ROUTE_NOT_FOUND: { status: 404, message: 'no such endpoint' },
  METHOD_NOT_ALLOWED: { status: 405, message: 'method not allowed on this endpoint' },
  BODY_TOO_LARGE: { status: 413, message: 'request body exceeds the size limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'request body must be application/json' },
  // VMs
  VM_NOT_FOUND: { status: 404, message: 'no such VM' },
  VM_NAME_CONFLICT: { status: 409, message: 'a VM with this name already exists' },
  VM_INVALID_STATE: { status: 409, message: 'operation not allowed in the VM\'s current state' },
  VM_BUSY: { status: 409, message: 'another operation is in progress on this VM' },
  VM_SPEC_INVALID: { status: 422, message: 'VM spec is semantically invalid' },
  // Operations and events
  OPERATION_NOT_FOUND: { status: 404, message: 'no such operation' },
  SNAPSHOT_NOT_FOUND: { status: 404, message: 'no such snapshot' },
  SNAPSHOT_EXISTS: { status: 409, message: 'a snapshot with this name already exists' },
  SNAPSHOT_UNSUPPORTED: { status: 409, message: 'snapshots need qcow2 disks and a driver that supports them' },
  EVENTS_EXPIRED: { status: 410, message: 'requested events are no longer retained' },
  OPERATION_NOT_CANCELLABLE: { status: 409, message: 'the operation cannot be cancelled (it is not cancellable, or has finished)' },
  OPERATION_CANCELLED: { status: 409, message: 'the operation was cancelled' },
  // Drivers
  DRIVER_FAILED: { status: 500, message: 'hypervisor driver operation failed' },
  DRIVER_UNAVAILABLE: { status: 503, message: 'hypervisor driver is not available' },
  // Store (codes come from the Rust crate, see crates/store/src/error.rs)
  STORE_LOCKED: { status: 503, message: 'data directory is locked by another process' },
  STORE_CORRUPTION: { status: 500, message: 'store corruption detected' },
  STORE_IO: { status: 503, message: 'store I/O error' },
  STORE_INVALID_ARGUMENT: { status: 500, message: 'invalid store argument' },
  STORE_CLOSED: { status: 503, message: 'store is closed' },
  STORE_INTERNAL: { status: 500, message: 'store error' },
  // Page codec (codes come from crates/memdelta)
  CODEC_TRUNCATED: { status: 400, message: 'page frame stream is truncated' },
  CODEC_MALFORMED: { status: 400, message: 'page frame is malformed' },
  CODEC_INCONSISTENT: { status: 409, message: 'page frame refers to state the decoder does not hold' },
  CODEC_CHECKSUM: { status: 400, message: 'page frame checksum mismatch' },
  CODEC_INVALID_ARGUMENT: { status: 500, message: 'invalid page codec argument' },
  // Live migration
  MIGRATION_NOT_FOUND: { status: 404, message: 'no such migration' },
  MIGRATION_UNSUPPORTED: { status: 409, message: 'this VM cannot be live-migrated by NovaCron' },
  MIGRATION_NOT_ACTIVE: { status: 409, message: 'the migration has already finished' },
  MIGRATION_WONT_CONVERGE: { status: 422, message: 'the migration is predicted to miss its downtime target (use force to start anyway)' },
  MIGRATION_TARGET_UNREACHABLE: { status: 502, message: 'the target daemon could not be reached' },
  MIGRATION_TARGET_REJECTED: { status: 502, message: 'the target daemon refused the migration' },
  MIGRATION_TRANSPORT: { status: 502, message: 'the migration connection failed' },
  MIGRATION_PROTOCOL: { status: 502, message: 'the migration stream violated its protocol' },
  MIGRATION_FAILED: { status: 500, message: 'the hypervisor failed the migration' },
  MIGRATION_CANCELLED: { status: 409, message: 'the migration was cancelled' },
  MIGRATION_TARGET_UNKNOWN: { status: 404, message: 'no cluster member matches the migration target' },
  // Cluster (RAFT_* codes come from crates/raftstore/src/error.rs)
  RAFT_NO_LEADER: { status: 503, message: 'the cluster has no leader right now; retry' },
  RAFT_TIMEOUT: { status: 503, message: 'the request was not committed in time; retrying with the same request id is safe' },
  RAFT_INVALID: { status: 400, message: 'invalid replicated request' },
  RAFT_BAD_MESSAGE: { status: 400, message: 'malformed or misaddressed peer message' },
  RAFT_STOPPED: { status: 503, message: 'the raft node is stopped' },
  RAFT_REFUSED: { status: 409, message: 'raft refused the operation' },
  RAFT_SNAPSHOT: { status: 500, message: 'a raft snapshot could not be built or installed' },
  RAFT_CORRUPTION: { status: 500, message: 'raft log corruption detected' },
  CLUSTER_AUTH: { status: 401, message: 'missing or wrong cluster secret, or no valid member certificate' },
  CLUSTER_MISMATCH: { status: 409, message: 'the peer belongs to a different cluster' },
  CLUSTER_MEMBER_NOT_FOUND: { status: 404, message: 'no such cluster member' },
  CLUSTER_JOIN_FAILED: { status: 502, message: 'joining the cluster failed' },
  CLUSTER_CSR_INVALID: { status: 400, message: 'the certificate signing request is malformed or not self-signed' },
  CLUSTER_CERT_INVALID: { status: 502, message: 'a member certificate did not check out against the cluster CA' },
  CLUSTER_CA_MISMATCH: { status: 502, message: 'the cluster CA does not match the pinned hash' },
  CLUSTER_PEER_IDENTITY: { status: 403, message: 'the peer\'s certificate names another member than it claims' },
  CLUSTER_EXISTS: { status: 409, message: 'this data directory already belongs to a cluster' },
  KEY_NOT_FOUND: { status: 404, message: 'no such key' },
  LOCK_HELD: { status: 409, message: 'the lock is held by someone else' },
  LOCK_NOT_HELD: { status: 409, message: 'the token is not the lock\'s current token' },
  LOCK_FENCED: { status: 409, message: 'the write\'s fencing token is stale' },
  LOCK_NOT_FOUND: { status: 404, message: 'no such lock' },
  CLUSTER_MEMBER_UNREACHABLE: { status: 502, message: 'the cluster member that has this resource did not answer' },
  // Storage
  POOL_NOT_FOUND: { status: 404, message: 'no such pool' },
  POOL_EXISTS: { status: 409, message: 'a pool with this name exists' },
  POOL_CONTENT_REFUSED: { status: 422, message: 'the pool does not hold this kind of content' },
  POOL_FULL: { status: 507, message: 'the pool has no room for this' },
  POOL_UNAVAILABLE: { status: 503, message: 'this member cannot use the pool (a shared pool it does not really share)' },
  VOLUME_NOT_FOUND: { status: 404, message: 'no such volume' },
  VOLUME_EXISTS: { status: 409, message: 'a volume with this name already exists in the pool' },
  VOLUME_IN_USE: { status: 409, message: 'the volume is in use' },
  VOLUME_PATH_REFUSED: { status: 422, message: 'the volume\'s data is not a regular file of its pool' },
  VOLUME_FORMAT_INVALID: { status: 422, message: 'the image is not what it was declared to be, or names files outside its pool' },
  VOLUME_CHECKSUM_MISMATCH: { status: 422, message: 'the upload does not match its SHA-256' },
  VOLUME_CONTENT_MISMATCH: { status: 422, message: 'the volume holds another kind of content' },
  VOLUME_TENANT_MISMATCH: { status: 403, message: 'the volume belongs to another tenant' },
  // Security
  FORBIDDEN: { status: 403, message: 'the caller lacks the privilege this needs' },
  USER_NOT_FOUND: { status: 404, message: 'no such user' },
  USER_EXISTS: { status: 409, message: 'a user with this name exists' },
  TOKEN_NOT_FOUND: { status: 404, message: 'no such API token' },
  ROLE_NOT_FOUND: { status: 404, message: 'no such role' },
  ROLE_EXISTS: { status: 409, message: 'a role with this name exists' },
  ROLE_BUILTIN: { status: 409, message: 'built-in roles cannot be changed' },
  LOGIN_FAILED: { status: 401, message: 'wrong user name or password' },
  TOO_MANY_ATTEMPTS: { status: 429, message: 'too many failed attempts from this address; wait and retry' },
  ORIGIN_REFUSED: { status: 403, message: 'the request\'s Host or Origin is not one this daemon serves' },
  NOT_READY: { status: 503, message: 'the daemon is starting; retry' },
  QUOTA_EXCEEDED: { status: 403, message: 'the tenant is over its quota' },
  // Daemon
  CONFIG_INVALID: { status: 500, message: 'daemon configuration is invalid' },
  SHUTTING_DOWN: { status: 503, message: 'daemon is shutting down' },
  STARTING: { status: 503, message: 'this member is starting and serves nothing but /healthz and /readyz yet; retry shortly' },
  INTERNAL: { status: 500, message: 'internal error' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An expected failure with a stable code. Anything else reaching the API is INTERNAL. */
export class NovaError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details?: unknown;

  constructor(code: ErrorCode, message?: string, details?: unknown) {
    super(message ?? ERROR_CODES[code].message);
    this.name = 'NovaError';
    this.code = code;
    this.status = ERROR_CODES[code].status;
    if (details !== undefined) this.details = details;
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/** The JSON body of every error response: `{error:{code,message,details?}}`. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: unknown };
}

/** Converts any thrown value into an error body; unknown errors never leak internals. */
export function toErrorBody(err: unknown): { status: number; body: ErrorBody } {
  if (err instanceof NovaError) {
    const body: ErrorBody = { error: { code: err.code, message: err.message } };
    if (err.details !== undefined) body.error.details = err.details;
    return { status: err.status, body };
  }
  return { status: 500, body: { error: { code: 'INTERNAL', message: ERROR_CODES.INTERNAL.message } } };
}
