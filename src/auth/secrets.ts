/**
 * API tokens and password hashes. A token is `nc1.<id>.<secret>`: the id finds its
 * record, the secret (32 random bytes) is stored only as its SHA-256 (a token has full
 * entropy, so a fast hash is enough, as GitHub does). Passwords are hashed with scrypt
 * (Node's OpenSSL binding): a salt per password, parameters stored with the hash.
 */
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';

const TOKEN = /^nc1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

export interface NewToken {
  id: string;
  /** Shown once, to whoever created it; never stored. */
  text: string;
  hash: string;
}

export function newToken(): NewToken {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { id, text: `nc1.${id}.${secret}`, hash: sha256(secret) };
}

/** The id and secret of a well-formed token (undefined for anything else). */
export function parseToken(text: string): { id: string; secret: string } | undefined {
  const m = TOKEN.exec(text);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function secretMatchesHash(secret: string, hash: string): boolean {
  const a = Buffer.from(sha256(secret), 'hex');
  const b = Buffer.from(hash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

// scrypt with N=2^15, r=8, p=1: 32 MiB and ~60 ms per hash here (OWASP's minimum is 2^17 with p=1 at r=8 for 2023+;
// we keep the cost moderate on two cores and store N so it can be raised without breaking old hashes).
const N = 1 << 15;
const R = 8;
const P = 1;
const KEYLEN = 32;

function scrypt(password: string, salt: Buffer, n: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password, salt, KEYLEN, { N: n, r, p, maxmem: 256 * n * r }, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

/** `scrypt$N$r$p$salt$hash`, base64url fields. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, N, R, P);
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [alg, n, r, p, salt, hash] = stored.split('$');
  if (alg !== 'scrypt' || !salt || !hash) return false;
  const want = Buffer.from(hash, 'base64url');
  const got = await scrypt(password, Buffer.from(salt, 'base64url'), Number(n), Number(r), Number(p));
  return got.length === want.length && timingSafeEqual(got, want);
}
