/**
 * The adapter registry: public name → the adapter version it serves now, with what is known about
 * it. A version is named by the digest of its files: the host cache, the slots and the scheduler
 * key on the digest, so two names with the same files share one load, and a replaced adapter (a
 * new digest) can never be served from its old version's weights. Requests that started on a
 * version keep its directory (versions are immutable) whatever happens to the name.
 */
import type { PeftInfo } from './peft.js';

export interface AdapterRecord {
  readonly name: string;
  /** sha256 of the version's files (hex): its identity everywhere below the server. */
  readonly digest: string;
  readonly dir: string;
  readonly info: PeftInfo;
  /**
   * 'upload': an uploaded version in the store; 'directory': an adapter directory laid out in the
   * store by an operator; 'path': registered from a path (vLLM's load_lora_adapter).
   */
  readonly source: 'upload' | 'directory' | 'path';
  readonly createdAt: number;
}

/** The cache/slot key of an adapter version. */
export const adapterKey = (r: Pick<AdapterRecord, 'digest'>): string => r.digest;

export class AdapterRegistry {
  private readonly byName = new Map<string, AdapterRecord>();

  /** Points `name` at a version (replacing what it pointed at). */
  register(rec: AdapterRecord): AdapterRecord {
    this.byName.set(rec.name, rec);
    return rec;
  }

  get(name: string): AdapterRecord | undefined {
    return this.byName.get(name);
  }

  remove(name: string): AdapterRecord | undefined {
    const rec = this.byName.get(name);
    this.byName.delete(name);
    return rec;
  }

  list(): AdapterRecord[] {
    return [...this.byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Digests some name points at. */
  digests(): Set<string> {
    return new Set([...this.byName.values()].map((r) => r.digest));
  }

  get size(): number {
    return this.byName.size;
  }
}
