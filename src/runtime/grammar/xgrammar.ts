/**
 * Loads XGrammar's WebAssembly build (@mlc-ai/web-xgrammar). The package ships a UMD bundle inside a
 * `"type": "module"` package, which Node's ESM loader cannot evaluate (it needs CommonJS's
 * `require` and `__filename` to locate itself), so the bundle is evaluated here as the CommonJS
 * module it is. Its one dynamic `import('module')` is handed the real module (code evaluated this
 * way has no dynamic-import hook under every loader, vitest's included). This is the only file
 * that touches the package; everything else goes through grammar/compiler.ts.
 */
import { readFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { dirname } from 'node:path';
import type * as XGrammar from '@mlc-ai/web-xgrammar';

export type XGrammarModule = typeof XGrammar;

let loaded: XGrammarModule | null = null;

export function xgrammar(): XGrammarModule {
  if (loaded) return loaded;
  const require = nodeModule.createRequire(import.meta.url);
  const path = require.resolve('@mlc-ai/web-xgrammar');
  const source = readFileSync(path, 'utf8');
  const dynamicImport = "import('module')";
  if (source.split(dynamicImport).length !== 2) throw new Error(`${path}: unexpected bundle (expected one ${dynamicImport}); check the @mlc-ai/web-xgrammar version`);
  const mod = { exports: {} as Record<string, unknown> };
  const factory = new Function('exports', 'module', 'require', '__filename', '__dirname', '__nodeModule', source.replace(dynamicImport, 'Promise.resolve(__nodeModule)')) as (...args: unknown[]) => void;
  factory(mod.exports, mod, require, path, dirname(path), nodeModule);
  loaded = mod.exports as unknown as XGrammarModule;
  return loaded;
}
