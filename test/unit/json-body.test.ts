import { describe, expect, it } from 'vitest';
import { nestingDepth, parseJsonBody } from '../../src/util/json-body.js';
import { NovaError } from '../../src/errors.js';

function codeOf(text: string): string | undefined {
  try {
    parseJsonBody(text);
    return undefined;
  } catch (e) {
    return (e as NovaError).code;
  }
}

describe('request body parsing', () => {
  it('counts nesting outside strings only, escaped quotes included', () => {
    expect(nestingDepth('{"a":[1,{"b":[]}]}')).toBe(4);
    expect(nestingDepth('{"a":"[[[{{{\\"[[["}')).toBe(1);
    expect(nestingDepth('"\\\\"')).toBe(0);
    expect(nestingDepth('[[[[[[', 3)).toBe(4);
  });

  it('accepts the limit and refuses one level more, without recursing on the input', () => {
    expect(parseJsonBody('['.repeat(64) + ']'.repeat(64))).toBeInstanceOf(Array);
    expect(codeOf('['.repeat(65) + ']'.repeat(65))).toBe('VALIDATION_FAILED');
    expect(codeOf('['.repeat(1_000_000))).toBe('VALIDATION_FAILED');
  });

  it('refuses own "__proto__" and "constructor.prototype" keys at any depth, keeps "constructor" as data', () => {
    expect(codeOf('{"labels":{"__proto__":{"x":1}}}')).toBe('VALIDATION_FAILED');
    expect(codeOf('[[{"constructor":{"prototype":{"x":1}}}]]')).toBe('VALIDATION_FAILED');
    expect(parseJsonBody('{"labels":{"constructor":"x","proto":"y"}}')).toEqual({ labels: { constructor: 'x', proto: 'y' } });
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('reports malformed text as BAD_JSON', () => {
    expect(codeOf('{"a":')).toBe('BAD_JSON');
    expect(codeOf('{"a":1}}')).toBe('BAD_JSON');
  });
});
