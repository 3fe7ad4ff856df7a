/**
 * The daemon: opens the store, recovers state, serves the API, and shuts down
 * gracefully (in-flight requests and operations finish, the store is flushed).
 */
import { chmodSync, mkdirSync, readFileSync } from 'node:fs';
import { resolve, join } from 'node:path';
import type { Logger } from 'pino';
import { NovaError } from './errors.js';
import { ApiServer } from './api/server.js';
import { Router } from './api/router.js';
import { vmRoutes, type ClusterListing } from './api/routes/vms.js';
import { ClusterForwarder } from './api/forwarding.js';
import { migrationRoutes, type MemberResolver } from './api/routes/migrations.js';
import { MigrationService } from './migration/service.js';
import { systemRoutes } from './api/routes/system.js';
import { eventsWsRoute } from './api/events-ws.js';
import { consoleWsRoute } from './api/console-ws.js';
import { ConsoleHub } from './vm/console.js';
import { telemetryWsRoute } from './api/telemetry-ws.js';
import { vncWsRoute } from './api/vnc-ws.js';
import { TelemetrySampler } from './telemetry/sampler.js';
import { loadUws } from './api/uws.js';
import { isLoopback, parseListen, type DaemonConfig } from './config.js';
import { formatHostPort } from './util/host-port.js';
import { EventLog } from './events/log.js';
import { createLogger } from './log.js';
import { RocksStore } from './native/rocks-store.js';
import { Metrics } from './telemetry/metrics.js';
import { selectDriver } from './vm/drivers/select.js';
import { VmService } from './vm/service.js';
import type { HypervisorDriver } from './vm/driver.js';
import { Cluster } from './cluster/cluster.js';
import { ReplicatedStore } from './cluster/replicated-store.js';
import { LockService, vmLockGuard } from './cluster/locks.js';
import { ClusterCa } from './cluster/cluster-ca.js';
import { memberCertFiles } from './tls/member-tls.js';
import { freePort } from './util/free-port.js';
import { registerClusterMetrics } from './cluster/metrics.js';
import { clusterRoutes } from './api/routes/cluster.js';
import { InventoryPublisher, memberAt, resolveMember } from './cluster/inventory.js';
import { MemberAssertions } from './cluster/member-assertion.js';
import { StorageService } from './storage/service.js';
import { VmStorage } from './vm/media.js';
import { storageRoutes } from './api/routes/storage.js';
import { DiskPolicyEngine } from './vm/disk-policy.js';
import { PoolSync } from './storage/pool-sync.js';
import { loadOrCreateAdminToken } from './auth/admin-token.js';
import { IdentityStore } from './auth/identity.js';
import { Authenticator } from './auth/principal.js';
import { Sessions } from './auth/sessions.js';
import { daemonResolver } from './api/target-resolver.js';
import { authRoutes } from './api/routes/auth.js';
import { AuditLog } from './auth/audit.js';
import { OriginPolicy } from './api/origin.js';
import { Quotas } from './cluster/quotas.js';
import { quotaRoutes } from './api/routes/quotas.js';
import { hostname, networkInterfaces } from 'node:os';
import { rootCertificates } from 'node:tls';
import { Agent, setGlobalDispatcher } from 'undici';

export { VERSION } from './version.js';
import { VERSION } from './version.js';

export interface Daemon {
  config: DaemonConfig;
  port: number;
  /** Whether the API speaks HTTPS. */
  tls: boolean;
  log: Logger;
  vms: VmService;
  driver: HypervisorDriver;
  cluster: Cluster;
  /** Where the administrator token is, and its text if this start made it (to be shown once). */
  adminToken: { path: string; created?: string };
  close(): Promise<void>;
}

export async function startDaemon(config: DaemonConfig, log: Logger = createLogger(config.logLevel, config.nodeId)): Promise<Daemon> {
  const uws = loadUws(); // Fail fast if the native HTTP stack is missing.
  // A bad bundle stops the start before anything is opened or joined.
  const operatorCas = config.trustCaFile ? [trustedCas(config.trustCaFile)] : [];
  const dataDir = resolve(config.dataDir);
  // Only root reads the data directory: it holds the store, the VMs' disks and admin.token.
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o700);
  const admin = loadOrCreateAdminToken(dataDir, config.nodeId);
  const identity = new IdentityStore([admin.record]);
  const sessions = new Sessions(identity, config.oidc);
  const authenticator = new Authenticator(identity, config.apiToken, sessions);
  const store = RocksStore.open(join(dataDir, 'store'));
  let ready = false;
  let cluster: Cluster | undefined;
  try {
    const events = await EventLog.open(store, { retain: config.eventRetention });
    const storage = await StorageService.open({ dataDir, pools: config.pools, events, log, uploadLimitBytes: config.uploadLimitBytes, hostPaths: config.hostPaths });
    const vmStorage = new VmStorage(storage);
    const driver = selectDriver(config.driver, { sim: config.sim, dataDir, log, media: (vm) => vmStorage.media(vm) });
    const killAfter = config.faults.killAfterDriverWork;
    const vms = await VmService.open({
      store, events, driver, storage: vmStorage, nodeId: config.nodeId, log, shutdownTimeoutMs: config.shutdownTimeoutMs, dataDir,
      ...(killAfter ? { afterDriverWork: (kind) => kind === killAfter && process.kill(process.pid, 'SIGKILL') } : {}),
    });
    const migrations = await MigrationService.open({
      store, events, vms, driver, log, nodeId: config.nodeId, dataDir, host: config.host,
      // The cluster (and its member certificate) is up before the API takes any migration.
      tls: () => {
        if (!cluster) throw new NovaError('RAFT_STOPPED', 'the cluster is not running yet');
        return cluster.tls;
      },
      ...(config.migrationPort ? { transportPort: config.migrationPort } : {}),
      ...(config.migrationDataPorts ? { dataPorts: config.migrationDataPorts } : {}),
      faults: {
        ...(config.faults.corruptMigrationFrame ? { corruptPagesFrame: config.faults.corruptMigrationFrame } : {}),
        ...(config.faults.cutMigrationLinkAfterMiB ? { cutAfterBytes: config.faults.cutMigrationLinkAfterMiB * 1048576 } : {}),
      },
    });
    const metrics = new Metrics({
      vmsByState: () => vms.countByState(),
      lastEventSeq: () => events.lastSeq,
      vmStats: async () => (await vms.liveStats()).map(({ vm, stats }) => ({ vm: vm.id, name: vm.name, stats })),
      pools: () => storage.statuses(),
    });
    events.subscribe({ types: ['migration.completed', 'migration.failed', 'migration.cancelled'] }, (ev) => {
      const role = String(ev.data.role);
      metrics.migrations.inc({ role, result: ev.type.slice('migration.'.length) });
      const d = ev.data as { progress?: { bytesRaw: number; bytesWire: number }; downtimeMs?: { measured?: number } };
      if (ev.type !== 'migration.completed' || role !== 'source') return;
      if (d.progress) {
        metrics.migrationBytes.inc({ kind: 'raw' }, d.progress.bytesRaw);
        metrics.migrationBytes.inc({ kind: 'wire' }, d.progress.bytesWire);
      }
      if (d.downtimeMs?.measured !== undefined) metrics.migrationDowntime.observe({ role }, d.downtimeMs.measured / 1000);
    });
    events.subscribe({ types: ['operation.succeeded', 'operation.failed'] }, (ev) => {
      metrics.operations.inc({ kind: String(ev.data.kind), result: ev.type === 'operation.succeeded' ? 'succeeded' : 'failed' });
    });

    const sampler = new TelemetrySampler(vms, log, config.telemetryIntervalMs);
    // Finished operations and migrations are kept recordRetentionMs, then deleted.
    const trimRecords = () => {
      const cutoff = Date.now() - config.recordRetentionMs;
      Promise.all([vms.trimOperations(cutoff), migrations.trimRecords(cutoff)]).then(
        ([ops, migs]) => (ops + migs > 0 ? log.info({ operations: ops, migrations: migs }, 'trimmed finished records') : undefined),
        (err) => log.warn({ err }, 'trimming finished records failed'),
      );
    };
    const trimmer = setInterval(trimRecords, Math.min(3_600_000, Math.max(500, config.recordRetentionMs / 2)));
    trimmer.unref();
    trimRecords();
    const audit = new AuditLog(events, log);
    const router = new Router();
    systemRoutes(router, metrics, {
      ready: () => ready,
      info: () => ({ version: VERSION, node: config.nodeId, driver: driver.name, http: uws.info.native ? 'uws-native' : 'uws-fallback', vms: vms.size, lastEventSeq: events.lastSeq }),
    });
    const listing: ClusterListing = {};
    vmRoutes(router, vms, listing);
    const diskPolicy = new DiskPolicyEngine({
      vms: () => vms.all(),
      stats: (vm) => driver.stats?.(vm.id) ?? Promise.resolve(undefined),
      defaultPool: storage.defaultPool,
      policy: (pool) => storage.policyOf(pool),
      hasPool: (pool) => storage.hasPool(pool),
      moveDisk: (vm, disk, to) => vms.moveDisk(vm.id, disk, to),
      operationDone: async (id) => (await vms.getOperation(id)).state !== 'running',
    }, log);
    if (config.pools.some((p) => p.policy)) diskPolicy.start(config.storagePolicyIntervalMs);
    const storageHooks: Parameters<typeof storageRoutes>[2] = {};
    storageRoutes(router, storage, storageHooks);
    storageHooks.resizeOnline = (ref, bytes) => vms.resizeVolumeOnline(ref, bytes);
    storageHooks.snapshotOnline = (ref, op, name) => vms.snapshotVolumeOnline(ref, op, name);
    storageHooks.policyPlan = () => diskPolicy.plan();
    // Members are named by id or node name once the cluster runs (it starts after the API).
    let resolveTarget: MemberResolver = async () => {
      throw new NovaError('MIGRATION_TARGET_UNKNOWN', 'the cluster is not running yet; give the target as an address');
    };
    let isMember: (url: string) => Promise<number | undefined> = async () => undefined;
    migrationRoutes(router, migrations, (member) => resolveTarget(member), (url) => isMember(url));
    const resolver = daemonResolver(vms, storage, () => migrations);
    authRoutes(router, identity, resolver, audit, sessions);
    // The cluster first: members talk to each other on the cluster port, over mutual TLS,
    // and the member certificate it holds is also what the API serves HTTPS with.
    const peerPort = config.peer.port || (await freePort(config.peer.host));
    const peerAdvertised = config.peerAdvertise ?? formatHostPort(config.peer.host, peerPort);
    const advertisedHost = config.advertise ? [parseListen(config.advertise).host] : [];
    const certHosts = certificateHosts([config.host, config.peer.host, ...advertisedHost, parseListen(peerAdvertised).host]);
    cluster = await Cluster.open({
      dataDir, address: peerAdvertised, listen: { host: config.peer.host, port: peerPort }, hosts: certHosts, log, raft: config.raft,
      ...(config.clusterSecret ? { secret: config.clusterSecret } : {}),
      ...(config.join ? { join: config.join } : {}),
      ...(config.caHash ? { caHash: config.caHash } : {}),
    });
    // Other members' APIs are HTTPS with certificates of this cluster's CA: trusted, besides the
    // system's and the operator's own (daemons outside the cluster).
    const memberCas = [...rootCertificates, cluster.tls.material.caPem, ...operatorCas];
    // Members vouch for their requests to each other with their certificates, never with a token.
    const assertions = new MemberAssertions(cluster.tls);
    authenticator.useMembers(assertions);
    migrations.useAssertions((to, method, url) => assertions.header(to, method, url));
    setGlobalDispatcher(new Agent({ connect: { ca: memberCas } }));
    const apiTls = apiTlsFiles(config, dataDir);
    const server = await ApiServer.listen(
      router,
      {
        host: config.host, port: config.port, bodyLimitBytes: config.bodyLimitBytes, log, metrics, ready: () => ready,
        ...(apiTls ? { tls: apiTls } : {}),
        auth: {
          authenticate: (h, call) => authenticator.authenticate(h, call),
          resolver,
          origins: new OriginPolicy([hostname(), config.nodeId, config.host, ...advertisedHost], { allowedHosts: config.allowedHosts, allowedOrigins: config.allowedOrigins }),
        },
        audit: (rec) => audit.record(rec),
      },
      [eventsWsRoute(events, log), consoleWsRoute(vms, new ConsoleHub(driver), log), telemetryWsRoute(sampler, vms), vncWsRoute(vms, driver)],
    );
    // uWS cannot swap a listening app's certificate (nor re-listen on its port while old
    // connections linger): a renewed member certificate reaches the API at the next start.
    if (apiTls && !config.apiCertFile) {
      cluster.tls.onReplace(() => log.warn('this member\'s certificate was renewed; the API serves the new one from its next start (the old one is valid for a third of its life yet)'));
    }
    const advertised = config.advertise ?? formatHostPort(config.host, server.port);
    const replicated = new ReplicatedStore(cluster.node);
    const clusterCa = new ClusterCa(replicated, cluster.tls, certHosts, log);
    cluster.useSigner(clusterCa);
    void publishCa(clusterCa, log);
    clusterCa.startRenewal();
    await identity.attach(replicated);
    // Pools defined through the API are every member's; then a shared pool is used only
    // where this member really sees the directory the others do.
    const poolSync = new PoolSync(storage, replicated, log, new Set(config.pools.map((p) => p.name)));
    await poolSync.sync().catch((err) => log.warn({ err }, 'reading pool definitions from the cluster store failed'));
    poolSync.start(2000);
    storageHooks.pools = poolSync;
    await storage.checkSharedPools({
      get: async (key) => (await replicated.get(key))?.toString(),
      put: (key, value) => replicated.write([{ key, value: Buffer.from(value) }]),
    });
    const locks = new LockService(cluster.node);
    vms.useLockGuard(vmLockGuard(locks, cluster.memberId));
    const inventory = new InventoryPublisher(
      replicated,
      vms,
      { member: cluster.memberId, node: config.nodeId, address: advertised, tls: server.tls, driver: driver.name },
      log,
      (id) => {
        try {
          return migrations.get(id);
        } catch {
          return undefined;
        }
      },
      () => cluster?.lastStatus,
      () => storage.diskUsage(),
    );
    inventory.start(events);
    vms.useDirectory(inventory);
    const self = cluster.memberId;
    resolveTarget = (t) => resolveMember(replicated, self, t);
    isMember = (url) => memberAt(replicated, url);
    clusterRoutes(router, cluster, replicated, locks);
    const quotas = new Quotas(replicated, locks, `member-${self}`, () => storage.sharedDiskUsage());
    vms.useQuota(quotas);
    storage.useQuota(quotas);
    migrations.useQuota(quotas);
    // A deleted VM leaves the inventory; its admission must not count again until it expires.
    events.subscribe({ types: ['vm.deleted'] }, (ev) => {
      if (ev.vmId && ev.tenant) quotas.withdraw(ev.tenant, ev.vmId).catch(() => undefined);
    });
    quotaRoutes(router, quotas);
    // Any member answers for any VM: requests about another member's VM go there.
    const forwarder = new ClusterForwarder(replicated, assertions, memberCas, () => {
      const st = cluster?.lastStatus;
      return st && [...st.voters, ...st.learners];
    });
    listing.forwarder = forwarder;
    listing.self = self;
    server.useForwarder(forwarder);
    registerClusterMetrics(metrics.registry, cluster);
    ready = true;
    log.info({ listen: `${config.host}:${server.port}`, dataDir, driver: driver.name, vms: vms.size, lastEventSeq: events.lastSeq, cluster: cluster.clusterId, member: cluster.memberId }, 'novacron daemon ready');

    let closing: Promise<void> | undefined;
    return {
      config,
      port: server.port,
      tls: server.tls,
      log,
      vms,
      driver,
      cluster,
      adminToken: { path: admin.path, ...(admin.created ? { created: admin.created } : {}) },
      close: () =>
        (closing ??= (async () => {
          ready = false;
          identity.stop();
          clearInterval(trimmer);
          sampler.stop();
          diskPolicy.stop();
          poolSync.stop();
          await server.close();
          await audit.flush();
          forwarder.close();
          inventory.stop();
          clusterCa.stop();
          cluster?.close();
          await migrations.close();
          await vms.drain();
          await driver.close();
          await store.close();
          log.info('novacron daemon stopped');
        })()),
    };
  } catch (err) {
    cluster?.close();
    await store.close().catch(() => undefined);
    throw err;
  }
}

/** The cluster CA into the replicated store (on the member that made it), retried until the cluster takes the write. */
async function publishCa(ca: ClusterCa, log: Logger): Promise<void> {
  for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await ca.publish();
    } catch (err) {
      log.debug({ err: (err as Error).message }, 'publishing the cluster CA failed; will retry');
      await new Promise((r) => setTimeout(r, delay).unref());
    }
  }
}

/** The names and addresses a member certificate carries: this host's, loopback, and every configured one (wildcards left out). */
function certificateHosts(configured: string[]): string[] {
  const local = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address));
  const all = [hostname(), 'localhost', '127.0.0.1', '::1', ...local, ...configured];
  return [...new Set(all.map((h) => h.replace(/%.*$/, '')).filter((h) => h !== '' && h !== '0.0.0.0' && h !== '::'))];
}

/** The operator's extra CA bundle (`trustCaFile`), checked to hold certificates. */
function trustedCas(file: string): string {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (e) {
    throw new NovaError('CONFIG_INVALID', `cannot read trustCaFile ${file}: ${(e as Error).message}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new NovaError('CONFIG_INVALID', `trustCaFile ${file} holds no PEM certificate`);
  return pem;
}

/**
 * What the API serves HTTPS with: the operator's certificate when configured, else this
 * member's own; nothing (plain HTTP) only when it listens on loopback and `apiTls` is `auto`.
 */
export function apiTlsFiles(config: Pick<DaemonConfig, 'host' | 'apiTls' | 'apiCertFile' | 'apiKeyFile'>, dataDir: string): { keyFile: string; certFile: string } | undefined {
  if (config.apiCertFile && config.apiKeyFile) return { certFile: config.apiCertFile, keyFile: config.apiKeyFile };
  return config.apiTls === 'on' || !isLoopback(config.host) ? memberCertFiles(dataDir) : undefined;
}
