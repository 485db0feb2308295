import { Checkpoint } from './src/runtime/checkpoint/checkpoint.js';
import { PROJECTIONS, projectionPath } from './src/runtime/checkpoint/spec.js';
const ck = Checkpoint.open('/work/main/.cache/bench/models/qwen2.5-0.5b-shape');
console.log(ck.has('model.layers.0.mlp.gate_proj.weight'));
for (const order of ['kind', 'layer', 'kind', 'layer']) {
  const t = performance.now();
  if (order === 'layer') for (let l = 0; l < 24; l++) for (const p of PROJECTIONS) ck.read(`model.layers.${l}.${projectionPath(p)}.weight`);
  else for (const p of PROJECTIONS) for (let l = 0; l < 24; l++) ck.read(`model.layers.${l}.${projectionPath(p)}.weight`);
  console.log(order, (performance.now() - t).toFixed(0));
}
