/**
 * Builds the decoder graph for a checkpoint and caches it on disk, keyed by a content hash of the
 * checkpoint plus the build options. A cached build is reused as is; anything else rebuilds into a
 * temporary directory that is renamed into place, so a crash never leaves a half-written build.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RuntimeConfigError } from '../../errors.js';
import { Checkpoint } from '../checkpoint/checkpoint.js';
import type { ModelSpec } from '../checkpoint/spec.js';
import { buildDecoder, type ProgressFn } from './decoder.js';
import { ExternalDataWriter, GraphBuilder } from './graph-builder.js';
import { encodeModel } from './onnx.js';
import { inlinePreparer, ThreadPreparer } from './prepare-pool.js';
import { WEIGHT_FORMATS, type WeightFormat } from './quant.js';
import type { LinearCompute } from './linear.js';

/** Checkpoints above this size have their weights prepared on helper threads. */
const PARALLEL_PREPARE_BYTES = 256 * 1024 * 1024;

/** Bump when the graph layout changes, so old cached builds are not reused. */
export const BUILDER_VERSION = 12;

export type Activations = 'fp32' | 'fp16';

/** The lm_head's default compute precision (see BuildOptions.lmHeadAccuracy). */
export const DEFAULT_LM_HEAD_ACCURACY: LinearCompute = 'int8';

export interface BuildOptions {
  weights: WeightFormat;
  /** fp16 activations and weights, for GPU execution providers. */
  activations: Activations;
  /** Positions covered by the rotary tables; defaults to the model's limit. */
  maxPositions?: number;
  /** Build the multi-LoRA inputs (default). false = a base-only graph, used to measure LoRA's cost. */
  lora?: boolean;
  /**
   * The lm_head's compute precision with int4/int8 weights (MatMulNBits accuracy level): 'int8'
   * quantizes its input to int8 (the fast CPU path, used by every other projection), 'fp32' keeps
   * it in float (slower; cannot flip greedy tokens at near-ties through activation rounding).
   */
  lmHeadAccuracy?: LinearCompute;
}

export const LM_HEAD_ACCURACIES: readonly LinearCompute[] = ['int8', 'fp32'];

export interface BuiltModel {
  dir: string;
  modelPath: string;
  spec: ModelSpec;
  options: Required<BuildOptions>;
  /** True when this call built the graph, false when it came from the cache. */
  built: boolean;
}

interface BuildMeta {
  builderVersion: number;
  checkpointHash: string;
  options: Required<BuildOptions>;
  spec: ModelSpec;
  bytes: number;
  seconds: number;
}

export function resolveMaxPositions(spec: ModelSpec, requested?: number): number {
  const limit = spec.maxPositionEmbeddings;
  if (requested === undefined) return limit;
  if (!Number.isSafeInteger(requested) || requested < 2) throw new RuntimeConfigError(`max positions must be an integer >= 2, got ${requested}`);
  return Math.min(requested, limit);
}

export async function buildModel(
  modelDir: string,
  options: BuildOptions,
  ctx: { cacheDir: string; progress?: ProgressFn; log?: (msg: string) => void; /** prepare weights on helper threads (default: for large checkpoints) */ parallel?: boolean },
): Promise<BuiltModel> {
  if (!WEIGHT_FORMATS.includes(options.weights)) {
    throw new RuntimeConfigError(`weight format ${JSON.stringify(options.weights)} is not one of ${WEIGHT_FORMATS.join(', ')}`);
  }
  if (options.activations !== 'fp32' && options.activations !== 'fp16') {
    throw new RuntimeConfigError(`activations ${JSON.stringify(options.activations)} must be fp32 or fp16`);
  }
  if (options.weights === 'w8a8' && options.activations !== 'fp32') {
    throw new RuntimeConfigError('weight format "w8a8" needs fp32 activations (onnxruntime\'s integer GEMM returns fp32)');
  }
  const ckpt = Checkpoint.open(modelDir);
  try {
    const opts: Required<BuildOptions> = {
      weights: options.weights,
      activations: options.activations,
      maxPositions: resolveMaxPositions(ckpt.spec, options.maxPositions),
      lora: options.lora ?? true,
      lmHeadAccuracy: options.lmHeadAccuracy ?? DEFAULT_LM_HEAD_ACCURACY,
    };
    if (!LM_HEAD_ACCURACIES.includes(opts.lmHeadAccuracy)) throw new RuntimeConfigError(`lm_head accuracy ${JSON.stringify(opts.lmHeadAccuracy)} is not one of ${LM_HEAD_ACCURACIES.join(', ')}`);
    mkdirSync(ctx.cacheDir, { recursive: true });
    const memo = hashMemo(join(ctx.cacheDir, 'file-hashes.json'));
    const checkpointHash = await ckpt.contentHash(memo);
    memo.save();
    const key = createHash('sha256')
      .update(JSON.stringify({ v: BUILDER_VERSION, checkpointHash, opts }))
      .digest('hex')
      .slice(0, 20);
    const dir = join(ctx.cacheDir, `${opts.weights}-${opts.activations}${opts.lora ? '' : '-nolora'}-${key}`);
    const modelPath = join(dir, 'model.onnx');
    if (existsSync(join(dir, 'meta.json')) && existsSync(modelPath)) {
      ctx.log?.(`using cached build ${dir}`);
      return { dir, modelPath, spec: ckpt.spec, options: opts, built: false };
    }

    ctx.log?.(`building ${opts.weights} graph (${opts.activations} activations) into ${dir}`);
    const started = Date.now();
    const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    try {
      const external = new ExternalDataWriter(join(tmp, 'model.onnx.data'), 'model.onnx.data');
      const g = new GraphBuilder(opts.activations === 'fp16' ? 'float16' : 'float', external);
      try {
        // Large checkpoints are prepared on one helper thread per core.
        const bytes = ckpt.files.reduce((n, f) => n + statSync(join(modelDir, f)).size, 0);
        const preparer = (ctx.parallel ?? bytes > PARALLEL_PREPARE_BYTES) ? new ThreadPreparer() : inlinePreparer;
        try {
          await buildDecoder(g, ckpt, opts, ctx.progress ?? (() => {}), preparer);
        } finally {
          await preparer.close();
        }
      } finally {
        external.close();
      }
      const bytes = encodeModel(
        { name: 'loraplex_decoder', nodes: g.nodes, initializers: g.initializers, inputs: g.inputs, outputs: g.outputs },
        { opset: 23, msOpset: 1, producer: 'loraplex' },
      );
      writeFileSync(join(tmp, 'model.onnx'), bytes);
      const meta: BuildMeta = {
        builderVersion: BUILDER_VERSION,
        checkpointHash,
        options: opts,
        spec: ckpt.spec,
        bytes: external.bytesWritten + bytes.length,
        seconds: (Date.now() - started) / 1000,
      };
      writeFileSync(join(tmp, 'meta.json'), JSON.stringify(meta, null, 2));
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    return { dir, modelPath, spec: ckpt.spec, options: opts, built: true };
  } finally {
    ckpt.close();
  }
}

function hashMemo(path: string): { get(k: string): string | undefined; set(k: string, v: string): void; save(): void } {
  let data: Record<string, string> = {};
  try {
    data = JSON.parse(readFileSync(path, 'utf8')) as Record<string, string>;
  } catch {
    data = {};
  }
  let dirty = false;
  return {
    get: (k) => data[k],
    set: (k, v) => {
      data[k] = v;
      dirty = true;
    },
    save: () => {
      if (!dirty) return;
      const tmp = `${path}.tmp-${process.pid}`;
      writeFileSync(tmp, JSON.stringify(data));
      renameSync(tmp, path);
    },
  };
}
