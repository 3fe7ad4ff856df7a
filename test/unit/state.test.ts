import { describe, expect, it } from 'vitest';
import { allowedTransitions, canTransition, VM_STATES } from '../../src/vm/state.js';

describe('VM state machine', () => {
  it('allows the documented lifecycle', () => {
    const path = ['pending', 'stopped', 'starting', 'running', 'paused', 'running', 'stopping', 'stopped', 'deleting'] as const;
    for (let i = 1; i < path.length; i++) expect(canTransition(path[i - 1]!, path[i]!), `${path[i - 1]}→${path[i]}`).toBe(true);
  });

  it('forbids skipping transitional states', () => {
    expect(canTransition('stopped', 'running')).toBe(false);
    expect(canTransition('paused', 'starting')).toBe(false);
    expect(canTransition('running', 'deleting')).toBe(false);
    expect(canTransition('deleting', 'stopped')).toBe(false);
  });

  it('pausing and resuming (records of earlier versions) can only be left, never entered', () => {
    for (const s of VM_STATES) expect(allowedTransitions(s), s).not.toContain('pausing');
    for (const s of VM_STATES) expect(allowedTransitions(s), s).not.toContain('resuming');
    expect(allowedTransitions('pausing')).toEqual(expect.arrayContaining(['paused', 'running', 'error']));
    expect(allowedTransitions('resuming')).toEqual(expect.arrayContaining(['running', 'paused', 'error']));
  });

  it('lets every state except deleting reach error, and error be recovered', () => {
    for (const s of VM_STATES) if (s !== 'error') expect(canTransition(s, 'error'), s).toBe(true);
    expect(allowedTransitions('error')).toEqual(expect.arrayContaining(['starting', 'stopping', 'deleting']));
  });

  it('names only known states', () => {
    for (const s of VM_STATES) for (const t of allowedTransitions(s)) expect(VM_STATES).toContain(t);
  });
});
