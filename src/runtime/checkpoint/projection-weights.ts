/**
 * The base model's full-precision weight of one projection, [out, in] in Hugging Face layout, read
 * from the checkpoint (what DoRA adapters need: their scale is a function of the base weight). A
 * projection stored as its own tensor is read alone; one stored inside a fused tensor (Phi-3's
 * qkv_proj) is cut from the family's own layer reader, whose last layer is kept, so asking for a
 * layer's projections in order reads it once.
 */
import { familyOf } from '../arch/families.js';
import type { LinearWeight } from '../graph/linear.js';
import { Checkpoint } from './checkpoint.js';
import { projectionPath, projectionShape, type ModelSpec, type Projection } from './spec.js';

/** Reads base projection weights; `weight` returns [out, in], row-major. */
export interface ProjectionWeights {
  weight(layer: number, p: Projection): Float32Array;
}

/** Which of a layer's fused linear weights holds a projection, and from which row. */
function placeOf(spec: ModelSpec, p: Projection): { index: number; row: number } {
  const q = projectionShape(spec, 'q_proj')[1];
  const kv = projectionShape(spec, 'k_proj')[1];
  const inter = spec.intermediateSize;
  switch (p) {
    case 'q_proj':
      return { index: 0, row: 0 };
    case 'k_proj':
      return { index: 0, row: q };
    case 'v_proj':
      return { index: 0, row: q + kv };
    case 'o_proj':
      return { index: 1, row: 0 };
    case 'gate_proj':
      return { index: 2, row: 0 };
    case 'up_proj':
      return { index: 2, row: inter };
    case 'down_proj':
      return { index: 3, row: 0 };
  }
}

export class CheckpointProjections implements ProjectionWeights {
  private ckpt: Checkpoint | null = null;
  private last: { layer: number; weights: LinearWeight[] } | null = null;

  constructor(private readonly dir: string) {}

  weight(layer: number, p: Projection): Float32Array {
    this.ckpt ??= Checkpoint.open(this.dir);
    const own = `model.layers.${layer}.${projectionPath(p)}.weight`;
    if (this.ckpt.has(own)) return this.ckpt.read(own);
    const spec = this.ckpt.spec;
    if (this.last?.layer !== layer) this.last = { layer, weights: familyOf(spec).layerWeights(this.ckpt, spec, layer) };
    const { index, row } = placeOf(spec, p);
    const [din, dout] = projectionShape(spec, p);
    return this.last.weights[index].w.subarray(row * din, (row + dout) * din);
  }

  /** Drops the cached layer and closes the checkpoint's files (a load is over). */
  release(): void {
    this.last = null;
    this.ckpt?.close();
    this.ckpt = null;
  }
}
