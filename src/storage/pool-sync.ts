/**
 * Pools defined through the API live in the cluster store (`pool/<name>`), so every member
 * knows every pool: the member asked writes the definition, and each member adds the pools
 * it finds there (every `intervalMs`, and at once on the member asked). A relative path is
 * under each member's own data directory; `shared: true` pools go through the marker check.
 * Removing one drops it on every member that has no volumes in it.
 */
import type { Logger } from 'pino';
import { NovaError } from '../errors.js';
import type { Entry, KeyRange, WriteOp } from '../store/store.js';
import { prefixRange } from '../store/store.js';
import { PoolDef } from './model.js';
import type { StorageService } from './service.js';

const PREFIX = 'pool/';

/** The part of the cluster store pool definitions need. */
export interface PoolStore {
  scan(range: KeyRange): Promise<Entry[]>;
  get(key: string): Promise<Buffer | undefined>;
  write(ops: WriteOp[]): Promise<void>;
}

export class PoolSync {
  #timer?: NodeJS.Timeout;

  constructor(
    private readonly storage: StorageService,
    private readonly store: PoolStore,
    private readonly log: Logger,
    /** The pools of this member's config file (not the API's to change). */
    private readonly configured: Set<string>,
  ) {}

  start(intervalMs: number): void {
    this.#timer = setInterval(() => void this.sync().catch((err) => this.log.warn({ err }, 'reading pool definitions from the cluster store failed')), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Adds the pools defined in the cluster store, and drops the ones removed there (when empty here). */
  async sync(): Promise<void> {
    const defined = new Map<string, PoolDef>();
    for (const e of await this.store.scan(prefixRange(PREFIX))) {
      const parsed = PoolDef.safeParse(JSON.parse(e.value.toString()));
      if (parsed.success) defined.set(parsed.data.name, parsed.data);
    }
    for (const def of defined.values()) {
      if (this.configured.has(def.name) || this.storage.hasPool(def.name)) continue;
      await this.storage.addPool(def, { fromApi: true }).catch((err) => this.log.error({ err, pool: def.name }, 'opening a pool defined in the cluster store failed'));
      this.log.info({ pool: def.name }, 'pool defined in the cluster store added');
    }
    for (const name of this.storage.apiPools()) {
      if (!defined.has(name) && this.storage.dropPool(name)) this.log.info({ pool: name }, 'pool removed from the cluster store dropped');
    }
  }

  /** `POST /v1/pools`: records the definition for every member and opens it here. */
  async define(def: PoolDef): Promise<void> {
    if (this.configured.has(def.name) || this.storage.hasPool(def.name) || (await this.store.get(PREFIX + def.name))) {
      throw new NovaError('POOL_EXISTS', `a pool named "${def.name}" exists`);
    }
    await this.store.write([{ key: PREFIX + def.name, value: Buffer.from(JSON.stringify(def)) }]);
    await this.sync();
  }

  /** `DELETE /v1/pools/:name`: refused while this member has volumes in it, or when it comes from a config file. */
  async remove(name: string): Promise<void> {
    if (this.configured.has(name)) throw new NovaError('POOL_CONTENT_REFUSED', `pool ${name} is defined in this member's config file; remove it there`);
    if (!(await this.store.get(PREFIX + name))) throw new NovaError('POOL_NOT_FOUND', `no pool "${name}" was defined through the API`);
    if (this.storage.hasPool(name) && (await this.storage.pool(name)).status.volumes > 0) throw new NovaError('VOLUME_IN_USE', `pool ${name} still has volumes on this member`);
    await this.store.write([{ key: PREFIX + name }]);
    await this.sync();
  }
}
