/**
 * Serial console fan-out: one connection to a VM's console socket, shared by every
 * viewer; guest output goes to all of them, keystrokes from any of them go to the guest.
 * (QEMU's socket chardev serves one client at a time, hence the hub.)
 */
import { createConnection, type Socket } from 'node:net';
import { NovaError } from '../errors.js';
import type { HypervisorDriver } from './driver.js';

export interface ConsoleViewer {
  write(data: Buffer): void;
  close(): void;
}

interface Session {
  socket: Socket;
  viewers: Set<(data: Buffer) => void>;
  onEnd: Set<() => void>;
}

export class ConsoleHub {
  #sessions = new Map<string, Session>();

  constructor(private readonly driver: HypervisorDriver) {}

  /** Attaches a viewer; throws VM_INVALID_STATE when the VM has no console now. */
  attach(vmId: string, onData: (data: Buffer) => void, onEnd: () => void): ConsoleViewer {
    let session = this.#sessions.get(vmId);
    if (!session) {
      const path = this.driver.consoleSocket?.(vmId);
      if (!path) throw new NovaError('VM_INVALID_STATE', 'the VM has no console right now (is it running under the qemu driver?)');
      const socket = createConnection(path);
      const s: Session = { socket, viewers: new Set(), onEnd: new Set() };
      socket.on('data', (d: Buffer) => {
        for (const v of s.viewers) v(d);
      });
      const end = () => {
        if (this.#sessions.get(vmId) === s) this.#sessions.delete(vmId);
        for (const e of s.onEnd) e();
      };
      socket.on('error', end);
      socket.on('close', end);
      this.#sessions.set(vmId, s);
      session = s;
    }
    const s = session;
    s.viewers.add(onData);
    s.onEnd.add(onEnd);
    return {
      write: (data) => {
        if (!s.socket.destroyed) s.socket.write(data);
      },
      close: () => {
        s.viewers.delete(onData);
        s.onEnd.delete(onEnd);
        if (s.viewers.size === 0) {
          s.socket.destroy();
          if (this.#sessions.get(vmId) === s) this.#sessions.delete(vmId);
        }
      },
    };
  }
}
