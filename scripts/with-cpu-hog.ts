/**
 * Runs a command while every core is saturated: one busy-looping process per core, plus one, at the
 * same priority as the command (a serving machine's cores are busy whenever it has traffic). Exits
 * with the command's status; the hogs are stopped however the command ends.
 *
 *   npx tsx scripts/with-cpu-hog.ts [--hogs N] -- COMMAND [ARGS...]
 */
import { spawn } from 'node:child_process';
import { availableParallelism, loadavg } from 'node:os';

const args = process.argv.slice(2);
let hogs = availableParallelism() + 1;
if (args[0] === '--hogs') {
  hogs = Number(args[1]);
  args.splice(0, 2);
}
if (args[0] === '--') args.shift();
if (args.length === 0 || !Number.isInteger(hogs) || hogs < 0) {
  console.error('usage: npx tsx scripts/with-cpu-hog.ts [--hogs N] -- COMMAND [ARGS...]');
  process.exit(2);
}

const running = Array.from({ length: hogs }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
const stop = (): void => {
  for (const h of running) h.kill('SIGKILL');
};
process.on('exit', stop);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

console.log(`== ${hogs} CPU hogs running (${availableParallelism()} cores); load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
const started = Date.now();
const child = spawn(args[0], args.slice(1), { stdio: 'inherit' });
child.on('exit', (code, signal) => {
  console.log(`== under ${hogs} CPU hogs: ${((Date.now() - started) / 1000).toFixed(0)} s; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  stop();
  process.exit(code ?? (signal ? 1 : 0));
});
