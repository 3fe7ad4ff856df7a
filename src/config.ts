/**
 * Daemon configuration: defaults < config file (JSON, `--config`) < environment
 * (`NOVACRON_*`) < command-line flags. Validated as a whole; a bad value is a start-up
 * error naming the field and where it came from.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { z } from 'zod';
import { NovaError } from './errors.js';
import { LOG_LEVELS } from './log.js';
import { OPERATION_KINDS } from './operations/operation.js';
import { SIM_OPS } from './vm/drivers/sim.js';
import { HostPathEntry, PoolDef } from './storage/model.js';

/** A peer or API address: `host:port` or `[v6]:port`. */
export const HostPort = z.string().regex(/^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected HOST:PORT');
const simOpRecord = z.partialRecord(z.enum(SIM_OPS), z.number().min(0));

export const ConfigSchema = z.strictObject({
  listen: z.string().default('127.0.0.1:7700'),
  dataDir: z.string().min(1).default('./data'),
  driver: z.enum(['auto', 'qemu', 'sim']).default('auto'),
  nodeId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/).default(hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63) || 'node'),
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** An extra administrator token this member accepts (besides DIR/admin.token); from a file or the environment, preferably. */
  apiToken: z.string().min(16, 'API tokens must be at least 16 characters').optional(),
  apiTokenFile: z.string().min(1).optional(),
  bodyLimitBytes: z.int().min(1024).max(64 << 20).default(1 << 20),
  shutdownTimeoutMs: z.int().min(0).default(60_000),
  eventRetention: z.int().min(1000).default(100_000),
  telemetryIntervalMs: z.int().min(100).max(60_000).default(2000),
  /** Port of the live-migration transport listener (on the listen host); 0 = any free port. */
  migrationPort: z.int().min(0).max(65535).default(0),
  /** Ports for live migrations' data links, `FROM-TO` (one per incoming migration); default: any free port. */
  migrationDataPorts: z
    .string()
    .regex(/^\d{1,5}-\d{1,5}$/, 'expected FROM-TO, e.g. 49152-49215')
    .transform((r) => r.split('-').map(Number) as [number, number])
    .refine(([from, to]) => from >= 1 && from <= to && to <= 65535, 'expected 1 <= FROM <= TO <= 65535')
    .transform(([from, to]) => ({ from, to }))
    .optional(),
  /** Shared secret of the cluster: peers authenticate with it. Generated on first start when not given. */
  clusterSecret: z.string().min(16, 'cluster secrets must be at least 16 characters').optional(),
  clusterSecretFile: z.string().min(1).optional(),
  /**
   * HTTPS on the API: `auto` serves it on any address but loopback (where plain HTTP to
   * local clients is allowed); `on` serves it on loopback too. The certificate is the
   * member's own (signed by the cluster CA), unless `apiCertFile`/`apiKeyFile` name one.
   */
  apiTls: z.enum(['auto', 'on']).default('auto'),
  /** An operator's own API certificate and key (PEM files), instead of the member certificate. */
  apiCertFile: z.string().min(1).optional(),
  apiKeyFile: z.string().min(1).optional(),
  /**
   * More CA certificates (a PEM bundle) to trust for HTTPS to daemons outside this cluster
   * (migration targets: another cluster's members, an operator's own CA), besides the
   * system's and the cluster's.
   */
  trustCaFile: z.string().min(1).optional(),
  /** HOST:PORT of a member's cluster port, to join its cluster on first start (ignored once this daemon is a member). */
  join: HostPort.optional(),
  /** The pin of the cluster CA a join must find (`sha256:<hex>`, from `novacron cluster join-command` or GET /v1/cluster). */
  caHash: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'expected sha256:<64 hex digits>').optional(),
  /** HOST:PORT API clients and other members' API calls reach this member at (default: the listen address); for NAT or a proxy in front. */
  advertise: HostPort.optional(),
  /** Where the cluster port (members' mutual-TLS traffic: Raft, joins) listens; default: the API host, API port + 1 (any free port when the API's is 0). */
  peerListen: HostPort.optional(),
  /** HOST:PORT other members dial this member's cluster port at (default: the peer listen address). */
  peerAdvertise: HostPort.optional(),
  /** Raft timing (defaults suit a LAN; tests shorten them). */
  raft: z.strictObject({
    tickMs: z.int().min(1).max(10_000).optional(),
    electionTicks: z.int().min(2).max(1000).optional(),
    heartbeatTicks: z.int().min(1).max(100).optional(),
    requestTimeoutMs: z.int().min(100).max(600_000).optional(),
    compactThreshold: z.int().min(10).optional(),
    keepEntries: z.int().min(1).optional(),
  }).default({}),
  /** Fault injection for tests; never set in production: corrupt the Nth RAM packet's pages; cut the migration link after N MiB; die mid-operation. */
  faults: z.strictObject({
    corruptMigrationFrame: z.int().min(1).optional(),
    cutMigrationLinkAfterMiB: z.int().min(1).optional(),
    /** SIGKILL this daemon once an operation of this kind has done its driver work, before its outcome is written. */
    killAfterDriverWork: z.enum(OPERATION_KINDS).optional(),
  }).default({}),
  sim: z.strictObject({ latencyMs: simOpRecord.optional(), failureRate: simOpRecord.optional() }).default({}),
  /** Storage pools (config file only); a `local` pool under DIR/pools/local is added when none is named so. */
  pools: z.array(PoolDef).max(64).default([]),
  /** Host paths VMs may use as disks (volumes of the `host` pool); config file only, never from the API. */
  hostPaths: z.array(HostPathEntry).max(256).default([]),
  /** How often the pools' tiering rules sample disk activity and may start a move. */
  storagePolicyIntervalMs: z.int().min(1000).max(86_400_000).default(60_000),
  /** Names this daemon is reached by besides IP addresses, localhost and its own host names (DNS-rebinding check). */
  allowedHosts: z.array(z.string().regex(/^[A-Za-z0-9.-]{1,253}$/)).max(64).default([]),
  /** Origins (scheme://host:port) of web pages allowed to call the API from a browser. */
  allowedOrigins: z.array(z.string().regex(/^https?:\/\/[A-Za-z0-9.:[\]-]+$/)).max(64).default([]),
  /** Tokens of an OIDC provider: verified against its JWKS file; the user is `<userClaim>@<realm>`. */
  oidc: z.strictObject({
    jwksFile: z.string().min(1),
    issuer: z.string().min(1).max(512),
    audience: z.string().min(1).max(512).optional(),
    userClaim: z.string().min(1).max(64).default('sub'),
    realm: z.string().regex(/^[a-z0-9][a-z0-9.-]{0,31}$/).default('oidc'),
  }).optional(),
  /** How long finished operations and migrations are kept (their records, not their events). */
  recordRetentionMs: z.int().min(1000).max(10 * 365 * 86_400_000).default(30 * 86_400_000),
  /** Largest volume upload accepted, bytes. */
  uploadLimitBytes: z.int().min(1 << 20).max(2 ** 46).default(64 * 2 ** 30),
});

export type DaemonConfig = z.infer<typeof ConfigSchema> & { host: string; port: number; peer: { host: string; port: number } };

const ENV: Record<string, keyof z.infer<typeof ConfigSchema>> = {
  NOVACRON_LISTEN: 'listen',
  NOVACRON_DATA_DIR: 'dataDir',
  NOVACRON_DRIVER: 'driver',
  NOVACRON_NODE_ID: 'nodeId',
  NOVACRON_LOG_LEVEL: 'logLevel',
  NOVACRON_API_TOKEN: 'apiToken',
  NOVACRON_CLUSTER_SECRET: 'clusterSecret',
  NOVACRON_API_TOKEN_FILE: 'apiTokenFile',
  NOVACRON_CLUSTER_SECRET_FILE: 'clusterSecretFile',
  NOVACRON_JOIN: 'join',
  NOVACRON_ADVERTISE: 'advertise',
  NOVACRON_CA_HASH: 'caHash',
  NOVACRON_API_TLS: 'apiTls',
  NOVACRON_API_CERT_FILE: 'apiCertFile',
  NOVACRON_API_KEY_FILE: 'apiKeyFile',
  NOVACRON_TRUST_CA_FILE: 'trustCaFile',
  NOVACRON_PEER_LISTEN: 'peerListen',
  NOVACRON_PEER_ADVERTISE: 'peerAdvertise',
  NOVACRON_MIGRATION_DATA_PORTS: 'migrationDataPorts',
};

export interface ConfigSources {
  flags: Partial<Record<string, unknown>>;
  env?: NodeJS.ProcessEnv;
  configFile?: string;
}

export function loadConfig({ flags, env = process.env, configFile }: ConfigSources): DaemonConfig {
  let fileValues: Record<string, unknown> = {};
  const file = configFile ?? env.NOVACRON_CONFIG;
  if (file) {
    try {
      fileValues = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new NovaError('CONFIG_INVALID', `cannot read config file ${file}: ${(e as Error).message}`);
    }
  }
  const envValues: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV)) if (env[name] !== undefined && env[name] !== '') envValues[key] = env[name];
  const definedFlags = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
  const merged: Record<string, unknown> = { ...fileValues, ...envValues, ...definedFlags };
  for (const [field, fileField] of [['apiToken', 'apiTokenFile'], ['clusterSecret', 'clusterSecretFile']] as const) {
    const path = merged[fileField];
    if (typeof path !== 'string' || path === '') continue;
    if (merged[field] !== undefined) throw new NovaError('CONFIG_INVALID', `give ${field} or ${fileField}, not both`);
    try {
      merged[field] = readFileSync(path, 'utf8').trim();
    } catch (e) {
      throw new NovaError('CONFIG_INVALID', `cannot read ${fileField} ${path}: ${(e as Error).message}`);
    }
  }
  const parsed = ConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const msg = parsed.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`).join('; ');
    throw new NovaError('CONFIG_INVALID', `invalid configuration: ${msg}`);
  }
  const { host, port } = parseListen(parsed.data.listen);
  if ((parsed.data.apiCertFile === undefined) !== (parsed.data.apiKeyFile === undefined)) throw new NovaError('CONFIG_INVALID', 'give both apiCertFile and apiKeyFile, or neither');
  const peer = parsed.data.peerListen ? parseListen(parsed.data.peerListen) : { host, port: port === 0 ? 0 : port + 1 };
  if (peer.port > 65535) throw new NovaError('CONFIG_INVALID', `the API listens on port ${port}: give the cluster port with --peer-listen`);
  return { ...parsed.data, host, port, peer };
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new NovaError('CONFIG_INVALID', `invalid listen address "${listen}": expected HOST:PORT, e.g. 127.0.0.1:7700 or [::1]:7700`);
  return { host: (m[1] ?? m[2])!, port };
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1';
  return false;
}
