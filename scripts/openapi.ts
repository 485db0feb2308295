/**
 * Writes openapi/openapi.json from the route schemas (`npm run openapi`), or with --check fails
 * when the committed file differs from what the code generates (CI).
 */
import { join } from 'node:path';
import { writeOrCheck } from './generated.js';
import { AdapterRegistry } from '../src/adapters/registry.js';
import { buildApp } from '../src/server/app.js';
import { ServerContext } from '../src/server/context.js';
import { Metrics } from '../src/server/metrics.js';
import { serverSettings } from '../src/server/serve.js';
import { resolveAllKnobs } from '../src/config.js';

const ctx = new ServerContext({
  registry: new AdapterRegistry(),
  staging: null,
  metrics: new Metrics(),
  baseId: 'base-model',
  // The default configuration, with the admin routes on.
  settings: serverSettings(resolveAllKnobs({ adminToken: 'documented' }, {})),
});
const app = await buildApp(ctx);
await app.ready();
const spec = `${JSON.stringify(app.swagger(), null, 2)}\n`;
await app.close();
const path = join(import.meta.dirname, '..', 'openapi', 'openapi.json');
writeOrCheck(path, spec, 'npm run openapi');
