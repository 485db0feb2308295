/**
 * The adapter store: a directory several replicas may share. Two kinds of adapters live in it:
 *
 *   <root>/<name>/, <root>/<org>/<name>/     adapters laid out by an operator (directories, or links
 *                                             to directories under the allowed roots)
 *   <root>/.loraplex/versions/<digest>/     uploaded versions: immutable, complete (fsynced) before
 *                                             any name points to them
 *   <root>/.loraplex/names/<name>.json      a name → version pointer, replaced by an atomic rename
 *   <root>/.loraplex/staging/<process>-…/   uploads in progress, per process (see staging.ts)
 *   <root>/.loraplex/trash/                 markers of versions that lost their last name, and
 *                                             operator directories deleted through the API
 *   <root>/.loraplex/lock                   the namespace lock (see store-lock.ts)
 *
 * A version's identity is the digest of its files. Publishing writes the version directory first
 * and the name last, so after a crash at any point a name resolves to its old or its new complete
 * version, never neither and never a half-written one. Versions without a name are removed only
 * after a grace period (requests that started on them, on any replica, have finished by then).
 * Namespace rules: a name may not equal the org of another name, nor sit inside another adapter.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, type Dirent } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, relative } from 'node:path';
import { ConflictError, ModelNotFoundError } from '../errors.js';
import { fsyncPath, fsyncTree, writeFileDurable } from '../util/durable.js';
import { adapterDigest } from './digest.js';
import { isValidAdapterName } from './names.js';
import { ADAPTER_CONFIG } from './peft.js';
import { withStoreLock } from './store-lock.js';

const INTERNAL = '.loraplex';

export interface StoreEntry {
  name: string;
  /** sha256 of the adapter's files (hex). */
  digest: string;
  /** The version's directory (uploaded versions) or the operator's directory, links resolved. */
  dir: string;
  /** true: uploaded through the API (versions + a name pointer); false: a directory on disk. */
  managed: boolean;
  /** Operator directories: whether the entry is a link (then it is never deleted by the API). */
  link: boolean;
  createdAt: number;
}

export interface StoreScan {
  entries: StoreEntry[];
  /** Directories and pointers that are not adapters, each with the reason. */
  skipped: { path: string; why: string }[];
}

export interface StoreOptions {
  /** Directories links in the store may point into (besides the store itself). */
  allowedRoots?: readonly string[];
  /** How long a version without a name is kept (requests that started on it finish first). */
  graceMs?: number;
  /** Called at each step of a change (crash tests kill the process there). */
  onStep?: (step: string) => void;
}

interface Manifest {
  name: string;
  digest: string;
  created: number;
}

/** Temporary files of this process carry its host and pid. */
const SELF = `${hostname().replace(/[^A-Za-z0-9.-]/g, '_')}-${process.pid}`;

export class AdapterStore {
  readonly root: string;
  private readonly internal: string;
  private readonly versions: string;
  private readonly names: string;
  private readonly staging: string;
  private readonly trash: string;
  private readonly lock: string;
  private readonly allowedRoots: string[];
  readonly graceMs: number;
  private readonly step: (s: string) => void;

  constructor(root: string, opts: StoreOptions = {}) {
    this.root = root;
    this.internal = join(root, INTERNAL);
    this.versions = join(this.internal, 'versions');
    this.names = join(this.internal, 'names');
    this.staging = join(this.internal, 'staging');
    this.trash = join(this.internal, 'trash');
    this.lock = join(this.internal, 'lock');
    for (const d of [this.versions, this.names, this.staging, join(this.trash, 'dirs')]) mkdirSync(d, { recursive: true });
    this.allowedRoots = [root, ...(opts.allowedRoots ?? [])].map((r) => realpathSync(r));
    this.graceMs = opts.graceMs ?? 15 * 60_000;
    this.step = opts.onStep ?? (() => {});
  }

  // ---- reading

  /** Every adapter in the store, with what was skipped and why. Digests of operator directories are memoised. */
  scan(): StoreScan {
    const skipped: StoreScan['skipped'] = [];
    const managed = this.readManifests(skipped);
    const byName = new Map<string, StoreEntry>();
    for (const m of managed) {
      const dir = join(this.versions, m.digest);
      if (!existsSync(join(dir, ADAPTER_CONFIG))) {
        skipped.push({ path: this.manifestPath(m.name), why: `its version ${m.digest} is missing` });
        continue;
      }
      byName.set(m.name, { name: m.name, digest: m.digest, dir, managed: true, link: false, createdAt: m.created });
    }
    for (const d of this.operatorDirs(skipped)) {
      const blocker = this.blockerOf(d.name, [...byName.keys()]);
      if (byName.has(d.name) || blocker) {
        skipped.push({ path: d.path, why: `the name ${d.name} is taken by the uploaded adapter ${blocker ?? d.name}` });
        continue;
      }
      try {
        byName.set(d.name, { name: d.name, digest: adapterDigest(d.dir), dir: d.dir, managed: false, link: d.link, createdAt: statSync(d.dir).mtimeMs });
      } catch (err) {
        skipped.push({ path: d.path, why: `cannot be read (${(err as Error).message})` });
      }
    }
    return { entries: [...byName.values()].sort((a, b) => a.name.localeCompare(b.name)), skipped };
  }

  private manifestPath(name: string): string {
    return join(this.names, ...name.split('/')) + '.json';
  }

  private readManifests(skipped: StoreScan['skipped']): Manifest[] {
    const out: Manifest[] = [];
    const read = (path: string, expected: string): void => {
      try {
        const m = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
        if (m.name !== expected || !/^[0-9a-f]{64}$/.test(m.digest) || typeof m.created !== 'number') throw new Error('fields do not match');
        out.push(m);
      } catch (err) {
        skipped.push({ path, why: `not a valid name pointer (${(err as Error).message})` });
      }
    };
    for (const e of safeReaddir(this.names)) {
      if (e.isFile() && e.name.endsWith('.json')) read(join(this.names, e.name), e.name.slice(0, -5));
      else if (e.isDirectory()) {
        for (const f of safeReaddir(join(this.names, e.name))) {
          if (f.isFile() && f.name.endsWith('.json')) read(join(this.names, e.name, f.name), `${e.name}/${f.name.slice(0, -5)}`);
        }
      }
    }
    return out;
  }

  /** Operator-laid-out adapter directories: `name/` or `org/name/`, links followed within the allowed roots. */
  private operatorDirs(skipped: StoreScan['skipped']): { name: string; path: string; dir: string; link: boolean }[] {
    const out: { name: string; path: string; dir: string; link: boolean }[] = [];
    const resolve = (path: string): { dir: string; link: boolean } | null => {
      let st;
      try {
        st = lstatSync(path);
      } catch (err) {
        skipped.push({ path, why: `cannot be read (${(err as Error).message})` });
        return null;
      }
      if (!st.isSymbolicLink()) return st.isDirectory() ? { dir: path, link: false } : null;
      let real: string;
      try {
        real = realpathSync(path);
      } catch {
        skipped.push({ path, why: 'is a broken link' });
        return null;
      }
      if (!this.allowedRoots.some((r) => inside(r, real))) {
        skipped.push({ path, why: `links to ${real}, outside the store and the allowed roots (--lora-roots)` });
        return null;
      }
      if (!statSync(real).isDirectory()) return null;
      return { dir: real, link: true };
    };
    for (const e of safeReaddir(this.root)) {
      if (e.name === INTERNAL) continue;
      const path = join(this.root, e.name);
      if (e.name.startsWith('.')) continue;
      const r = resolve(path);
      if (!r) {
        if (!e.isFile()) continue;
        skipped.push({ path, why: 'is a file, not an adapter directory' });
        continue;
      }
      if (existsSync(join(r.dir, ADAPTER_CONFIG))) {
        if (isValidAdapterName(e.name)) out.push({ name: e.name, path, dir: r.dir, link: r.link });
        else skipped.push({ path, why: `${JSON.stringify(e.name)} is not a valid adapter name` });
        for (const inner of safeReaddir(r.dir)) {
          if (inner.isDirectory() || inner.isSymbolicLink()) skipped.push({ path: join(path, inner.name), why: `sits inside the adapter ${e.name}` });
        }
        continue;
      }
      let found = false;
      for (const inner of safeReaddir(r.dir)) {
        const innerPath = join(path, inner.name);
        const ir = resolve(innerPath);
        if (!ir) continue;
        if (!existsSync(join(ir.dir, ADAPTER_CONFIG))) {
          skipped.push({ path: innerPath, why: `has no ${ADAPTER_CONFIG}` });
          continue;
        }
        found = true;
        const name = `${e.name}/${inner.name}`;
        if (isValidAdapterName(name)) out.push({ name, path: innerPath, dir: ir.dir, link: ir.link || r.link });
        else skipped.push({ path: innerPath, why: `${JSON.stringify(name)} is not a valid adapter name` });
      }
      if (!found) skipped.push({ path, why: `has no ${ADAPTER_CONFIG} and no adapters inside` });
    }
    return out;
  }

  /** Every name in the store, without reading any weights (for namespace checks). */
  private allNames(): Map<string, 'managed' | 'dir' | 'link'> {
    const names = new Map<string, 'managed' | 'dir' | 'link'>();
    const skipped: StoreScan['skipped'] = [];
    for (const d of this.operatorDirs(skipped)) names.set(d.name, d.link ? 'link' : 'dir');
    for (const m of this.readManifests(skipped)) names.set(m.name, 'managed');
    return names;
  }

  /** The name that makes `name` impossible: `name` is another's org, or sits inside another adapter. */
  private blockerOf(name: string, names: Iterable<string>): string | null {
    for (const other of names) {
      if (other === name) continue;
      if (other.startsWith(`${name}/`)) return other;
      if (name.startsWith(`${other}/`)) return other;
    }
    return null;
  }

  // ---- writing

  /**
   * Publishes a validated staging directory (whose files have `digest`) as `name`: `create` fails
   * with 409 if the name exists, `replace` with 404 if it does not. Returns the new entry.
   */
  publish(staged: string, name: string, digest: string, mode: 'create' | 'replace'): StoreEntry {
    fsyncTree(staged);
    this.step('staged-synced');
    return withStoreLock(this.lock, () => {
      this.step('locked');
      const names = this.allNames();
      const blocker = this.blockerOf(name, names.keys());
      if (blocker) {
        throw new ConflictError(
          blocker.startsWith(`${name}/`) ? `the name ${name} is the org of the adapter ${blocker}` : `the name ${name} would sit inside the adapter ${blocker}`,
          'name',
        );
      }
      const kind = names.get(name);
      if (mode === 'create' && kind) throw new ConflictError(`adapter ${name} already exists; use PUT /admin/adapters/${name} to replace it`, 'name');
      if (mode === 'replace' && !kind) throw new ModelNotFoundError(`adapter ${name} does not exist; use POST /admin/adapters to create it`, 'name');
      if (kind === 'link') throw new ConflictError(`adapter ${name} is a link managed on disk; change it there`, 'name');
      const version = join(this.versions, digest);
      if (existsSync(version)) rmSync(staged, { recursive: true, force: true });
      else {
        renameSync(staged, version);
        fsyncPath(this.versions);
      }
      this.step('version-published');
      const old = kind === 'managed' ? this.readManifest(name) : null;
      const path = this.manifestPath(name);
      mkdirSync(dirname(path), { recursive: true });
      const created = Date.now();
      const tmp = `${path}.tmp-${SELF}`;
      writeFileDurable(tmp, JSON.stringify({ name, digest, created } satisfies Manifest));
      this.step('manifest-written');
      renameSync(tmp, path);
      fsyncPath(dirname(path));
      this.step('manifest-renamed');
      if (old && old.digest !== digest) this.markIfOrphaned(old.digest);
      if (kind === 'dir') this.retireDir(name);
      this.step('done');
      return { name, digest, dir: version, managed: true, link: false, createdAt: created };
    });
  }

  /**
   * Removes `name` if it still is the version `digest` (a name re-created meanwhile is a new version
   * that this never touches). The files stay until the grace period has passed.
   */
  unpublish(name: string, digest: string): void {
    withStoreLock(this.lock, () => {
      this.step('locked');
      const kind = this.allNames().get(name);
      if (!kind) throw new ModelNotFoundError(`adapter ${name} does not exist`, 'name');
      if (kind === 'link') throw new ConflictError(`adapter ${name} is a link managed on disk; remove the link there`, 'name');
      if (kind === 'dir') {
        const dir = join(this.root, ...name.split('/'));
        if (adapterDigest(dir) !== digest) throw new ConflictError(`adapter ${name} changed on disk since it was loaded; retry`, 'name');
        this.retireDir(name);
        this.step('done');
        return;
      }
      const m = this.readManifest(name);
      if (!m || m.digest !== digest) throw new ConflictError(`adapter ${name} was replaced meanwhile (now ${m?.digest ?? 'gone'}); nothing was deleted`, 'name');
      unlinkSync(this.manifestPath(name));
      fsyncPath(dirname(this.manifestPath(name)));
      this.step('manifest-removed');
      this.markIfOrphaned(digest);
      this.step('done');
    });
  }

  private readManifest(name: string): Manifest | null {
    try {
      return JSON.parse(readFileSync(this.manifestPath(name), 'utf8')) as Manifest;
    } catch {
      return null;
    }
  }

  /** Records when a version lost its last name (its files go after the grace period). */
  private markIfOrphaned(digest: string): void {
    if (this.readManifests([]).some((m) => m.digest === digest)) return;
    writeFileSync(join(this.trash, `${digest}.${Date.now()}`), '');
    fsyncPath(this.trash);
  }

  /** Moves an operator directory deleted through the API out of the namespace (atomically). */
  private retireDir(name: string): void {
    const dir = join(this.root, ...name.split('/'));
    renameSync(dir, join(this.trash, 'dirs', `${Date.now()}-${randomBytes(4).toString('hex')}`));
    const parent = dirname(dir);
    if (parent !== this.root && readdirSync(parent).length === 0) rmSync(parent, { recursive: true, force: true });
    fsyncPath(parent === this.root || !existsSync(parent) ? this.root : parent);
  }

  // ---- housekeeping

  /**
   * Removes versions that have had no name for longer than the grace period and are not in `inUse`,
   * marks nameless versions that have no marker yet (a crash between a rename and its marker), and
   * clears old temporary files and abandoned staging directories. Safe to run from every replica.
   */
  collect(inUse: ReadonlySet<string>, now = Date.now()): { removed: string[] } {
    const removed: string[] = [];
    withStoreLock(this.lock, () => {
      const named = new Set(this.readManifests([]).map((m) => m.digest));
      const marked = new Map<string, number>();
      for (const f of safeReaddir(this.trash)) {
        const m = /^([0-9a-f]{64})\.(\d+)$/.exec(f.name);
        if (m) marked.set(m[1], Math.min(Number(m[2]), marked.get(m[1]) ?? Infinity));
      }
      for (const v of safeReaddir(this.versions)) {
        if (!/^[0-9a-f]{64}$/.test(v.name) || named.has(v.name)) continue;
        const since = marked.get(v.name);
        if (since === undefined) writeFileSync(join(this.trash, `${v.name}.${now}`), '');
        else if (now - since > this.graceMs && !inUse.has(v.name)) {
          rmSync(join(this.versions, v.name), { recursive: true, force: true });
          removed.push(v.name);
        }
      }
      for (const f of safeReaddir(this.trash)) {
        const m = /^([0-9a-f]{64})\.(\d+)$/.exec(f.name);
        if (m && (named.has(m[1]) || !existsSync(join(this.versions, m[1])))) rmSync(join(this.trash, f.name), { force: true });
      }
      for (const d of safeReaddir(join(this.trash, 'dirs'))) {
        if (now - Number(d.name.split('-')[0]) > this.graceMs) rmSync(join(this.trash, 'dirs', d.name), { recursive: true, force: true });
      }
      this.removeTemporaries(now);
    });
    return { removed };
  }

  private removeTemporaries(now: number): void {
    const walk = (dir: string): void => {
      for (const e of safeReaddir(dir)) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.includes('.tmp-') && now - statSync(p).mtimeMs > 3_600_000) rmSync(p, { force: true });
      }
    };
    walk(this.names);
    for (const s of safeReaddir(this.staging)) {
      const p = join(this.staging, s.name);
      if (now - statSync(p).mtimeMs > 24 * 3_600_000) rmSync(p, { recursive: true, force: true });
    }
  }
}

function safeReaddir(dir: string): Dirent[] {
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}


