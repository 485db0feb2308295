/**
 * Crash safety of the adapter store: a real process is killed (SIGKILL) at every step of an upload,
 * a replacement and a delete; after a restart each name resolves to exactly its old or its new
 * complete version, nothing half-written is visible, nothing outside the store was touched, and the
 * store keeps working (the dead process's lock and leftovers do not block it).
 */
import { execFile } from 'node:child_process';
import { cpSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { adapterDigest } from '../../src/adapters/digest.js';
import { StagingArea } from '../../src/adapters/staging.js';
import { AdapterStore } from '../../src/adapters/store.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const run = promisify(execFile);
const DRIVER = join(import.meta.dirname, '../helpers/store-driver.ts');
const tm = makeTinyModel({ seed: 9 });
const oldV = makeTinyAdapter(tm, { seed: 10, r: 2 });
const newV = makeTinyAdapter(tm, { seed: 11, r: 4 });
const OLD = adapterDigest(oldV.dir);
const NEW = adapterDigest(newV.dir);

const PUBLISH_STEPS = ['staging-partial', 'staged-synced', 'locked', 'version-published', 'manifest-written', 'manifest-renamed', 'done'];
/** Steps after which the new name is in place. */
const PUBLISHED = new Set(['manifest-renamed', 'done']);
const DELETE_STEPS = ['locked', 'manifest-removed', 'done'];

/** Every file outside the store, with its size and mtime (to prove nothing there changed). */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${p}:${statSync(p).size}:${statSync(p).mtimeMs}`);
    }
  };
  walk(dir);
  return out.sort();
}

async function crashAt(root: string, op: string, from: string, step: string): Promise<'killed' | 'completed'> {
  try {
    await run(process.execPath, ['--import', 'tsx', DRIVER, root, op, 'acme/bot', from, step]);
    return 'completed';
  } catch (err) {
    expect((err as { signal?: string }).signal).toBe('SIGKILL');
    return 'killed';
  }
}

function check(root: string, allowed: (string | null)[]): string | null {
  const store = new AdapterStore(root);
  const scan = store.scan();
  const e = scan.entries.find((x) => x.name === 'acme/bot');
  const digest = e?.digest ?? null;
  expect(allowed).toContain(digest);
  if (e) {
    // Complete: the version's files are all there and hash to its name.
    expect(adapterDigest(e.dir)).toBe(e.digest);
    expect(readdirSync(e.dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  }
  expect(scan.entries.map((x) => x.name).filter((n) => n !== 'acme/bot')).toEqual([]);
  return digest;
}

describe('adapter store crash safety (SIGKILL at every step)', () => {
  const outside = tempDir('loraplex-outside-');
  cpSync(oldV.dir, join(outside, 'old'), { recursive: true });
  cpSync(newV.dir, join(outside, 'new'), { recursive: true });
  const before = snapshot(outside);

  it.each(PUBLISH_STEPS)('upload killed at %s: the name is absent or the new version', async (step) => {
    const root = tempDir('loraplex-crash-');
    const how = await crashAt(root, 'create', join(outside, 'new'), step);
    expect(how).toBe('killed');
    const got = check(root, PUBLISHED.has(step) ? [NEW] : [null]);
    // The store keeps working after the crash (a lock left behind by the dead process is broken at once).
    const store = new AdapterStore(root);
    const staged = new StagingArea(root).stage();
    cpSync(join(outside, 'old'), staged, { recursive: true });
    store.publish(staged, 'other', OLD, 'create');
    store.collect(new Set(), Date.now() + 10 * store.graceMs);
    expect(Object.fromEntries(store.scan().entries.map((e) => [e.name, e.digest]))).toMatchObject({ other: OLD, ...(got ? { 'acme/bot': got } : {}) });
    expect(snapshot(outside)).toEqual(before);
  });

  it.each(PUBLISH_STEPS)('replace killed at %s: the name is the old or the new version, never neither', async (step) => {
    const root = tempDir('loraplex-crash-');
    expect(await crashAt(root, 'create', join(outside, 'old'), 'never')).toBe('completed');
    await crashAt(root, 'replace', join(outside, 'new'), step);
    const got = check(root, PUBLISHED.has(step) ? [NEW] : [OLD]);
    // Whatever lost its name is collected after the grace period; the version in use never is.
    const store = new AdapterStore(root);
    store.collect(new Set(), Date.now() + 10 * store.graceMs);
    store.collect(new Set(), Date.now() + 20 * store.graceMs);
    expect(readdirSync(join(root, '.loraplex', 'versions'))).toEqual([got]);
    expect(snapshot(outside)).toEqual(before);
  });

  it.each(DELETE_STEPS)('delete killed at %s: the name is gone, or still the complete old version', async (step) => {
    const root = tempDir('loraplex-crash-');
    expect(await crashAt(root, 'create', join(outside, 'old'), 'never')).toBe('completed');
    expect(await crashAt(root, 'delete', join(outside, 'old'), step)).toBe('killed');
    check(root, step === 'locked' ? [OLD] : [null]);
    // The lock the dead process held does not block the next change.
    if (step === 'locked') new AdapterStore(root).unpublish('acme/bot', OLD);
    check(root, [null]);
    expect(snapshot(outside)).toEqual(before);
  });
});
