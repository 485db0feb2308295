/**
 * The decoder at run time: one onnxruntime session over a built graph, the KV pool and the LoRA
 * slots, driven one step at a time. A step takes any mix of rows — prefill chunks with ragged
 * lengths and single-token decodes, each with its own adapter slot or none — and returns logits for
 * the tokens each row asks for.
 */
import { RuntimeLimitError } from './limit-error.js';
import type { ModelSpec } from './checkpoint/spec.js';
import type { BuiltModel } from './graph/build.js';
import { ATTENTION_GROUPS, attentionInputs, IO, loraA, loraB, loraDora, newKey, newValue, pastKey, pastValue, type AttentionGroupName } from './graph/io.js';
import { KV_BLOCK, KvPool, KvSequence, NULL_KV_TOKEN, type FloatStore } from './kv-cache.js';
import { availableMemory } from '../util/memory.js';
import { LoraStacks } from './lora-stacks.js';
import { Session, tensor, type Device, type Tensor } from './session.js';

export interface ModelOptions {
  device: Device;
  allowCpuFallback: boolean;
  threads: number;
  /** onnxruntime profiling file prefix (null: off). */
  profilePrefix?: string | null;
  /** Session options chosen by measurement (see the roofline benchmark); for comparisons. */
  spinning?: boolean;
  memArena?: boolean;
  /** Tokens the KV pool holds over all sequences. */
  kvCacheTokens: number;
  /** Adapter slots in the graph (the most distinct adapters in one step). */
  adapterSlots: number;
  /** Highest LoRA rank accepted. */
  maxLoraRank: number;
  log?: (msg: string) => void;
}

export interface StepRow {
  seq: KvSequence;
  /** New tokens: a prompt (chunk) or the one token sampled last step. */
  tokens: ArrayLike<number>;
  /** Adapter slot, or -1 for the base model. */
  slot: number;
  /** Which new tokens get logits. */
  logits: 'last' | 'all' | 'none';
}

export interface StepOutput {
  /** [rowsWithLogits..., vocab] row-major logits, in row order. */
  logits: Float32Array;
  /** Per input row: index of its first logits row in `logits`, or -1. */
  logitsRow: Int32Array;
  vocabSize: number;
}

/** A growable Int32 scratch buffer: preallocated, handed out as views. */
class Scratch {
  private buf = new Int32Array(256);
  view(n: number): Int32Array {
    if (n > this.buf.length) this.buf = new Int32Array(Math.max(n, this.buf.length * 2));
    return this.buf.subarray(0, n);
  }
}

/** The per-step index buffers of one attention group (graph/io.ts attentionInputs). */
class AttentionScratch {
  readonly pad = new Scratch();
  readonly kvIdx = new Scratch();
  readonly kvNew = new Scratch();
  readonly newTokens = new Scratch();
  readonly pastLen = new Scratch();
}

/** Bytes one token takes in the KV cache: keys and values of every layer. */
export function kvBytesPerToken(spec: ModelSpec, half: boolean): number {
  return spec.numLayers * 2 * spec.numKvHeads * spec.headDim * (half ? 2 : 4);
}

/**
 * The default KV cache size: a quarter of the memory this process may use, 4096 to 131072 tokens.
 * (Pool pages are touched only as sequences use them, so an idle pool costs little resident memory.)
 */
function autoKvTokens(spec: ModelSpec, half: boolean, log?: (m: string) => void): number {
  const mem = availableMemory();
  const per = kvBytesPerToken(spec, half);
  const tokens = Math.max(4096, Math.min(131072, Math.floor(mem.bytes / 4 / per / KV_BLOCK) * KV_BLOCK));
  log?.(`KV cache: ${tokens} tokens (${((tokens * per) / 1024 ** 3).toFixed(2)} GiB at ${per} bytes per token; a quarter of ${(mem.bytes / 1024 ** 3).toFixed(1)} GiB, ${mem.source}); set --kv-cache-tokens to choose`);
  return tokens;
}

export class DecoderModel {
  readonly spec: ModelSpec;
  readonly maxPositions: number;
  readonly kv: KvPool;
  readonly lora: LoraStacks;
  readonly device: Device;
  private readonly session: Session;
  private readonly half: boolean;
  /** The graph has multi-LoRA inputs (always, except base-only builds used for comparison). */
  private readonly hasLora: boolean;
  private readonly poolFeeds: Record<string, Tensor> = {};
  /** LoRA stack feeds by number of slots fed (a prefix of the loaded slots); reset when slots change. */
  private loraFeeds = new Map<number, Record<string, Tensor>>();
  private loraFeedsVersion = -1;
  private readonly fetch: string[];
  /** Per-step index buffers, reused across steps. */
  private readonly buf = {
    ids: new Scratch(),
    pos: new Scratch(),
    unpad: new Scratch(),
    attention: { decode: new AttentionScratch(), prompt: new AttentionScratch() } satisfies Record<AttentionGroupName, AttentionScratch>,
    logitsIdx: new Scratch(),
    writeIdx: new Scratch(),
    gather: new Scratch(),
    rowGather: new Scratch(),
    rowSlots: new Scratch(),
    pick: new Scratch(),
    pickTokens: new Scratch(),
    doraTokens: new Scratch(),
    doraSlots: new Scratch(),
  };

  private constructor(built: BuiltModel, session: Session, opts: ModelOptions) {
    this.spec = built.spec;
    this.session = session;
    this.device = session.device;
    this.half = built.options.activations === 'fp16';
    this.hasLora = built.options.lora;
    const kvDim = this.spec.numKvHeads * this.spec.headDim;
    this.kv = new KvPool(this.spec.numLayers, kvDim, opts.kvCacheTokens > 0 ? opts.kvCacheTokens : autoKvTokens(this.spec, this.half, opts.log), this.half);
    // One sequence must fit the cache: the usable context is capped by its capacity.
    this.maxPositions = Math.min(built.options.maxPositions, this.kv.capacity);
    if (this.maxPositions < built.options.maxPositions) {
      opts.log?.(`context capped at ${this.maxPositions} tokens by the KV cache size (--kv-cache-tokens); the model allows ${built.options.maxPositions}`);
    }
    this.lora = new LoraStacks(this.spec, opts.adapterSlots, opts.maxLoraRank, this.half);
    const ft = this.half ? 'float16' : 'float32';
    for (let l = 0; l < this.spec.numLayers; l++) {
      this.poolFeeds[pastKey(l)] = tensor(ft, this.kv.keys[l], [this.kv.poolTokens, kvDim]);
      this.poolFeeds[pastValue(l)] = tensor(ft, this.kv.values[l], [this.kv.poolTokens, kvDim]);
    }
    this.fetch = [IO.logits];
    for (let l = 0; l < this.spec.numLayers; l++) this.fetch.push(newKey(l), newValue(l));
  }

  static async load(built: BuiltModel, opts: ModelOptions): Promise<DecoderModel> {
    const session = await Session.create(built.modelPath, {
      device: opts.device,
      allowCpuFallback: opts.allowCpuFallback,
      threads: opts.threads,
      profilePrefix: opts.profilePrefix ?? null,
      spinning: opts.spinning,
      memArena: opts.memArena,
      log: opts.log,
    });
    return new DecoderModel(built, session, opts);
  }

  newSequence(): KvSequence {
    return new KvSequence();
  }

  freeSequence(seq: KvSequence): void {
    this.kv.free(seq);
  }

  /** Feeds for the stacks of slots 0..u-1. */
  private loraTensors(u: number): Record<string, Tensor> {
    if (this.loraFeedsVersion !== this.lora.version) {
      this.loraFeeds.clear();
      this.loraFeedsVersion = this.lora.version;
    }
    let feeds = this.loraFeeds.get(u);
    if (!feeds) {
      const ft = this.half ? 'float16' : 'float32';
      feeds = {};
      for (const v of this.lora.views(u)) {
        feeds[loraA(v.layer, v.projection)] = tensor(ft, v.a, v.aDims);
        feeds[loraB(v.layer, v.projection)] = tensor(ft, v.b, v.bDims);
        feeds[loraDora(v.layer, v.projection)] = tensor(ft, v.g, v.gDims);
      }
      this.loraFeeds.set(u, feeds);
    }
    return feeds;
  }

  /**
   * Runs one forward step. Each row's new tokens are appended to its sequence.
   * Throws RuntimeLimitError (before touching any state) when a row would pass the model's positions
   * or the KV pool is full.
   */
  async step(rows: readonly StepRow[]): Promise<StepOutput> {
    const B = rows.length;
    if (B === 0) throw new Error('step needs at least one row');
    let T = 0;
    let L = 0;
    for (const r of rows) {
      const n = r.tokens.length;
      if (n === 0) throw new Error('a step row needs at least one token');
      if (r.seq.length + n > this.maxPositions) {
        throw new RuntimeLimitError(`sequence would reach ${r.seq.length + n} positions; the model's context is ${this.maxPositions}`);
      }
      if (r.slot < -1 || r.slot >= this.lora.count) throw new Error(`row uses adapter slot ${r.slot} but ${this.lora.count} are loaded`);
      for (let s = 0; s < n; s++) {
        const id = r.tokens[s];
        if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) {
          throw new RuntimeLimitError(`token id ${id} is outside the vocabulary (0..${this.spec.vocabSize - 1})`);
        }
      }
      T += n;
      L += r.logits === 'all' ? n : r.logits === 'last' ? 1 : 0;
    }
    // Reserve KV space for all rows first, so a full pool fails the step before any state changes.
    const needed = rows.reduce((sum, r) => sum + Math.max(0, KvPool.tokensFor(r.seq.length + r.tokens.length) - r.seq.allocated), 0);
    if (needed > this.kv.freeTokens) {
      throw new RuntimeLimitError(`KV cache is full: this step needs ${needed} more tokens, ${this.kv.freeTokens} of ${this.kv.capacity} are free`);
    }
    for (const r of rows) this.kv.reserve(r.seq, r.seq.length + r.tokens.length);

    const ids = this.buf.ids.view(T);
    const pos = this.buf.pos.view(T);
    const logitsIdx = this.buf.logitsIdx.view(L);
    const writeIdx = this.buf.writeIdx.view(T);
    const logitsRow = new Int32Array(B).fill(-1);
    let t = 0;
    let li = 0;
    for (let b = 0; b < B; b++) {
      const r = rows[b];
      const past = r.seq.length;
      const n = r.tokens.length;
      if (r.logits !== 'none') logitsRow[b] = li;
      for (let s = 0; s < n; s++, t++) {
        ids[t] = r.tokens[s];
        pos[t] = past + s;
        writeIdx[t] = r.seq.indices[past + s];
        if (r.logits === 'all' || (r.logits === 'last' && s === n - 1)) logitsIdx[li++] = t;
      }
    }

    const feeds: Record<string, Tensor> = {
      ...this.poolFeeds,
      [IO.inputIds]: tensor('int32', ids, [T]),
      [IO.positionIds]: tensor('int32', pos, [T]),
      [IO.logitsIndex]: tensor('int32', logitsIdx, [L]),
    };
    this.attentionFeeds(rows, T, feeds);
    if (this.hasLora) {
      const { slots, byRow, picked, U } = this.loraGroups(rows);
      Object.assign(feeds, this.loraTensors(U));
      feeds[IO.loraGather] = tensor('int32', slots.gather, [U, slots.n]);
      feeds[IO.loraRowGather] = tensor('int32', byRow.gather, [byRow.slots.length, byRow.m]);
      feeds[IO.loraRowSlots] = tensor('int32', byRow.slots, [byRow.slots.length]);
      feeds[IO.loraPick] = tensor('int32', picked.entries, [picked.entries.length]);
      feeds[IO.loraTokens] = tensor('int32', picked.tokens, [picked.tokens.length]);
      const dora = this.doraTokens(rows);
      feeds[IO.doraTokens] = tensor('int32', dora.tokens, [dora.tokens.length]);
      feeds[IO.doraTokenSlots] = tensor('int32', dora.slots, [dora.slots.length]);
    } else if (rows.some((r) => r.slot >= 0)) {
      throw new Error('this graph was built without adapter support');
    }
    const out = await this.session.run(feeds, this.fetch);
    for (let l = 0; l < this.spec.numLayers; l++) {
      this.kv.write(l, out[newKey(l)].data as FloatStore, out[newValue(l)].data as FloatStore, writeIdx, T);
    }
    for (const r of rows) r.seq.length += r.tokens.length;
    return { logits: out[IO.logits].data as Float32Array, logitsRow, vocabSize: this.spec.vocabSize };
  }

  /**
   * The attention groups' inputs (graph/io.ts): decode rows (one new token) and prompt rows (more),
   * each group padded to its own longest row, and unpad_index into their concatenated outputs. A
   * group with no rows gets the placeholder row: two queries that read token 0, one null key.
   */
  private attentionFeeds(rows: readonly StepRow[], T: number, feeds: Record<string, Tensor>): void {
    const unpad = this.buf.unpad.view(T);
    // [row] its first packed token
    const firstToken = new Int32Array(rows.length);
    for (let b = 1; b < rows.length; b++) firstToken[b] = firstToken[b - 1] + rows[b - 1].tokens.length;
    let offset = 0;
    for (const name of ATTENTION_GROUPS) {
      const io = attentionInputs(name);
      const buf = this.buf.attention[name];
      const members: number[] = [];
      for (let b = 0; b < rows.length; b++) if (rows[b].tokens.length > 1 === (name === 'prompt')) members.push(b);
      // At least 2 query slots: a one-row attention product takes a GEMV kernel that rounds
      // differently, so a row's bits would depend on its group's length (graph/io.ts).
      let S = 2;
      let W = 1;
      let Tg = 0;
      for (const b of members) {
        const r = rows[b];
        S = Math.max(S, r.tokens.length);
        W = Math.max(W, r.seq.length + r.tokens.length);
        Tg += r.tokens.length;
      }
      const Bg = Math.max(1, members.length);
      const pad = buf.pad.view(Bg * S).fill(0);
      const kvIdx = buf.kvIdx.view(Bg * W).fill(NULL_KV_TOKEN);
      const pastLen = buf.pastLen.view(Bg).fill(0);
      const kvNew = buf.kvNew.view(Tg * 2);
      const newTokens = buf.newTokens.view(Tg);
      let tg = 0;
      members.forEach((b, i) => {
        const r = rows[b];
        const past = r.seq.length;
        const n = r.tokens.length;
        pastLen[i] = past;
        kvIdx.set(r.seq.indices.subarray(0, past), i * W);
        for (let s = 0; s < n; s++, tg++) {
          const t = firstToken[b] + s;
          pad[i * S + s] = t;
          unpad[t] = offset + i * S + s;
          kvNew[2 * tg] = i;
          kvNew[2 * tg + 1] = past + s;
          newTokens[tg] = t;
        }
        pad.fill(firstToken[b] + n - 1, i * S + n, (i + 1) * S);
      });
      feeds[io.padIndex] = tensor('int32', pad, [Bg, S]);
      feeds[io.kvIndex] = tensor('int32', kvIdx, [Bg, W]);
      feeds[io.pastLen] = tensor('int32', pastLen, [Bg]);
      feeds[io.kvNewSlot] = tensor('int32', kvNew, [Tg, 2]);
      feeds[io.newTokens] = tensor('int32', newTokens, [Tg]);
      offset += Bg * S;
    }
    feeds[IO.unpadIndex] = tensor('int32', unpad, [T]);
  }

  /**
   * Groups the tokens of adapter rows for the graph (graph/decoder.ts). Rows with one new token go
   * into slot groups: gather [U, n] (padding 0), U = highest slot used + 1 (slots above it are not
   * fed), n = the largest group. The prompt rows (more tokens) of each slot form a row group: [G, m]
   * alike, m = the most prompt tokens of one slot, with the group's slot; G is at most the slots in
   * use, so many short prompts cost no more gathered stacks than one. `picked` lists each adapter
   * token once: its entry among the groups' entries laid end to end, and the token itself. U = 0
   * when no row uses an adapter.
   */
  private loraGroups(rows: readonly StepRow[]): {
    slots: { gather: Int32Array; n: number };
    byRow: { gather: Int32Array; slots: Int32Array; m: number };
    picked: { entries: Int32Array; tokens: Int32Array };
    U: number;
  } {
    const counts = new Int32Array(this.lora.count);
    const promptCounts = new Int32Array(this.lora.count);
    let U = 0;
    let Tl = 0;
    for (const r of rows) {
      if (r.slot < 0) continue;
      U = Math.max(U, r.slot + 1);
      Tl += r.tokens.length;
      if (r.tokens.length > 1) promptCounts[r.slot] += r.tokens.length;
      else counts[r.slot]++;
    }
    let n = 0;
    let m = 0;
    let G = 0;
    // [slot] its row group, -1 when it has no prompt rows
    const groupOfSlot = new Int32Array(U).fill(-1);
    for (let u = 0; u < U; u++) {
      n = Math.max(n, counts[u]);
      m = Math.max(m, promptCounts[u]);
      if (promptCounts[u] > 0) groupOfSlot[u] = G++;
    }
    const gather = this.buf.gather.view(U * n).fill(0);
    const rowGather = this.buf.rowGather.view(G * m).fill(0);
    const rowSlots = this.buf.rowSlots.view(G);
    const entries = this.buf.pick.view(Tl);
    const tokens = this.buf.pickTokens.view(Tl);
    for (let u = 0; u < U; u++) if (groupOfSlot[u] >= 0) rowSlots[groupOfSlot[u]] = u;
    const fill = new Int32Array(U);
    const rowFill = new Int32Array(G);
    let t = 0;
    let p = 0;
    for (const r of rows) {
      const len = r.tokens.length;
      if (r.slot >= 0 && len > 1) {
        const g = groupOfSlot[r.slot];
        for (let s = 0; s < len; s++) {
          const at = g * m + rowFill[g]++;
          rowGather[at] = t + s;
          entries[p] = U * n + at;
          tokens[p++] = t + s;
        }
      } else if (r.slot >= 0) {
        const at = r.slot * n + fill[r.slot]++;
        gather[at] = t;
        entries[p] = at;
        tokens[p++] = t;
      }
      t += len;
    }
    return { slots: { gather, n }, byRow: { gather: rowGather, slots: rowSlots, m }, picked: { entries, tokens }, U };
  }

  /** The packed tokens of DoRA rows and each one's slot (both empty when no row uses a DoRA adapter). */
  private doraTokens(rows: readonly StepRow[]): { tokens: Int32Array; slots: Int32Array } {
    let n = 0;
    for (const r of rows) if (r.slot >= 0 && this.lora.isDora(r.slot)) n += r.tokens.length;
    const tokens = this.buf.doraTokens.view(n);
    const slots = this.buf.doraSlots.view(n);
    let t = 0;
    let i = 0;
    for (const r of rows) {
      const dora = r.slot >= 0 && this.lora.isDora(r.slot);
      for (let s = 0; s < r.tokens.length; s++, t++) {
        if (!dora) continue;
        tokens[i] = t;
        slots[i++] = r.slot;
      }
    }
    return { tokens, slots };
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
