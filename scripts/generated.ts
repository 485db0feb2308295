/** Writes a generated file, or with --check fails when the committed copy differs (CI). */
import { readFileSync, writeFileSync } from 'node:fs';

export function writeOrCheck(path: string, text: string, regenerate: string): void {
  if (!process.argv.includes('--check')) {
    writeFileSync(path, text);
    process.stdout.write(`wrote ${path}\n`);
    return;
  }
  let committed: string;
  try {
    committed = readFileSync(path, 'utf8');
  } catch {
    committed = '';
  }
  if (committed !== text) {
    process.stderr.write(`${path} is out of date: run \`${regenerate}\` and commit the result\n`);
    process.exit(1);
  }
  process.stdout.write(`${path} is up to date\n`);
}
