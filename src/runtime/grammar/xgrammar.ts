/**
 * Loads XGrammar's WebAssembly build (@mlc-ai/web-xgrammar). The package ships a UMD bundle inside a
 * `"type": "module"` package, which Node's ESM loader cannot evaluate (it needs CommonJS's
 * `require` and `__filename` to locate itself), so the bundle is evaluated here as the CommonJS
 * module it is. Its one dynamic `import('module')` is handed the real module (code evaluated this
 * way has no dynamic-import hook under every loader, vitest's included), and the WebAssembly
 * instance it creates is handed back to us, so the size of its memory can be read
 * (`xgrammarMemoryBytes`: WebAssembly memory grows and never shrinks, so it is what a thread that
 * runs XGrammar holds). This is the only file that touches the package; everything else goes
 * through grammar/compiler.ts.
 */
import { readFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { dirname } from 'node:path';
import type * as XGrammar from '@mlc-ai/web-xgrammar';

export type XGrammarModule = typeof XGrammar;

let loaded: XGrammarModule | null = null;
/** The bundle's instantiated WebAssembly module (set when XGrammar first initializes). */
let instance: { HEAP8?: Int8Array } | null = null;

/** XGrammar's last fatal message (it prints one, then aborts, on some errors: an EBNF syntax error, an exhausted memory). */
let lastFatal: string | null = null;
let aborted = false;

/** Bytes of WebAssembly memory this thread's XGrammar holds (0 before its first use). */
export function xgrammarMemoryBytes(): number {
  return instance?.HEAP8?.buffer.byteLength ?? 0;
}

/** Whether `err` is XGrammar aborting: its runtime cannot be used again in this thread. */
export function isXGrammarAbort(err: unknown): boolean {
  return /Aborted\(/.test(err instanceof Error ? err.message : String(err));
}

/** XGrammar aborted in this thread: its runtime cannot be used again (the thread must be replaced). */
export function xgrammarAborted(): boolean {
  return aborted;
}

/** What XGrammar said before it aborted (its [FATAL] line without the source location), or null. */
export function xgrammarFatalMessage(): string | null {
  return lastFatal;
}

/** Replaces the one occurrence of `what` in the bundle, or throws naming it. */
function patchOnce(source: string, path: string, what: string, by: string): string {
  const parts = source.split(what);
  if (parts.length !== 2) throw new Error(`${path}: unexpected bundle (expected one ${what}); check the @mlc-ai/web-xgrammar version`);
  return parts.join(by);
}

/** XGrammar's error output: a [FATAL] line is kept (for the error that follows), the rest goes to stderr. */
function onPrintErr(text: string): void {
  const fatal = /^\[FATAL\]\s*(?:\S+:\d+:\s*)?(.*)$/s.exec(text);
  if (fatal) lastFatal = fatal[1].trim().slice(0, 500);
  else if (text.startsWith('Aborted(')) aborted = true;
  else process.stderr.write(`${text}\n`);
}

export function xgrammar(): XGrammarModule {
  if (loaded) return loaded;
  const require = nodeModule.createRequire(import.meta.url);
  const path = require.resolve('@mlc-ai/web-xgrammar');
  let source = readFileSync(path, 'utf8');
  source = patchOnce(source, path, "import('module')", 'Promise.resolve(__nodeModule)');
  source = patchOnce(source, path, 'binding = await Module();', 'binding = await Module({ printErr: __onPrintErr }); __onInstance(binding);');
  const mod = { exports: {} as Record<string, unknown> };
  const factory = new Function('exports', 'module', 'require', '__filename', '__dirname', '__nodeModule', '__onInstance', '__onPrintErr', source) as (...args: unknown[]) => void;
  factory(mod.exports, mod, require, path, dirname(path), nodeModule, (m: { HEAP8?: Int8Array }) => (instance = m), onPrintErr);
  loaded = mod.exports as unknown as XGrammarModule;
  return loaded;
}
