/**
 * The adapter store on real directories: content identity, immutable versions published by name
 * pointers, namespace rules, deletes that act on the version asked about, operator directories and
 * links (followed inside the allowed roots, refused outside, every skip with its reason), staging
 * that no other process wipes, and collection of old versions after the grace period.
 */
import { cpSync, existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { adapterDigest } from '../../src/adapters/digest.js';
import { StagingArea } from '../../src/adapters/staging.js';
import { AdapterStore } from '../../src/adapters/store.js';
import { makeTinyAdapter, makeTinyModel, tempDir } from '../helpers/tiny-model.js';

const tm = makeTinyModel({ seed: 5 });
const a1 = makeTinyAdapter(tm, { seed: 1, r: 2 });
const a2 = makeTinyAdapter(tm, { seed: 2, r: 4 });

function fresh(opts: ConstructorParameters<typeof AdapterStore>[1] = {}): { root: string; store: AdapterStore; staging: StagingArea } {
  const root = tempDir('loraplex-store-');
  return { root, store: new AdapterStore(root, opts), staging: new StagingArea(root) };
}

/** Stages a copy of an adapter's files and publishes it. */
function upload(s: { store: AdapterStore; staging: StagingArea }, name: string, from: string, mode: 'create' | 'replace' = 'create') {
  const staged = s.staging.stage();
  cpSync(from, staged, { recursive: true });
  return s.store.publish(staged, name, adapterDigest(staged), mode);
}

const names = (store: AdapterStore): Record<string, string> => Object.fromEntries(store.scan().entries.map((e) => [e.name, e.digest]));

describe('AdapterStore', () => {
  it('identifies versions by content: the same files under two names are one version; a replacement is a new one', () => {
    const s = fresh();
    const x = upload(s, 'x', a1.dir);
    const y = upload(s, 'org/y', a1.dir);
    expect(x.digest).toBe(adapterDigest(a1.dir));
    expect(y.digest).toBe(x.digest);
    expect(y.dir).toBe(x.dir);
    const x2 = upload(s, 'x', a2.dir, 'replace');
    expect(x2.digest).not.toBe(x.digest);
    expect(names(s.store)).toEqual({ 'org/y': x.digest, x: x2.digest });
    // Versions never change once published.
    expect(adapterDigest(x.dir)).toBe(x.digest);
    expect(() => upload(s, 'x', a1.dir)).toThrow(expect.objectContaining({ code: 'conflict' }));
    expect(() => upload(s, 'nope', a1.dir, 'replace')).toThrow(expect.objectContaining({ code: 'model_not_found' }));
  });

  it('refuses a name that is the org of another, or sits inside another adapter, naming the one in the way', () => {
    const s = fresh();
    upload(s, 'acme/legal-summarizer', a1.dir);
    expect(() => upload(s, 'acme', a2.dir)).toThrow(/the name acme is the org of the adapter acme\/legal-summarizer/);
    upload(s, 'support-bot', a1.dir);
    expect(() => upload(s, 'support-bot/v2', a2.dir)).toThrow(/would sit inside the adapter support-bot/);
    // The same rules hold against adapters laid out on disk.
    mkdirSync(join(s.root, 'disk'), { recursive: true });
    cpSync(a1.dir, join(s.root, 'disk'), { recursive: true });
    expect(() => upload(s, 'disk/v2', a2.dir)).toThrow(/would sit inside the adapter disk/);
    expect(Object.keys(names(s.store)).sort()).toEqual(['acme/legal-summarizer', 'disk', 'support-bot']);
  });

  it('deletes the version it was asked about; a name re-created meanwhile is untouched', () => {
    const s = fresh();
    const v1 = upload(s, 'x', a1.dir);
    s.store.unpublish('x', v1.digest);
    expect(names(s.store)).toEqual({});
    const v2 = upload(s, 'x', a2.dir);
    // A delete of the old version (a request that resolved "x" before it was re-created) changes nothing.
    expect(() => s.store.unpublish('x', v1.digest)).toThrow(/was replaced meanwhile/);
    expect(names(s.store)).toEqual({ x: v2.digest });
  });

  it('keeps versions without a name for the grace period, and while in use', () => {
    const s = fresh({ graceMs: 60_000 });
    const v1 = upload(s, 'x', a1.dir);
    upload(s, 'x', a2.dir, 'replace');
    const now = Date.now();
    expect(s.store.collect(new Set(), now).removed).toEqual([]);
    expect(existsSync(v1.dir)).toBe(true);
    expect(s.store.collect(new Set([v1.digest]), now + 120_000).removed).toEqual([]);
    expect(s.store.collect(new Set(), now + 120_000).removed).toEqual([v1.digest]);
    expect(existsSync(v1.dir)).toBe(false);
    expect(Object.keys(names(s.store))).toEqual(['x']);
  });

  it('follows links to adapter directories inside the allowed roots and says why it skips everything else', () => {
    const allowed = tempDir('loraplex-allowed-');
    const outside = tempDir('loraplex-outside-');
    cpSync(a1.dir, join(allowed, 'one'), { recursive: true });
    cpSync(a2.dir, join(outside, 'two'), { recursive: true });
    const s = fresh({ allowedRoots: [allowed] });
    symlinkSync(join(allowed, 'one'), join(s.root, 'linked'));
    symlinkSync(join(outside, 'two'), join(s.root, 'escaped'));
    symlinkSync(join(s.root, 'nowhere'), join(s.root, 'broken'));
    mkdirSync(join(s.root, 'bad name!'));
    cpSync(a1.dir, join(s.root, 'bad name!'), { recursive: true });
    mkdirSync(join(s.root, 'empty'));
    mkdirSync(join(s.root, 'org', 'inner'), { recursive: true });
    cpSync(a2.dir, join(s.root, 'org', 'inner'), { recursive: true });
    mkdirSync(join(s.root, 'plain'));
    cpSync(a1.dir, join(s.root, 'plain'), { recursive: true });
    mkdirSync(join(s.root, 'plain', 'nested'));
    writeFileSync(join(s.root, 'README.txt'), 'notes');
    const scan = s.store.scan();
    expect(scan.entries.map((e) => [e.name, e.link])).toEqual([
      ['linked', true],
      ['org/inner', false],
      ['plain', false],
    ]);
    const why = Object.fromEntries(scan.skipped.map((x) => [x.path.slice(s.root.length + 1), x.why]));
    expect(why).toMatchObject({
      escaped: expect.stringMatching(/outside the store and the allowed roots/),
      broken: 'is a broken link',
      'bad name!': expect.stringMatching(/is not a valid adapter name/),
      empty: expect.stringMatching(/has no adapter_config.json and no adapters inside/),
      'plain/nested': 'sits inside the adapter plain',
      'README.txt': expect.stringMatching(/is a file/),
    });
    // A link is managed on disk: the API neither replaces nor deletes it.
    const linked = scan.entries.find((e) => e.name === 'linked')!;
    expect(() => s.store.unpublish('linked', linked.digest)).toThrow(/a link managed on disk/);
    // A plain directory deleted through the API leaves the namespace at once.
    s.store.unpublish('plain', scan.entries.find((e) => e.name === 'plain')!.digest);
    expect(existsSync(join(s.root, 'plain'))).toBe(false);
    expect(existsSync(join(allowed, 'one', 'adapter_config.json'))).toBe(true);
  });

  it("never wipes another process's staging; removes its own leftovers of an earlier start", () => {
    const s = fresh();
    const dir = join(s.root, '.loraplex', 'staging');
    mkdirSync(join(dir, 'other-host-1234-aaaaaaaa-0001'), { recursive: true });
    mkdirSync(join(dir, `${hostname()}-${process.pid}-bbbbbbbb-0002`), { recursive: true });
    const mine = s.staging.stage();
    new StagingArea(s.root);
    const left = readdirSync(dir);
    expect(left).toContain('other-host-1234-aaaaaaaa-0001');
    expect(left).toContain(mine.split('/').pop());
    expect(left.some((n) => n.includes('-bbbbbbbb-'))).toBe(false);
  });
});
