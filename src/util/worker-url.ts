/**
 * Starts a worker whose entry file sits next to the module that starts it: the .js file when running
 * compiled code; when running from TypeScript source (tests, benchmarks), the .ts file through
 * tsx's loader, registered by a small bootstrap (workers do not inherit the parent's loaders).
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

export function startWorker(fromModuleUrl: string, name: string, options: WorkerOptions = {}): Worker {
  const ext = extname(fileURLToPath(fromModuleUrl));
  const entry = new URL(`./${name}${ext}`, fromModuleUrl);
  if (ext !== '.ts') return new Worker(entry, options);
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(entry.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), options);
}
