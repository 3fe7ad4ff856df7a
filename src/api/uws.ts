/**
 * Loads uWebSockets.js and insists on the native build. The package silently falls
 * back to a pure-JS `ws` implementation when its binary does not load; NovaCron's
 * latency targets assume the native one, so a fallback is a start-up error.
 */
import { createRequire } from 'node:module';
import type * as UWS from '@trufflesuite/uws-js-unofficial';

const require = createRequire(import.meta.url);

export type { UWS };

export interface UwsInfo {
  native: boolean;
  /** The file the native module was loaded from. */
  binary?: string;
}

let loaded: { uws: typeof UWS; info: UwsInfo } | undefined;

export function loadUws(): { uws: typeof UWS; info: UwsInfo } {
  if (loaded) return loaded;
  const fallbackRequested = process.env.UWS_USE_FALLBACK;
  delete process.env.UWS_USE_FALLBACK; // The package reads it at load time; never honour it.
  try {
    const uws = require('@trufflesuite/uws-js-unofficial') as typeof UWS;
    const binary = Object.keys(require.cache).find((k) => /uws_.*\.node$/.test(k));
    const native = binary !== undefined && /\[native code\]/.test(String(uws.App));
    if (!native) {
      throw new Error('uWebSockets.js native binary did not load (the ws fallback is not supported); check the platform and Node ABI');
    }
    loaded = { uws, info: { native, binary } };
    return loaded;
  } finally {
    if (fallbackRequested !== undefined) process.env.UWS_USE_FALLBACK = fallbackRequested;
  }
}
