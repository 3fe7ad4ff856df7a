/**
 * Parsing of untrusted JSON request bodies: a nesting limit checked on the text before
 * anything is built from it, then `secure-json-parse` (fastify's parser), which refuses
 * prototype-poisoning keys. Every failure is a `NovaError` with a 4xx code; nothing here
 * recurses on the input, so no body can exhaust the stack.
 */
import sjson from 'secure-json-parse';
import { NovaError } from '../errors.js';

/** Deepest nesting of objects and arrays a request body may have. No API schema needs more than a handful. */
export const MAX_JSON_DEPTH = 64;

/** Parses a request body, refusing bad JSON, excessive nesting and `__proto__`/`constructor.prototype` keys. */
export function parseJsonBody(text: string, maxDepth = MAX_JSON_DEPTH): unknown {
  const depth = nestingDepth(text, maxDepth);
  if (depth > maxDepth) throw new NovaError('VALIDATION_FAILED', `request body nests deeper than ${maxDepth} levels`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new NovaError('BAD_JSON', `request body is not valid JSON: ${(e as Error).message}`);
  }
  try {
    // Own "__proto__" keys survive JSON.parse and are silently dropped by schema libraries;
    // refuse them outright rather than store something other than was sent.
    if (value !== null && typeof value === 'object') sjson.scan(value, { protoAction: 'error', constructorAction: 'error' });
  } catch {
    throw new NovaError('VALIDATION_FAILED', 'the keys "__proto__" and "constructor.prototype" are not allowed');
  }
  return value;
}

/**
 * The deepest nesting of `[`/`{` outside strings, scanning no further once `stopAbove`
 * is passed. Malformed text gets some number; `JSON.parse` reports what is wrong with it.
 */
export function nestingDepth(text: string, stopAbove = Infinity): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > max && (max = depth) > stopAbove) return max;
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) {
      depth--;
    }
  }
  return max;
}
