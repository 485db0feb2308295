/**
 * Independent reference forward pass of a Hugging Face Llama / Mistral / Qwen2 / Qwen3 / Gemma 2 / Gemma 3 decoder with
 * *unmerged* PEFT LoRA adapters, used to check the ONNX implementation numerically.
 *
 * It is written directly from the math (HF LlamaForCausalLM semantics) and deliberately shares
 * nothing with src/: no imports from the implementation, no onnxruntime, no dependencies.
 * Everything is accumulated in Float64; only the returned logits are Float32.
 * Each call is a full causal recompute for positions 0..n-1 (no KV cache across calls).
 */
import type { LoraModule, RefLora, RefModelConfig, RefWeights } from './model-types.js';
import { gemmaLayer, gemmaNorm } from './reference/gemma.js';
import { llamaLayer } from './reference/llama.js';
import { addLora, doraLinear, inverseFrequencies, matVecT, rmsNorm, tensor, type Vec } from './reference/math.js';

const LORA_MODULES: readonly LoraModule[] = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
  'qkv_proj',
  'gate_up_proj',
];

export function referenceLogits(
  cfg: RefModelConfig,
  weights: RefWeights,
  tokenIds: readonly number[],
  lora?: RefLora | null,
): Float32Array[] {
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, vocabSize: V } = cfg;
  if (numHeads % numKvHeads !== 0) throw new Error('reference: numHeads must be a multiple of numKvHeads');
  if (D % 2 !== 0) throw new Error('reference: headDim must be even');

  if (lora) {
    for (const key of lora.keys()) {
      const [layer, mod] = key.split('.');
      const li = Number(layer);
      const known = Number.isInteger(li) && li >= 0 && li < cfg.numLayers && String(li) === layer &&
        (LORA_MODULES as readonly string[]).includes(mod ?? '') && key.split('.').length === 2;
      if (!known) throw new Error(`reference: unexpected LoRA key "${key}"`);
    }
  }

  /** Linear layer with optional bias and optional LoRA for `${layer}.${module}`. */
  const proj = (x: Vec, layer: number, mod: LoraModule, w: Float32Array, outDim: number, inDim: number,
    bias?: Float32Array): Vec => {
    const key = `${layer}.${mod}`;
    const pair = lora?.get(key);
    if (pair?.magnitude) return doraLinear(x, w, pair, key, outDim, inDim, bias);
    const y = matVecT(x, w, outDim, inDim, bias);
    if (pair) addLora(y, x, pair, key, outDim, inDim);
    return y;
  };

  const embed = tensor(weights, 'model.embed_tokens.weight', [V, H]);
  const hs: Vec[] = tokenIds.map((tok) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new Error(`reference: token id ${tok} out of range`);
    const row = Float64Array.from(embed.subarray(tok * H, (tok + 1) * H));
    // Gemma scales its embeddings by √hidden.
    if (cfg.gemma) for (let i = 0; i < H; i++) row[i] *= Math.sqrt(H);
    return row;
  });

  const invFreq = cfg.gemma ? new Float64Array(0) : inverseFrequencies(cfg, tokenIds.length);

  for (let l = 0; l < cfg.numLayers; l++) {
    if (cfg.gemma) gemmaLayer(cfg, weights, l, hs, proj);
    else llamaLayer(cfg, weights, l, hs, proj, invFreq);
  }

  const finalNorm = tensor(weights, 'model.norm.weight', [H]);
  const head = cfg.tieWordEmbeddings ? embed : tensor(weights, 'lm_head.weight', [V, H]);
  const cap = cfg.gemma?.finalSoftcap ?? null;
  return hs.map((h) => {
    const logits = matVecT(cfg.gemma ? gemmaNorm(h, finalNorm, cfg.rmsNormEps) : rmsNorm(h, finalNorm, cfg.rmsNormEps), head, V, H);
    return Float32Array.from(logits, (x) => (cap === null ? x : Math.tanh(x / cap) * cap));
  });
}
