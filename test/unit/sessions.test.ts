/**
 * Session signing keys rotate: a key older than ROTATE_MS is followed by a new one at the
 * next login, sessions signed by the old key stay valid until they expire, and a key that
 * can have signed no live session any more is deleted.
 */
import { describe, expect, it } from 'vitest';
import { IdentityStore } from '../../src/auth/identity.js';
import { MAX_SESSION_MS, ROTATE_MS, Sessions } from '../../src/auth/sessions.js';
import type { Entry, WriteOp } from '../../src/store/store.js';

/** An in-memory backend standing in for the replicated store. */
function memoryBackend() {
  const kv = new Map<string, Buffer>();
  return {
    kv,
    write: async (ops: WriteOp[]) => {
      for (const o of ops) if (o.value) kv.set(o.key, Buffer.from(o.value));
      else kv.delete(o.key);
    },
    scan: async ({ start, end }: { start: string; end: string }): Promise<Entry[]> =>
      [...kv].filter(([k]) => k >= start && (end === '' || k < end)).sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, value]) => ({ key, value })),
  };
}

describe('session signing keys', () => {
  it('rotate after ROTATE_MS, keep verifying what older keys signed, and are deleted once nothing they signed can be live', async () => {
    const backend = memoryBackend();
    const identity = new IdentityStore();
    await identity.attach(backend, 3_600_000);
    identity.stop();
    const sessions = new Sessions(identity);
    const first = await sessions.issue('alice');
    expect(identity.jwtKeys()).toHaveLength(1);
    expect(sessions.verifySession(first.token)?.user).toBe('alice');
    expect((await sessions.issue('bob')) && identity.jwtKeys()).toHaveLength(1); // young key reused

    // Age the key past the rotation period: the next login makes a new key.
    const [k1] = identity.jwtKeys();
    const aged = (kid: string, by: number) => {
      const key = `auth/jwtkey/${kid}`;
      const rec = JSON.parse(backend.kv.get(key)!.toString());
      backend.kv.set(key, Buffer.from(JSON.stringify({ ...rec, createdAt: rec.createdAt - by })));
    };
    aged(k1!.kid, ROTATE_MS + 1000);
    await identity.refresh();
    const second = await sessions.issue('alice');
    expect(identity.jwtKeys().map((k) => k.kid).sort()).toEqual([k1!.kid, kidOf(second.token)].sort());
    expect(kidOf(second.token)).not.toBe(k1!.kid);
    expect(sessions.verifySession(first.token)?.user).toBe('alice'); // the old key still verifies its sessions

    // Old enough that no session it signed can still be valid: deleted at the next rotation.
    aged(k1!.kid, MAX_SESSION_MS);
    aged(kidOf(second.token), ROTATE_MS + 1000);
    await identity.refresh();
    const third = await sessions.issue('alice');
    expect(identity.jwtKeys().map((k) => k.kid)).not.toContain(k1!.kid);
    expect(identity.jwtKeys().map((k) => k.kid)).toContain(kidOf(third.token));
    expect(sessions.verifySession(first.token)).toBeUndefined();
  });
});

function kidOf(token: string): string {
  return JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid;
}
