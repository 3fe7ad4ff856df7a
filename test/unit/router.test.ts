import { describe, expect, it } from 'vitest';
import { Router } from '../../src/api/router.js';

const ok = () => ({ status: 200 });
const o = { priv: 'public' } as const;

describe('Router', () => {
  const r = new Router().add('GET', '/v1/vms', ok, o).add('POST', '/v1/vms', ok, o).add('GET', '/v1/vms/:id', ok, o).add('POST', '/v1/vms/:id/start', ok, o);

  it('matches params and decodes them', () => {
    const m = r.match('GET', '/v1/vms/a%20b');
    expect(m.kind).toBe('found');
    expect(m.kind === 'found' && m.params).toEqual({ id: 'a b' });
  });

  it('distinguishes 405 from 404', () => {
    expect(r.match('DELETE', '/v1/vms')).toEqual({ kind: 'method-not-allowed', allow: ['GET', 'POST'] });
    expect(r.match('GET', '/v1/vmz').kind).toBe('not-found');
    expect(r.match('GET', '/v1/vms/x/start/extra').kind).toBe('not-found');
  });

  it('treats undecodable params as not found, not a crash', () => {
    expect(r.match('GET', '/v1/vms/%E0%A4%A').kind).toBe('not-found');
  });
});
