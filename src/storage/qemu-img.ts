/** `qemu-img`, run asynchronously (the daemon's event loop never waits on it). */
import { execFile } from 'node:child_process';
import { NovaError } from '../errors.js';

export class QemuImg {
  constructor(readonly binary = 'qemu-img') {}

  run(args: string[], timeoutMs = 600_000): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(this.binary, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const detail = (stderr || '').trim().split('\n').slice(-3).join(' | ') || err.message;
        const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'DRIVER_UNAVAILABLE' : 'DRIVER_FAILED';
        reject(new NovaError(code, `qemu-img ${args[0]} failed: ${detail}`));
      });
    });
  }

  async info(path: string, format?: string): Promise<Record<string, unknown>> {
    const args = ['info', '--output=json', '-U'];
    if (format) args.push('-f', format);
    args.push(path);
    return JSON.parse(await this.run(args, 60_000)) as Record<string, unknown>;
  }
}
