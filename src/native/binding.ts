/**
 * The only module that imports the generated napi loader in bindings/. Everything else
 * goes through the typed wrappers in src/native/.
 */
import { createRequire } from 'node:module';
import type * as Binding from '../../bindings/index.js';
import { NovaError, isErrorCode } from '../errors.js';

const require = createRequire(import.meta.url);
export const binding: typeof Binding = require('../../bindings/index.js');
export type { Binding };

/**
 * The Rust side formats errors as `CODE: message` (crates/node/src/lib.rs). This turns
 * them into NovaErrors with the same code; anything else is rethrown untouched.
 */
export function nativeError(err: unknown): unknown {
  if (err instanceof Error) {
    const m = /^([A-Z][A-Z0-9_]+): ([\s\S]*)$/.exec(err.message);
    if (m && isErrorCode(m[1])) return new NovaError(m[1], m[2]);
  }
  return err;
}

/** Calls a native function, mapping its errors (sync throw or rejection) to NovaErrors. */
export function callNative<T>(fn: () => T): T {
  try {
    const out = fn();
    if (out instanceof Promise) return out.catch((e) => { throw nativeError(e); }) as T;
    return out;
  } catch (e) {
    throw nativeError(e);
  }
}
