/**
 * The adapter store: a directory with one sub-directory per adapter (`name/` or `org/name/`) holding
 * PEFT files. Adapters are discovered at start from their config and headers (weights are read
 * later, on demand). Writes go to a staging directory first and are renamed into place only after
 * validation, so a crash or a bad upload never leaves a half adapter visible; deletes rename the
 * directory away before removing it.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ADAPTER_CONFIG } from './peft.js';
import { isValidAdapterName } from './names.js';

const STAGING = '.staging';
const TRASH = '.trash';

export class AdapterStore {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
    mkdirSync(root, { recursive: true });
    // Leftovers of an interrupted write or delete are never adapters.
    rmSync(join(root, STAGING), { recursive: true, force: true });
    rmSync(join(root, TRASH), { recursive: true, force: true });
  }

  /** Names of the adapters on disk (directories with an adapter_config.json). */
  list(): string[] {
    const names: string[] = [];
    for (const entry of readdirSync(this.root, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
      const dir = join(this.root, entry.name);
      if (existsSync(join(dir, ADAPTER_CONFIG))) {
        if (isValidAdapterName(entry.name)) names.push(entry.name);
        continue;
      }
      for (const inner of readdirSync(dir, { withFileTypes: true })) {
        const name = `${entry.name}/${inner.name}`;
        if (inner.isDirectory() && isValidAdapterName(name) && existsSync(join(dir, inner.name, ADAPTER_CONFIG))) names.push(name);
      }
    }
    return names.sort();
  }

  dirOf(name: string): string {
    if (!isValidAdapterName(name)) throw new Error(`invalid adapter name ${JSON.stringify(name)}`);
    return join(this.root, ...name.split('/'));
  }

  has(name: string): boolean {
    return existsSync(join(this.dirOf(name), ADAPTER_CONFIG));
  }

  /** A fresh, empty staging directory for an incoming adapter. */
  stage(): string {
    const dir = join(this.root, STAGING, randomBytes(8).toString('hex'));
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  /** Moves a validated staging directory into place as `name`, replacing any adapter of that name. */
  commit(staged: string, name: string): void {
    const target = this.dirOf(name);
    mkdirSync(dirname(target), { recursive: true });
    if (existsSync(target)) {
      const old = this.trashPath();
      renameSync(target, old);
      renameSync(staged, target);
      rmSync(old, { recursive: true, force: true });
    } else {
      renameSync(staged, target);
    }
  }

  /** Discards a staging directory. */
  discard(staged: string): void {
    rmSync(staged, { recursive: true, force: true });
  }

  remove(name: string): boolean {
    const target = this.dirOf(name);
    if (!existsSync(target)) return false;
    const old = this.trashPath();
    renameSync(target, old);
    rmSync(old, { recursive: true, force: true });
    const parent = dirname(target);
    if (parent !== this.root && readdirSync(parent).length === 0) rmSync(parent, { recursive: true, force: true });
    return true;
  }

  private trashPath(): string {
    const dir = join(this.root, TRASH);
    mkdirSync(dir, { recursive: true });
    return join(dir, randomBytes(8).toString('hex'));
  }

  /** Total bytes of an adapter's files. */
  sizeOf(name: string): number {
    const dir = this.dirOf(name);
    return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
  }
}
