/**
 * Where a worker's entry file is: next to the module that starts it, as .js when running compiled
 * code, as .ts (loaded through tsx) when running from source (tests, benchmarks).
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

export function workerUrl(fromModuleUrl: string, name: string): { url: URL; execArgv: string[] } {
  const ext = extname(fileURLToPath(fromModuleUrl));
  const url = new URL(`./${name}${ext}`, fromModuleUrl);
  return { url, execArgv: ext === '.ts' ? ['--import', 'tsx'] : [] };
}
