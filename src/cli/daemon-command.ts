/** `novacron daemon`: config → daemon → signals. */
import { loadConfig } from '../config.js';
import { formatHostPort } from '../util/host-port.js';
import { startDaemon } from '../daemon.js';
import { NovaError } from '../errors.js';
import { createLogger } from '../log.js';

export interface DaemonFlags {
  listen?: string;
  dataDir?: string;
  driver?: string;
  nodeId?: string;
  logLevel?: string;
  apiToken?: string;
  apiTokenFile?: string;
  clusterSecret?: string;
  clusterSecretFile?: string;
  join?: string;
  advertise?: string;
  config?: string;
}

export async function runDaemon(flags: DaemonFlags): Promise<void> {
  const { config: configFile, ...rest } = flags;
  let config;
  try {
    config = loadConfig({ flags: rest, ...(configFile ? { configFile } : {}) });
  } catch (err) {
    console.error(`novacron: ${(err as Error).message}`);
    process.exit(2);
  }
  const log = createLogger(config.logLevel, config.nodeId);
  for (const flag of ['--api-token', '--cluster-secret']) {
    if (process.argv.some((a) => a === flag || a.startsWith(`${flag}=`))) log.warn(`${flag} on the command line is visible to every user of this host (ps); use ${flag}-file or the environment`);
  }
  let daemon;
  try {
    daemon = await startDaemon(config, log);
  } catch (err) {
    const code = err instanceof NovaError ? err.code : 'INTERNAL';
    log.fatal({ err, code }, `daemon failed to start: ${(err as Error).message}`);
    console.error(`novacron: cannot start daemon: ${code}: ${(err as Error).message}`);
    process.exit(1);
  }
  if (daemon.adminToken.created) {
    // Shown this once (like Jupyter's token); the CLI on this host reads it from the file.
    console.error(`novacron: administrator token (saved in ${daemon.adminToken.path}, mode 0600; shown only now):\n  ${daemon.adminToken.created}`);
  }
  // Written for tools and tests that start the daemon on port 0 (the cluster port first).
  console.error(`novacron: cluster port (mutual TLS) on ${formatHostPort(config.peer.host, daemon.cluster.peerPort)}, CA ${daemon.cluster.caHash}`);
  console.error(`novacron: listening on ${daemon.tls ? 'https' : 'http'}://${formatHostPort(config.host, daemon.port)}`);
  let signals = 0;
  const stop = (signal: string) => {
    if (++signals > 1) {
      log.warn({ signal }, 'second signal: exiting immediately');
      process.exit(130);
    }
    log.info({ signal }, 'shutting down');
    daemon.close().then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
