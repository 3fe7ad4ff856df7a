/** `qemu-img`, run asynchronously (the daemon's event loop never waits on it). */
import { execFile, spawn } from 'node:child_process';
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

  /**
   * `qemu-img convert` with progress (`-p`: percent, parsed from its output), an optional
   * rate limit (`-r`, bytes/s) and cancellation (the process is killed; the caller drops
   * the target).
   */
  convert(src: { path: string; format: string }, dst: { path: string; format: string }, o: { bytesPerSec?: number; signal: AbortSignal; onPercent(pct: number): void }): Promise<void> {
    const args = ['convert', '-p', '-f', src.format, '-O', dst.format, ...(o.bytesPerSec ? ['-r', String(Math.max(1, Math.floor(o.bytesPerSec)))] : []), src.path, dst.path];
    return new Promise((resolve, reject) => {
      const child = spawn(this.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        const all = [...d.toString('latin1').matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
        const last = all.at(-1);
        if (last) o.onPercent(Number(last[1]));
      });
      child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      const onAbort = () => child.kill('SIGKILL');
      o.signal.addEventListener('abort', onAbort, { once: true });
      child.on('error', (err) => reject(new NovaError('DRIVER_UNAVAILABLE', `qemu-img convert: ${err.message}`)));
      child.on('close', (code) => {
        o.signal.removeEventListener('abort', onAbort);
        if (code === 0) return resolve();
        if (o.signal.aborted) return reject(new NovaError('OPERATION_CANCELLED', 'the copy was cancelled'));
        reject(new NovaError('DRIVER_FAILED', `qemu-img convert failed: ${stderr.trim().split('\n').slice(-3).join(' | ') || `exit ${code}`}`));
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
