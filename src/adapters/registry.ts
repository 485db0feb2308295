/**
 * The adapter registry: public name ↔ internal id, with what is known about each adapter. Replacing
 * an adapter bumps its version, so new requests load the new weights while running ones finish on
 * the weights they started with (the cache and slots key on id@version).
 */
import type { PeftInfo } from './peft.js';

export interface AdapterRecord {
  readonly id: number;
  readonly name: string;
  readonly dir: string;
  readonly version: number;
  readonly info: PeftInfo;
  /** 'store': lives in the adapter store; 'path': registered from a path (vLLM's load_lora_adapter). */
  readonly source: 'store' | 'path';
  readonly createdAt: number;
}

/** The cache/slot key of an adapter version. */
export const adapterKey = (r: Pick<AdapterRecord, 'id' | 'version'>): string => `${r.id}@${r.version}`;

export class AdapterRegistry {
  private readonly byName = new Map<string, AdapterRecord>();
  private nextId = 1;

  /** Registers `name` (or replaces it, keeping its id and bumping its version). */
  register(name: string, dir: string, info: PeftInfo, source: AdapterRecord['source'], now = Date.now()): AdapterRecord {
    const old = this.byName.get(name);
    const rec: AdapterRecord = {
      id: old?.id ?? this.nextId++,
      name,
      dir,
      version: (old?.version ?? 0) + 1,
      info,
      source,
      createdAt: now,
    };
    this.byName.set(name, rec);
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

  get size(): number {
    return this.byName.size;
  }
}
