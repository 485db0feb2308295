/** The store thread's tasks (shared by the client and the worker). */
import type { PeftInfo } from '../../adapters/peft.js';

export type StoreTask =
  /** Validate an adapter directory: fully (new uploads) or from config and headers; and digest it. */
  | { kind: 'validate'; dir: string; full: boolean }
  | { kind: 'scan' }
  | { kind: 'publish'; staged: string; name: string; digest: string; mode: 'create' | 'replace' }
  | { kind: 'unpublish'; name: string; digest: string }
  | { kind: 'collect'; inUse: string[] };

export interface Validated {
  info: PeftInfo;
  digest: string;
}
