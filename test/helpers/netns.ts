/**
 * A network namespace joined to this one by a veth pair: a second "host" on a real network
 * that a test can break. `blackhole()` downs the namespace's end of the pair, so every
 * packet either way is dropped by the kernel — nothing is closed or reset, and open TCP
 * connections just stop hearing from each other, as across a failed switch; `heal()`
 * brings it back.
 */
import { execFileSync } from 'node:child_process';

let made = 0;

export class NetNs {
  /** This side's address on the pair, and the namespace's. */
  readonly hostIp: string;
  readonly ip: string;

  private constructor(
    readonly name: string,
    private readonly hostDev: string,
    private readonly nsDev: string,
    subnet: number,
  ) {
    this.hostIp = `10.231.${subnet >> 6}.${(subnet & 63) * 4 + 1}`;
    this.ip = `10.231.${subnet >> 6}.${(subnet & 63) * 4 + 2}`;
  }

  static create(): NetNs {
    const n = made++;
    // A /30 per namespace, from the process id and a counter: parallel test files never share one.
    const subnet = ((process.pid % 1000) * 16 + n) % (250 * 64);
    const tag = `${process.pid % 100_000}x${n}`;
    const ns = new NetNs(`nctest-${tag}`, `nch${tag}`, `ncn${tag}`, subnet);
    try {
      ip('netns', 'add', ns.name);
      ip('link', 'add', ns.hostDev, 'type', 'veth', 'peer', 'name', ns.nsDev);
      ip('link', 'set', ns.nsDev, 'netns', ns.name);
      ip('addr', 'add', `${ns.hostIp}/30`, 'dev', ns.hostDev);
      ip('link', 'set', ns.hostDev, 'up');
      ns.#inside('link', 'set', 'lo', 'up');
      ns.#inside('addr', 'add', `${ns.ip}/30`, 'dev', ns.nsDev);
      ns.#inside('link', 'set', ns.nsDev, 'up');
    } catch (err) {
      ns.destroy();
      throw err;
    }
    return ns;
  }

  /** Drops every packet between the namespace and this side, closing nothing. */
  blackhole(): void {
    this.#inside('link', 'set', this.nsDev, 'down');
  }

  heal(): void {
    this.#inside('link', 'set', this.nsDev, 'up');
  }

  /** Removes the namespace and the pair (processes still inside keep it until they exit). */
  destroy(): void {
    try {
      ip('link', 'del', this.hostDev);
    } catch {
      // never made, or gone with the namespace
    }
    try {
      ip('netns', 'del', this.name);
    } catch {
      // never made
    }
  }

  #inside(...args: string[]): void {
    ip('netns', 'exec', this.name, 'ip', ...args);
  }
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}
