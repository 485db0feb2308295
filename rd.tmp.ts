import { SafetensorsFile } from './src/runtime/checkpoint/safetensors.js';
const f = SafetensorsFile.open('/work/main/.cache/bench/models/qwen2.5-0.5b-shape/model.safetensors');
const names = [...f.tensors.keys()].filter((n) => n.includes('mlp.') && n.endsWith('.weight'));
let t = performance.now();
let n = 0;
for (const name of names) n += f.readFloat32(name).length;
console.log(`${names.length} tensors, ${(n / 1e6).toFixed(0)}M values: ${(performance.now() - t).toFixed(0)} ms`);
