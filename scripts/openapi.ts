/**
 * Writes openapi/openapi.json from the route schemas (`npm run openapi`), or with --check fails
 * when the committed file differs from what the code generates (CI).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdapterRegistry } from '../src/adapters/registry.js';
import { buildApp } from '../src/server/app.js';
import { ServerContext } from '../src/server/context.js';
import { Metrics } from '../src/server/metrics.js';

const ctx = new ServerContext({
  registry: new AdapterRegistry(),
  store: null,
  metrics: new Metrics(),
  baseId: 'base-model',
  settings: {
    adminToken: 'documented', apiKeys: [], maxUploadBytes: 1, logPrompts: false, requestTimeoutMs: 1, strictBase: false, loraRoots: [],
    maxBatchSize: 1, maxBatchPrefillTokens: 1, maxQueuedRequests: 1, adapterCycleMs: 1,
  },
});
const app = await buildApp(ctx);
await app.ready();
const spec = `${JSON.stringify(app.swagger(), null, 2)}\n`;
await app.close();
const path = join(import.meta.dirname, '..', 'openapi', 'openapi.json');
if (process.argv.includes('--check')) {
  let committed: string;
  try {
    committed = readFileSync(path, 'utf8');
  } catch {
    committed = '';
  }
  if (committed !== spec) {
    process.stderr.write('openapi/openapi.json is out of date: run `npm run openapi` and commit the result\n');
    process.exit(1);
  }
  process.stdout.write('openapi/openapi.json is up to date\n');
} else {
  writeFileSync(path, spec);
  process.stdout.write(`wrote ${path}\n`);
}
