import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, removeDir, sampleVm, spawnDaemon, waitOp, type DaemonHandle } from '../helpers/daemon.js';
import { EventClient } from '../helpers/events.js';

let d: DaemonHandle;
beforeAll(async () => {
  d = await spawnDaemon();
});
afterAll(async () => {
  await d.kill();
  removeDir(d.dataDir);
});

describe('GET /v1/events (WebSocket, msgpack)', () => {
  it('streams live state changes with strictly increasing sequence numbers', async () => {
    const c = await EventClient.connect(d.url);
    await c.waitFor((x) => x.frames.some((f) => f.type === 'subscribed'));
    const { body: vm } = await api(d.url, 'POST', '/v1/vms', sampleVm('ev-1'));
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${vm.id}/start`)).body.id);
    await c.waitFor((x) => x.events.some((e) => e.type === 'operation.succeeded' && e.vmId === vm.id));
    const mine = c.events.filter((e) => e.vmId === vm.id);
    expect(mine.map((e) => e.type)).toEqual(['vm.created', 'vm.state', 'vm.state', 'operation.started', 'vm.state', 'operation.succeeded']);
    expect(mine.filter((e) => e.type === 'vm.state').map((e) => `${e.data.from}->${e.data.to}`)).toEqual(['pending->stopped', 'stopped->starting', 'starting->running']);
    const seqs = c.events.map((e) => e.seq);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    expect(new Set(seqs).size).toBe(seqs.length);
    c.close();
  });

  it('resumes from a sequence number after reconnect with no gap and no duplicate', async () => {
    const first = await EventClient.connect(d.url, '?types=vm.*');
    await first.waitFor((x) => x.frames.some((f) => f.type === 'subscribed'));
    await api(d.url, 'POST', '/v1/vms', sampleVm('resume-a'));
    await first.waitFor((x) => x.events.some((e) => e.data.name === 'resume-a'));
    const lastSeen = first.events.at(-1).seq;
    first.close();

    // While disconnected, more happens.
    for (const n of ['resume-b', 'resume-c']) await api(d.url, 'POST', '/v1/vms', sampleVm(n));
    const second = await EventClient.connect(d.url, `?from=${lastSeen}&types=vm.*`);
    await second.waitFor((x) => x.frames.some((f) => f.type === 'replayed'));
    // A live event right after the replay must follow without duplicates.
    await api(d.url, 'POST', '/v1/vms', sampleVm('resume-d'));
    await second.waitFor((x) => x.events.some((e) => e.data.name === 'resume-d'));
    const names = second.events.filter((e) => e.type === 'vm.created').map((e) => e.data.name);
    expect(names).toEqual(['resume-b', 'resume-c', 'resume-d']);
    expect(second.events.every((e) => e.seq > lastSeen && e.type.startsWith('vm.'))).toBe(true);
    const seqs = second.events.map((e) => e.seq);
    expect(new Set(seqs).size).toBe(seqs.length);
    second.close();
  });

  it('filters by VM and resubscribes on a subscribe frame', async () => {
    const { body: a } = await api(d.url, 'POST', '/v1/vms', sampleVm('filt-a'));
    const { body: b } = await api(d.url, 'POST', '/v1/vms', sampleVm('filt-b'));
    const c = await EventClient.connect(d.url, `?vmId=${a.id}&from=0`);
    await c.waitFor((x) => x.frames.some((f) => f.type === 'replayed'));
    expect(c.events.length).toBeGreaterThan(0);
    expect(c.events.every((e) => e.vmId === a.id)).toBe(true);
    c.send({ type: 'subscribe', filter: { vmId: b.id, types: ['vm.state'] } });
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${b.id}/start`)).body.id);
    await waitOp(d.url, (await api(d.url, 'POST', `/v1/vms/${a.id}/start`)).body.id);
    await c.waitFor((x) => x.events.some((e) => e.vmId === b.id && e.data.to === 'running'));
    const after = c.events.filter((e) => e.vmId === b.id);
    expect(after.every((e) => e.type === 'vm.state')).toBe(true);
    expect(c.events.filter((e) => e.vmId === a.id && e.data?.to === 'running')).toEqual([]);
    c.close();
  });

  it('answers malformed frames with an error frame and keeps the connection', async () => {
    const c = await EventClient.connect(d.url);
    c.sendRaw(Buffer.from([0xc1, 0xff, 0x00]));
    c.send({ type: 'subscribe', from: -5 });
    c.send({ type: 'ping' });
    await c.waitFor((x) => x.frames.some((f) => f.type === 'pong'));
    const errors = c.frames.filter((f) => f.type === 'error');
    expect(errors.length).toBe(2);
    expect(errors.map((e) => e.code)).toEqual(['BAD_JSON', 'VALIDATION_FAILED']);
    expect(c.closed).toBeUndefined();
    c.close();
  });

  it('rejects a bad query at upgrade with 400', async () => {
    await expect(EventClient.connect(d.url, '?from=abc')).rejects.toMatchObject({ status: 400 });
  });
});
