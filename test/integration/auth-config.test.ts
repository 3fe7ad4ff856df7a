import { describe, expect, it } from 'vitest';
import { api, removeDir, spawnDaemon, tempDataDir } from '../helpers/daemon.js';
import { EventClient } from '../helpers/events.js';

const TOKEN = 'test-token-0123456789abcdef';

describe('authentication and configuration', () => {
  it('requires the bearer token on every API call when configured', async () => {
    const d = await spawnDaemon({ args: ['--api-token', TOKEN] });
    try {
      for (const [method, path] of [['GET', '/v1/vms'], ['POST', '/v1/vms'], ['GET', '/metrics'], ['GET', '/v1/operations/op-x']]) {
        const r = await api(d.url, method!, path!, method === 'POST' ? {} : undefined);
        expect(r.status, path).toBe(401);
        expect(r.body.error.code).toBe('UNAUTHORIZED');
        const wrong = await api(d.url, method!, path!, undefined, { authorization: `Bearer ${TOKEN}x` });
        expect(wrong.status).toBe(401);
      }
      expect((await api(d.url, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${TOKEN}` })).status).toBe(200);
      expect((await api(d.url, 'GET', '/healthz')).status).toBe(200); // probes stay public
      await expect(EventClient.connect(d.url)).rejects.toMatchObject({ status: 401 });
      const ok = await EventClient.connect(d.url, '', { authorization: `Bearer ${TOKEN}` });
      ok.close();
    } finally {
      await d.kill();
      removeDir(d.dataDir);
    }
  });

  it('refuses a non-loopback listen address without a token', async () => {
    const dataDir = tempDataDir();
    const err = await spawnDaemon({ dataDir, args: ['--listen', '0.0.0.0:0'] }).catch((e) => e);
    expect(err.message).toContain('refusing to listen on non-loopback address 0.0.0.0 without an API token');
    expect(err.code).toBe(2);
    removeDir(dataDir);
  });

  it('rejects invalid configuration with a clear message', async () => {
    const dataDir = tempDataDir();
    for (const [args, msg] of [
      [['--listen', 'nonsense'], 'invalid listen address'],
      [['--log-level', 'loud'], 'Allowed choices'],
      [['--api-token', 'short'], 'at least 16 characters'],
    ] as const) {
      const err = await spawnDaemon({ dataDir, args: [...args] }).catch((e) => e);
      expect(err.message).toContain(msg);
    }
    const env = await spawnDaemon({ dataDir, env: { NOVACRON_NODE_ID: 'bad id!' } }).catch((e) => e);
    expect(env.message).toContain('nodeId');
    removeDir(dataDir);
  });
});
