/** The store thread's tasks (shared by the client and the worker). */
import type { PeftInfo } from '../../adapters/peft.js';
import type { StoreEntry, StoreScan } from '../../adapters/store.js';

/** The store thread's task map (see worker-protocol.ts). */
export interface StoreTasks {
  /** Validate an adapter directory: fully (new uploads) or from config and headers; and digest it. */
  validate: { arg: { dir: string; full: boolean }; result: Validated };
  scan: { arg: null; result: StoreScan };
  publish: { arg: { staged: string; name: string; digest: string; mode: 'create' | 'replace' }; result: StoreEntry };
  unpublish: { arg: { name: string; digest: string }; result: void };
  collect: { arg: { inUse: string[] }; result: { removed: string[] } };
}

export interface Validated {
  info: PeftInfo;
  digest: string;
}
