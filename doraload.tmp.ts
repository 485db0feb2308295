import { writeRandomPeftAdapter } from './src/adapters/random.js';
import { loadPeftAdapter } from './src/adapters/peft.js';
import { CheckpointProjections } from './src/runtime/checkpoint/projection-weights.js';
import { Checkpoint } from './src/runtime/checkpoint/checkpoint.js';
import { ensureRandomCheckpoint, QWEN2_5_0_5B } from './src/runtime/checkpoint/random.js';
const dir = '/work/main/.cache/bench/models/qwen2.5-0.5b-shape';
ensureRandomCheckpoint(dir, QWEN2_5_0_5B, {});
const spec = Checkpoint.open(dir).spec;
writeRandomPeftAdapter('/tmp/dora-a', spec, { rank: 16, seed: 5, doraMagnitude: 1 });
writeRandomPeftAdapter('/tmp/lora-a', spec, { rank: 16, seed: 5 });
for (let i = 0; i < 2; i++) {
  let t = performance.now();
  loadPeftAdapter('/tmp/lora-a', spec, { maxRank: 64 });
  const lora = performance.now() - t;
  t = performance.now();
  const base = new CheckpointProjections(dir);
  const w = loadPeftAdapter('/tmp/dora-a', spec, { maxRank: 64, base });
  base.release();
  const dora = performance.now() - t;
  const g = w.weights.factors.get('3.q_proj')!.doraScale!;
  console.log(`lora ${lora.toFixed(0)} ms, dora ${dora.toFixed(0)} ms; g[0..3] ${Array.from(g.subarray(0, 3)).map((x) => x.toFixed(3))}`);
}
