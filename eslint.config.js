import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * Layering: data flows server → scheduler → adapters → runtime (cli on top of all). A layer imports
 * nothing from the layers above it, and only src/runtime/session.ts imports onnxruntime-node.
 */
const above = {
  runtime: ['scheduler', 'adapters', 'server', 'cli'],
  adapters: ['scheduler', 'server', 'cli'],
  scheduler: ['server', 'cli'],
  server: ['cli'],
  util: ['runtime', 'scheduler', 'adapters', 'server', 'cli'],
};
/** Only src/runtime/grammar/xgrammar.ts loads XGrammar (its types may be imported anywhere below the server). */
const xgrammarPath = { name: '@mlc-ai/web-xgrammar', allowTypeImports: true, message: 'load XGrammar through src/runtime/grammar/xgrammar.ts' };
const layerRule = (layer, forbidden) => ({
  files: [`src/${layer}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        paths: layer === 'runtime' ? [] : [{ name: 'onnxruntime-node', message: 'only src/runtime/session.ts imports onnxruntime-node' }, xgrammarPath],
        patterns: forbidden.map((f) => ({ group: [`**/${f}/*`, `../${f}/*`, `../../${f}/*`], message: `src/${layer} must not import from src/${f} (layering: server → scheduler → adapters → runtime)` })),
      },
    ],
  },
});

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'openapi/', 'coverage/', 'scratch/', '.cache/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  ...Object.entries(above).map(([layer, forbidden]) => layerRule(layer, forbidden)),
  {
    files: ['src/runtime/**/*.ts'],
    ignores: ['src/runtime/session.ts', 'src/runtime/grammar/xgrammar.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [{ name: 'onnxruntime-node', message: 'only src/runtime/session.ts imports onnxruntime-node' }, xgrammarPath],
          patterns: above.runtime.map((f) => ({ group: [`**/${f}/*`, `../${f}/*`, `../../${f}/*`], message: `src/runtime must not import from src/${f} (layering: server → scheduler → adapters → runtime)` })),
        },
      ],
    },
  },
);
