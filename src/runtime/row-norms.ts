/**
 * ‖W + B·A‖ of each row, for DoRA scales (adapters/dora.ts): W [out, in], B [out, rank], A [rank,
 * in]. One small onnxruntime graph — MatMul, Add, ReduceSumSquare — run on one thread: the
 * [out × in × rank] product is the whole cost of a DoRA load, and onnxruntime's SGEMM does it an
 * order of magnitude faster than a script loop while leaving the other cores to serving.
 */
import { encodeModel } from './graph/onnx.js';
import { GraphBuilder } from './graph/graph-builder.js';
import { Session, tensor } from './session.js';

const IN = { w: 'w', b: 'b', a: 'a' } as const;
const OUT = 'squared_norms';

function graph(): Uint8Array {
  const g = new GraphBuilder('float', null);
  const w = g.input(IN.w, 'float', ['out', 'in']);
  const b = g.input(IN.b, 'float', ['out', 'rank']);
  const a = g.input(IN.a, 'float', ['rank', 'in']);
  const sum = g.op('Add', [w, g.op('MatMul', [b, a])]);
  g.op('ReduceSumSquare', [sum, g.const64([1])], { keepdims: 0 }, { out: OUT });
  g.output(OUT, 'float', ['out']);
  return encodeModel({ name: 'loraplex_row_norms', nodes: g.nodes, initializers: g.initializers, inputs: g.inputs, outputs: g.outputs }, { opset: 23, msOpset: 1, producer: 'loraplex' });
}

export class RowNorms {
  private session: Promise<Session> | null = null;

  /** Row norms of W + B·A (W [out, in], B [out, rank], A [rank, in], all row-major). */
  async of(w: Float32Array, b: Float32Array, a: Float32Array, out: number, din: number, rank: number): Promise<Float32Array> {
    if (w.length !== out * din || b.length !== out * rank || a.length !== rank * din) throw new Error('row norms: shapes disagree');
    // No memory arena: the loader thread would otherwise keep its largest temporaries for good.
    this.session ??= Session.create(graph(), { device: 'cpu', allowCpuFallback: false, threads: 1, memArena: false });
    const s = await this.session;
    const r = await s.run({ [IN.w]: tensor('float32', w, [out, din]), [IN.b]: tensor('float32', b, [out, rank]), [IN.a]: tensor('float32', a, [rank, din]) }, [OUT]);
    return (r[OUT].data as Float32Array).map(Math.sqrt);
  }

  async close(): Promise<void> {
    const s = this.session;
    this.session = null;
    await (await s)?.release();
  }
}
