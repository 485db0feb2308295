/**
 * A Hugging Face checkpoint directory: config.json + one or more safetensors files (single
 * `model.safetensors` or sharded with `model.safetensors.index.json`). Opening it checks that every
 * tensor the decoder needs is present with the right shape, so a bad checkpoint fails before any
 * graph is built; tensors are then read one at a time.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError } from '../../errors.js';
import { SafetensorsFile } from './safetensors.js';
// One way only: the family table parses config.json and lists the tensors; nothing under arch/
// imports this file (families read tensors through arch/family.ts's TensorReader).
import { expectedTensors, parseModelSpec, type FamilySpec } from '../arch/families.js';
import type { ExpectedTensor, TensorReader } from '../arch/family.js';
import { tokenIds } from './spec.js';

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CheckpointError(`${path}: cannot read (${(err as Error).message})`, err);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw new CheckpointError(`${path}: invalid JSON (${(err as Error).message})`, err);
  }
}

export class Checkpoint implements TensorReader {
  readonly dir: string;
  readonly spec: FamilySpec;
  /** Every safetensors file of the checkpoint, in a stable order. */
  readonly files: readonly string[];
  private readonly open = new Map<string, SafetensorsFile>();
  private readonly location = new Map<string, SafetensorsFile>();

  private constructor(dir: string, spec: FamilySpec, files: string[]) {
    this.dir = dir;
    this.spec = spec;
    this.files = files;
  }

  static open(dir: string): Checkpoint {
    const configPath = join(dir, 'config.json');
    if (!existsSync(configPath)) throw new CheckpointError(`${dir}: no config.json (is this a Hugging Face checkpoint directory?)`);
    const spec = parseModelSpec(readJson(configPath), configPath);
    const genPath = join(dir, 'generation_config.json');
    if (existsSync(genPath)) {
      const gen = readJson(genPath);
      spec.eosTokenIds = [...new Set([...spec.eosTokenIds, ...tokenIds(gen.eos_token_id)])];
      if (spec.bosTokenId === null && typeof gen.bos_token_id === 'number') spec.bosTokenId = gen.bos_token_id;
    }

    const indexPath = join(dir, 'model.safetensors.index.json');
    const singlePath = join(dir, 'model.safetensors');
    let files: string[];
    let weightMap: Record<string, string> | null = null;
    if (existsSync(indexPath)) {
      const index = readJson(indexPath);
      const wm = index.weight_map;
      if (wm === null || typeof wm !== 'object') throw new CheckpointError(`${indexPath}: weight_map is missing`);
      weightMap = wm as Record<string, string>;
      files = [...new Set(Object.values(weightMap))].sort();
      for (const f of files) {
        if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f.startsWith('.')) {
          throw new CheckpointError(`${indexPath}: shard name ${JSON.stringify(f)} is not a plain file name`);
        }
        if (!existsSync(join(dir, f))) throw new CheckpointError(`${indexPath}: shard ${f} is listed but missing`);
      }
    } else if (existsSync(singlePath)) {
      files = ['model.safetensors'];
    } else {
      const hasBin = existsSync(join(dir, 'pytorch_model.bin'));
      throw new CheckpointError(
        `${dir}: no model.safetensors or model.safetensors.index.json` +
          (hasBin ? ' (pytorch_model.bin is a pickle and is not loaded; convert it to safetensors)' : ''),
      );
    }

    const ckpt = new Checkpoint(dir, spec, files);
    try {
      for (const f of files) {
        const st = SafetensorsFile.open(join(dir, f));
        ckpt.open.set(f, st);
        for (const name of st.tensors.keys()) {
          if (weightMap && weightMap[name] !== undefined && weightMap[name] !== f) continue;
          ckpt.location.set(name, st);
        }
      }
      for (const e of expectedTensors(spec)) ckpt.check(e);
    } catch (err) {
      ckpt.close();
      throw err;
    }
    return ckpt;
  }

  private check(e: ExpectedTensor): void {
    const st = this.location.get(e.name);
    if (!st) {
      throw new CheckpointError(`${this.dir}: tensor ${e.name} is missing (expected shape ${JSON.stringify(e.shape)})`);
    }
    const info = st.tensors.get(e.name)!;
    if (info.shape.length !== e.shape.length || info.shape.some((d, i) => d !== e.shape[i])) {
      throw new CheckpointError(
        `${st.path}: tensor ${e.name} has shape ${JSON.stringify(info.shape)}, expected ${JSON.stringify(e.shape)} from config.json`,
      );
    }
  }

  /** Whether the checkpoint holds a tensor of this name. */
  has(name: string): boolean {
    return this.location.has(name);
  }

  /** Reads one tensor as float32 (converting F16/BF16). */
  read(name: string): Float32Array {
    const st = this.location.get(name);
    if (!st) throw new CheckpointError(`${this.dir}: tensor ${name} is missing`);
    return st.readFloat32(name);
  }

  /**
   * A content hash of the checkpoint (config files and every weight byte). Hashing reads every file
   * once; `memo` lets callers skip it for files whose size and mtime are unchanged.
   */
  async contentHash(memo?: { get(key: string): string | undefined; set(key: string, hash: string): void }): Promise<string> {
    const h = createHash('sha256');
    for (const f of ['config.json', 'generation_config.json', ...this.files]) {
      const p = join(this.dir, f);
      if (!existsSync(p)) continue;
      const st = statSync(p);
      const key = `${p}:${st.size}:${st.mtimeMs}`;
      let fileHash = memo?.get(key);
      if (!fileHash) {
        fileHash = await hashFile(p);
        memo?.set(key, fileHash);
      }
      h.update(`${f}:${fileHash}\n`);
    }
    return h.digest('hex');
  }

  close(): void {
    for (const st of this.open.values()) st.close();
    this.open.clear();
    this.location.clear();
  }
}

export function hashFile(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 4 << 20 })
      .on('data', (chunk) => h.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
