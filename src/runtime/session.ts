/**
 * The one owner of onnxruntime-node: execution provider choice, session creation and `run` with
 * checks that name every missing input at once and report shapes (never data) on failure.
 */
import ort from 'onnxruntime-node';
import { RuntimeConfigError } from '../errors.js';
import { availableCores } from '../util/cores.js';

// onnxruntime's own logger prints to stderr in colour; errors reach the user through our messages.
ort.env.logLevel = 'fatal';

import type { Device } from './devices.js';

export type { Device } from './devices.js';

export type TensorType = 'float32' | 'float16' | 'int32' | 'int64' | 'uint8' | 'bool';
export type TensorData = Float32Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;

/** An onnxruntime tensor, opaque to the rest of the code base. */
export type Tensor = ort.Tensor;

export function tensor(type: TensorType, data: TensorData, dims: readonly number[]): Tensor {
  return new ort.Tensor(type, data as never, dims);
}

export interface SessionOptions {
  device: Device;
  /** Fall back to the CPU when the device cannot be used (otherwise: an error). */
  allowCpuFallback: boolean;
  /** Intra-op threads; 0 = the cores this process may use (affinity and cgroup quota). */
  threads: number;
  /** Let idle pool threads spin between ops (default: no — a server is mostly between steps). */
  spinning?: boolean;
  /** onnxruntime's CPU memory arena (default: on). */
  memArena?: boolean;
  /** Write onnxruntime's per-op profile to files with this prefix (null: no profiling). */
  profilePrefix?: string | null;
  log?: (msg: string) => void;
}

const open = (model: string | Uint8Array, opts: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> =>
  typeof model === 'string' ? ort.InferenceSession.create(model, opts) : ort.InferenceSession.create(model, opts);

export class Session {
  readonly device: Device;
  readonly inputNames: readonly string[];
  private readonly session: ort.InferenceSession;

  private constructor(session: ort.InferenceSession, device: Device) {
    this.session = session;
    this.device = device;
    this.inputNames = session.inputNames;
  }

  /** A session over a model file, or over an encoded model held in memory (small helper graphs). */
  static async create(modelPath: string | Uint8Array, opts: SessionOptions): Promise<Session> {
    const cores = availableCores();
    const threads = opts.threads > 0 ? opts.threads : cores.count;
    const base: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
      ...(opts.profilePrefix ? { enableProfiling: true, profileFilePrefix: opts.profilePrefix } : {}),
      extra: { session: { intra_op: { allow_spinning: opts.spinning ? '1' : '0' } } },
      // Set explicitly: onnxruntime's own default starts a single intra-op thread on some machines.
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      enableCpuMemArena: opts.memArena ?? true,
    };
    opts.log?.(`onnxruntime: ${threads} intra-op thread(s)${opts.threads > 0 ? ' (--threads)' : ` (${cores.source})`}`);
    if (opts.device !== 'cpu') {
      try {
        const s = await open(modelPath, { ...base, executionProviders: [opts.device] });
        return new Session(s, opts.device);
      } catch (err) {
        const why = (err as Error).message.split('\n')[0];
        const backends = ort.listSupportedBackends?.().map((b) => `${b.name}${b.bundled ? '' : ' (not bundled)'}`).join(', ');
        const msg =
          `execution provider ${opts.device} is not usable here: ${why}` +
          (backends ? ` (this onnxruntime-node build offers: ${backends})` : '') +
          (opts.device === 'cuda' ? '; install onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12 on a machine with CUDA 13 and cuDNN 9 (ldd libonnxruntime_providers_cuda.so names any library missing)' : '');
        if (!opts.allowCpuFallback) throw new RuntimeConfigError(`${msg}; pass --allow-cpu-fallback to run on the CPU instead`);
        opts.log?.(`${msg}; falling back to cpu as allowed`);
      }
    }
    try {
      const s = await open(modelPath, { ...base, executionProviders: ['cpu'] });
      return new Session(s, 'cpu');
    } catch (err) {
      throw new RuntimeConfigError(`cannot load ${typeof modelPath === 'string' ? modelPath : 'an in-memory model'}: ${(err as Error).message}`);
    }
  }

  /** Runs the graph; `fetch` names the outputs to return (each fetched output is copied once). */
  async run(feeds: Record<string, Tensor>, fetch: readonly string[]): Promise<Record<string, Tensor>> {
    const missing = this.inputNames.filter((n) => !(n in feeds));
    if (missing.length > 0) throw new Error(`missing graph inputs: ${missing.join(', ')}`);
    try {
      return await this.session.run(feeds, fetch as string[]);
    } catch (err) {
      const shapes = Object.entries(feeds)
        .map(([k, t]) => `${k}${JSON.stringify(t.dims)}`)
        .join(' ');
      throw new Error(`onnxruntime run failed: ${(err as Error).message}\n  input shapes: ${shapes}`, { cause: err });
    }
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
