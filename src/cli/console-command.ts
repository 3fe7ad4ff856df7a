/**
 * `novacron vm console <vm>`: the guest's serial console, like `virsh console`. On a
 * terminal, keystrokes go to the guest (raw mode) until Ctrl-]. For scripts, the console
 * is printed for `--for` seconds, or (`--until PATTERN`) until its output matches — then
 * `--for` bounds the wait and a console that never matched exits non-zero.
 */
import WebSocket from 'ws';
import type { NovaClient } from './client.js';
import { ConnectionError } from './client.js';

const ESCAPE = 0x1d; // Ctrl-]

export async function runConsole(client: NovaClient, ref: string, opts: { for?: number; until?: RegExp }): Promise<void> {
  const vm = await client.getVm(ref); // a clear 404 before the upgrade
  const url = new URL(`/v1/vms/${encodeURIComponent(vm.id)}/console`, client.opts.url);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url, { ...client.wsTls, headers: client.opts.token ? { authorization: `Bearer ${client.opts.token}` } : {} });
  const interactive = process.stdin.isTTY && opts.for === undefined && opts.until === undefined;
  let seen = '';
  let matched = false;
  await new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (interactive) {
        process.stdin.setRawMode(false);
        process.stdin.pause();
      }
      ws.close();
      resolve();
    };
    ws.on('open', () => {
      if (interactive) {
        process.stderr.write(`connected to ${vm.name}'s console (Ctrl-] to leave)\r\n`);
        process.stdin.setRawMode(true);
        process.stdin.resume();
        process.stdin.on('data', (key: Buffer) => {
          if (key.includes(ESCAPE)) return done();
          ws.send(key, { binary: true });
        });
      }
      if (opts.for !== undefined) timer = setTimeout(done, opts.for * 1000);
    });
    process.stdout.on('error', done); // a reader that went away (| head) ends the session
    ws.on('message', (data: Buffer) => {
      process.stdout.write(data);
      if (!opts.until) return;
      seen = (seen + data.toString('latin1')).slice(-65536);
      if (opts.until.test(seen)) {
        matched = true;
        done();
      }
    });
    ws.on('close', (code, reason) => {
      if (code !== 1000 && code !== 1005) process.stderr.write(`\nconsole closed: ${code} ${reason.toString()}\n`);
      done();
    });
    ws.on('unexpected-response', (_req, res) => reject(new ConnectionError(`console refused: HTTP ${res.statusCode}`)));
    ws.on('error', (err) => reject(new ConnectionError(`console connection failed: ${err.message}`)));
  });
  if (opts.until && !matched) {
    process.stderr.write(`\nthe console never showed /${opts.until.source}/\n`);
    process.exitCode = 1;
  }
}
