/**
 * The only module that imports the generated napi loader in bindings/. Everything else
 * goes through the typed wrappers in src/native/.
 */
import { createRequire } from 'node:module';
import type * as Binding from '../../bindings/index.js';
import { NovaError, isErrorCode, type ErrorCode } from '../errors.js';

const require = createRequire(import.meta.url);
export const binding: typeof Binding = require('../../bindings/index.js');
export type { Binding };

/**
 * The Rust side throws (and rejects with) JS errors whose `code` is the domain error's
 * stable code (crates/node/src/lib.rs). This turns them into NovaErrors with that code;
 * anything else (napi's own failures) is rethrown untouched.
 */
export function nativeError(err: unknown): unknown {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    if (isErrorCode(code)) return new NovaError(code, err.message);
  }
  return err;
}

/** A domain error the Rust side returns as data (a completion's, a link's failure). */
export function fromBindingError(e: Binding.BindingError, fallback: ErrorCode): NovaError {
  return new NovaError(isErrorCode(e.code) ? e.code : fallback, e.message);
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
