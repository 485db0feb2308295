/**
 * Rows under a grammar: the grammar thread that computes their token masks (started on the first
 * constrained request), the masks a step waits for, and the rows whose masks came late.
 *
 * Masks are computed during the forward pass. A step waits for them at most a short grace after the
 * pass; a row whose mask is still late is parked: it sits out the next steps (so its grammar never
 * holds back the other rows) and samples from its saved logits when the mask arrives. A mask that
 * never comes in time fails the row: the grammar host bounds each mask's CPU time.
 */
import { LoraplexError } from '../errors.js';
import type { GrammarSpec } from '../runtime/grammar/compiler.js';
import type { GrammarHost, GrammarHostStats, MaskReply } from './grammar-host.js';
import type { PlannedRow, SchedulerState } from './state.js';

/** A constrained row whose mask was late: its logits wait for the mask. */
export interface ParkedRow {
  row: PlannedRow;
  logits: Float32Array;
  reply: MaskReply | null;
}

/** A mask asked for in this step: its promise, and the reply once it has come. */
export interface PendingMask {
  promise: Promise<MaskReply>;
  reply: MaskReply | null;
}

/** How long a step waits for masks still being computed when its forward pass ends: a quarter of the pass, within bounds. */
const maskGraceMs = (forwardMs: number): number => Math.min(50, Math.max(2, forwardMs / 4));

export class ConstrainedRows {
  private readonly start: (() => GrammarHost) | null;
  private host: GrammarHost | null = null;
  private readonly parked = new Map<number, ParkedRow>();
  private readonly state: SchedulerState;
  private readonly wake: () => void;
  /** Constrained rows that sat out a step because their mask was late. */
  lateMasks = 0;

  /** `start` starts the grammar thread; null: constrained decoding is refused. */
  constructor(start: (() => GrammarHost) | null, state: SchedulerState, wake: () => void) {
    this.start = start;
    this.state = state;
    this.wake = wake;
  }

  /** The grammar thread, started now if needed; throws `invalid_grammar` when there can be none. */
  grammar(): GrammarHost {
    if (!this.host) {
      if (!this.start) throw new LoraplexError('invalid_grammar', 'constrained decoding needs the model\'s tokenizer.json', { param: 'response_format' });
      this.host = this.start();
    }
    return this.host;
  }

  /** Compiles a grammar on the grammar thread (cached); rejects with `invalid_grammar` naming what it refuses. */
  compile(spec: GrammarSpec, owner: string | null): Promise<void> {
    try {
      return this.grammar().compile(spec, owner);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** The masks of this step's sampling rows that have a grammar, by request id. */
  ask(rows: PlannedRow[]): Map<number, PendingMask> {
    const out = new Map<number, PendingMask>();
    const host = this.host;
    if (!host) return out;
    for (const row of rows) {
      if (!row.sample || !host.has(row.job.id)) continue;
      const pending: PendingMask = { promise: host.next(row.job.id), reply: null };
      void pending.promise.then((reply) => (pending.reply = reply));
      out.set(row.job.id, pending);
    }
    return out;
  }

  /** Waits for the masks still being computed, at most a short grace after the forward pass. */
  async grace(pending: Iterable<PendingMask>, forwardMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve) => (timer = setTimeout(resolve, maskGraceMs(forwardMs))));
    await Promise.race([Promise.all([...pending].map((p) => p.promise)), wait]);
    clearTimeout(timer);
  }

  /** Parks a row whose mask is late, with a copy of its logits. */
  park(row: PlannedRow, logits: Float32Array, reply: Promise<MaskReply>): void {
    const id = row.job.id;
    const parked: ParkedRow = { row, logits: logits.slice(), reply: null };
    this.parked.set(id, parked);
    this.state.hold(id);
    this.lateMasks++;
    void reply.then((r) => {
      parked.reply = r;
      this.wake();
    });
  }

  /** The parked rows whose masks have arrived; they rejoin the plan. */
  arrived(): (ParkedRow & { reply: MaskReply })[] {
    const out: (ParkedRow & { reply: MaskReply })[] = [];
    for (const [id, parked] of this.parked) {
      if (!parked.reply) continue;
      this.parked.delete(id);
      this.state.unhold(id);
      out.push(parked as ParkedRow & { reply: MaskReply });
    }
    return out;
  }

  /** The row sampled `token` (its grammar advances). */
  accept(id: number, token: number): void {
    this.host?.accept(id, token);
  }

  /** The request is gone: its grammar state and parked row are dropped. */
  close(id: number): void {
    this.parked.delete(id);
    this.host?.close(id);
  }

  stats(): GrammarHostStats | null {
    return this.host?.stats() ?? null;
  }
}
