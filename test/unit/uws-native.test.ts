import { describe, expect, it } from 'vitest';
import { loadUws } from '../../src/api/uws.js';

describe('uWebSockets.js', () => {
  it('is the native binary, never the ws fallback', () => {
    process.env.UWS_USE_FALLBACK = '1'; // Even when asked for the fallback.
    const { uws, info } = loadUws();
    expect(info.native).toBe(true);
    expect(info.binary).toMatch(/uws_linux_x64_\d+\.node$/);
    expect(String(uws.App)).toContain('[native code]');
    delete process.env.UWS_USE_FALLBACK;
  });
});
