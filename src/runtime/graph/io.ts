/**
 * Names and meaning of the decoder graph's inputs and outputs: the contract between the graph
 * builder and the runtime that feeds it. All index inputs are int32.
 *
 * A step packs the new tokens of B rows into T tokens (row-major: row 0's tokens, then row 1's, ...).
 * Attention runs per group of rows (ATTENTION_GROUPS): the decode rows (one new token each) and the
 * prompt rows (more), so a prompt chunk does not pad every decode row to its length. Each group g
 * has a padded [Bg, Sg] view of its queries (Sg = its longest row's new tokens, at least 2) against
 * each of its rows' keys laid out by position: [Bg, Wg] slots, slot j holding the key at position j
 * (the row's past from the token pool, then this step's keys), Wg = the group's longest row. A
 * group with no rows in the step gets one placeholder row (onnxruntime's Attention refuses a batch
 * of 0): no new tokens, one null key, and no packed token reads its outputs.
 *
 * Batch invariance: a row's logits do not depend on the other rows of its step, bit for bit. Its
 * keys sit at the same slots whatever Wg is (padding only follows them), and Sg >= 2 keeps the
 * attention products off onnxruntime's one-row GEMV kernel, which rounds differently from the tiled
 * kernel a longer step takes.
 */

/** The attention groups, in the order their outputs are concatenated (see unpad_index). */
export const ATTENTION_GROUPS = ['decode', 'prompt'] as const;
export type AttentionGroupName = (typeof ATTENTION_GROUPS)[number];

/** The per-step inputs of one attention group. */
export function attentionInputs(group: AttentionGroupName): {
  /** [Bg, Sg] packed token index for each padded query slot (padding: one of the row's own tokens, or any token for the placeholder; its output is dropped) */
  padIndex: string;
  /** [Bg, Wg] pool index of the key at each position of each row: its past tokens, then the null block (all zeros; masked where no key of this step overwrites it). */
  kvIndex: string;
  /** [Tg, 2] (row in the group, position) of each of the group's new tokens: the key slot its new key and value go to. */
  kvNewSlot: string;
  /** [Tg] the packed index of each of the group's new tokens (row-major, as kv_new_slot lists them). */
  newTokens: string;
  /** [Bg] number of past tokens of each row */
  pastLen: string;
} {
  return {
    padIndex: `pad_index.${group}`,
    kvIndex: `kv_index.${group}`,
    kvNewSlot: `kv_new_slot.${group}`,
    newTokens: `new_tokens.${group}`,
    pastLen: `past_len.${group}`,
  };
}

export const IO = {
  /** [T] token ids */
  inputIds: 'input_ids',
  /** [T] absolute position of each token (rotary) */
  positionIds: 'position_ids',
  /**
   * [T] index of each packed token's attention output in the concatenation of the groups' padded
   * outputs, group after group in ATTENTION_GROUPS order: offset(g) + b·Sg + s.
   */
  unpadIndex: 'unpad_index',
  /** [L] packed tokens whose logits are computed */
  logitsIndex: 'logits_index',
  /**
   * [U, n] packed token index each adapter-slot group entry gathers; padding = 0 (its delta is
   * never picked). U = number of slots fed, n = the largest group.
   */
  loraGather: 'lora_gather',
  /**
   * [G, m] packed token index each row-group entry gathers: the prompt rows (more than one new
   * token) of one adapter slot, so a long prompt chunk does not pad every slot group to its length;
   * padding = 0. G = slots with prompt rows in the step, m = the most prompt tokens of one slot.
   */
  loraRowGather: 'lora_row_gather',
  /** [G] the adapter slot of each row group (an index into the stacks fed). */
  loraRowSlots: 'lora_row_slots',
  /**
   * [Tl] for each token of a row with an adapter, its entry among the groups' entries laid end to
   * end: slot group u's entry i is u·n + i, row group g's entry j is U·n + g·m + j.
   */
  loraPick: 'lora_pick',
  /** [Tl] the packed token each picked delta adds to (each token at most once). */
  loraTokens: 'lora_tokens',
  /** [Td] the packed tokens of the rows whose adapter is DoRA (Td = 0: none in this step). */
  doraTokens: 'dora_tokens',
  /** [Td] the adapter slot of each of those tokens. */
  doraTokenSlots: 'dora_token_slots',
  /** [L, vocab] float32 */
  logits: 'logits',
} as const;

/** [poolTokens, kvHeads*headDim]: the key cache pool of layer l. */
export const pastKey = (l: number): string => `past_key.${l}`;
export const pastValue = (l: number): string => `past_value.${l}`;
/** [T, kvHeads*headDim]: the post-rotary keys of this step's tokens, to be written into the pool. */
export const newKey = (l: number): string => `new_key.${l}`;
export const newValue = (l: number): string => `new_value.${l}`;
/** [U, in, R] and [U, R, out]: the LoRA stacks of slots 0..U-1 (scale folded into B). */
export const loraA = (l: number, module: string): string => `lora.${l}.${module}.a`;
export const loraB = (l: number, module: string): string => `lora.${l}.${module}.b`;
/** [U, out]: the DoRA scales minus one of slots 0..U-1 (0 for plain LoRA); the graph reads the rows of dora_token_slots. */
export const loraDora = (l: number, module: string): string => `lora.${l}.${module}.dora`;
