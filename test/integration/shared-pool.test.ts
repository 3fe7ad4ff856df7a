/**
 * Shared pools in a two-member cluster: a pool every member mounts at the same path is
 * usable on both (one member's upload is the other's volume); a pool configured as shared
 * whose directory is really each member's own is refused on the member that does not see
 * the first member's marker (503 POOL_UNAVAILABLE), and said so in its status.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, authHeaders, removeDir, tempDataDir, tlsInit } from '../helpers/daemon.js';
import { TestCluster } from '../helpers/cluster.js';

let c: TestCluster;
let sharedDir: string;

beforeAll(async () => {
  sharedDir = tempDataDir();
  c = await TestCluster.start(2, undefined, {
    config: {
      pools: [
        { name: 'real', path: join(sharedDir, 'real'), shared: true },
        // Relative: under each member's own data directory, so not shared at all.
        { name: 'fake', path: 'pools/fake', shared: true },
      ],
    },
  });
}, 120_000);
afterAll(async () => {
  await c?.close();
  removeDir(sharedDir);
});

describe('shared pools across members', () => {
  it('a really shared pool works on every member; a "shared" pool that is not is unavailable where the marker is missing', async () => {
    const [first, second] = [c.members[0]!.url, c.members[1]!.url];
    const up = await fetch(`${first}/v1/pools/real/volumes/common/content?format=raw`, { ...tlsInit(first), method: 'PUT', body: new Uint8Array(1 << 20), headers: authHeaders(first) } as RequestInit);
    expect(up.status).toBe(201);
    expect((await api(second, 'GET', '/v1/pools/real/volumes/common')).body).toMatchObject({ ref: 'real/common', sizeBytes: 1 << 20 });
    expect((await api(second, 'GET', '/v1/pools/real')).body.unavailable).toBeUndefined();

    expect((await api(first, 'GET', '/v1/pools/fake')).body.unavailable).toBeUndefined(); // the first member wrote the marker
    const status = (await api(second, 'GET', '/v1/pools/fake')).body;
    expect(status.unavailable).toMatch(/no marker/);
    const refused = await api(second, 'POST', '/v1/pools/fake/volumes', { name: 'x', sizeMiB: 1, format: 'raw' });
    expect([refused.status, refused.body.error.code]).toEqual([503, 'POOL_UNAVAILABLE']);
    const vm = await api(second, 'POST', '/v1/vms', { name: 'on-fake', vcpus: 1, memoryMiB: 64, disks: [{ name: 'root', pool: 'fake', sizeMiB: 1, format: 'raw' }] });
    expect([vm.status, vm.body.error.code]).toEqual([503, 'POOL_UNAVAILABLE']);
    expect((await api(first, 'POST', '/v1/pools/fake/volumes', { name: 'x', sizeMiB: 1, format: 'raw' })).status).toBe(201);
  });

  it('a pool defined through the API is every member\'s; removing it drops it where it is empty', async () => {
    const [first, second] = [c.members[0]!.url, c.members[1]!.url];
    const made = await api(first, 'POST', '/v1/pools', { name: 'api-pool', path: 'pools/api', mediaClass: 'fast' });
    expect(made.status, JSON.stringify(made.body)).toBe(201);
    expect(made.body).toMatchObject({ name: 'api-pool', mediaClass: 'fast', root: join(c.members[0]!.dataDir, 'pools', 'api') });
    expect((await api(second, 'POST', '/v1/pools', { name: 'api-pool', path: 'elsewhere' })).body.error.code).toBe('POOL_EXISTS');
    expect((await api(first, 'POST', '/v1/pools', { name: 'real', path: 'x' })).body.error.code).toBe('POOL_EXISTS'); // a config file's
    await c.waitFor(async () => (await api(second, 'GET', '/v1/pools/api-pool')).status === 200, 'the pool on the other member');
    expect((await api(second, 'GET', '/v1/pools/api-pool')).body.root).toBe(join(c.members[1]!.dataDir, 'pools', 'api'));
    expect((await api(second, 'POST', '/v1/pools/api-pool/volumes', { name: 'v', sizeMiB: 1, format: 'raw' })).status).toBe(201);
    expect((await api(first, 'DELETE', '/v1/pools/real')).body.error.code).toBe('POOL_CONTENT_REFUSED');
    expect((await api(second, 'DELETE', '/v1/pools/api-pool')).body.error.code).toBe('VOLUME_IN_USE'); // it has a volume there
    expect((await api(first, 'DELETE', '/v1/pools/api-pool')).status).toBe(204); // empty on the first member
    expect((await api(first, 'GET', '/v1/pools/api-pool')).status).toBe(404);
    // The second member keeps it while its volume is there, and drops it once that is gone.
    expect((await api(second, 'GET', '/v1/pools/api-pool')).status).toBe(200);
    expect((await api(second, 'DELETE', '/v1/pools/api-pool/volumes/v')).status).toBe(204);
    await c.waitFor(async () => (await api(second, 'GET', '/v1/pools/api-pool')).status === 404, 'the emptied pool dropped');
  });
});
