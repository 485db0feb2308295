/**
 * Wire types of the HTTP API (TypeBox): they validate requests, serialize responses and generate
 * openapi/openapi.json. Ranges that depend on the model (vocabulary, context) are checked later.
 */
import { Type, type Static } from 'typebox';

export const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);

export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      message: Type.String(),
      type: Type.String(),
      param: Nullable(Type.String()),
      code: Nullable(Type.String()),
    }),
    message: Type.Optional(Type.String({ description: 'the message again, at the top level (as vLLM sends it)' })),
  },
  { $id: 'Error', description: "OpenAI's error shape" },
);

export const TgiErrorBody = Type.Object({ error: Type.String(), error_type: Type.String() }, { $id: 'TgiError', description: "TGI's error shape" });

const Stop = Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 16 })], { description: 'up to 16 stop strings, not included in the output' });

export const MergedAdapters = Type.Object(
  {
    ids: Type.Array(Type.String(), { minItems: 1, maxItems: 16 }),
    weights: Type.Array(Type.Number(), { minItems: 1, maxItems: 16 }),
    merge_strategy: Type.Optional(Type.String({ description: '"linear" (default), "ties", "dare_linear", "dare_ties" or "magnitude_prune"' })),
    density: Type.Optional(Type.Number({ description: 'ties / dare / magnitude_prune: the fraction of each adapter\'s weights kept, in (0, 1] (required there)' })),
    majority_sign_method: Type.Optional(Type.String({ description: 'ties / dare_ties: "total" (default) or "frequency"' })),
  },
  { description: "LoRAX-style combination of adapters: linear (Σ wᵢ·ΔWᵢ, served as one adapter of rank Σ rᵢ) or a TIES / DARE merge as PEFT's add_weighted_adapter makes it (the adapters' common rank)" },
);

/** Longest cache_salt accepted (vLLM suggests 43 characters: 256 random bits in base64). */
export const MAX_CACHE_SALT_LENGTH = 256;

export const LoraScale = Type.Optional(
  Nullable(Type.Number({ minimum: -100, maximum: 100, description: "vLLM: the adapter's update scaled by this factor (served as a one-adapter weighted combination, with its own prefix-cache identity); 1 = the adapter as trained" })),
);

export const CacheSalt = Type.Optional(
  Nullable(
    Type.String({
      minLength: 1,
      maxLength: MAX_CACHE_SALT_LENGTH,
      description: "vLLM: only requests with the same cache_salt (and, with API keys, the same key) share cached prompt prefixes; keep it secret and long enough that it cannot be guessed",
    }),
  ),
);

/** Sampling fields shared by chat and completions (OpenAI names, plus vLLM/TGI extras). */
const SamplingFields = {
  max_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
  temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2 }))),
  top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
  n: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: 16 }))),
  stream: Type.Optional(Nullable(Type.Boolean())),
  stream_options: Type.Optional(Nullable(Type.Object({ include_usage: Type.Optional(Nullable(Type.Boolean())) }))),
  stop: Type.Optional(Nullable(Stop)),
  seed: Type.Optional(Nullable(Type.Integer())),
  presence_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
  frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
  logit_bias: Type.Optional(Nullable(Type.Record(Type.String(), Type.Number({ minimum: -100, maximum: 100 })))),
  user: Type.Optional(Type.String({ description: 'an end-user id; written to the request log' })),
  cache_salt: CacheSalt,
  min_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 0, description: "vLLM: tokens to generate before EOS, stop_token_ids or stop strings may end the answer" }))),
  truncate_prompt_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, description: 'vLLM: keep only the last N prompt tokens' }))),
  top_k: Type.Optional(Nullable(Type.Integer({ minimum: -1 }))),
  min_p: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 1 }))),
  repetition_penalty: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 10 }))),
  stop_token_ids: Type.Optional(Nullable(Type.Array(Type.Integer({ minimum: 0 }), { maxItems: 64 }))),
  ignore_eos: Type.Optional(Nullable(Type.Boolean())),
  adapter_id: Type.Optional(Nullable(Type.String({ description: 'LoRAX-style adapter choice; overrides model' }))),
  merged_adapters: Type.Optional(Nullable(MergedAdapters)),
  lora_scale: LoraScale,
  response_format: Type.Optional(Nullable(Type.Any({ description: '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}: the output is constrained to it (XGrammar)' }))),
  guided_json: Type.Optional(Nullable(Type.Any({ description: 'vLLM: constrain the output to this JSON schema' }))),
  guided_regex: Type.Optional(Nullable(Type.String({ description: 'vLLM: constrain the output to this regular expression' }))),
  guided_choice: Type.Optional(Nullable(Type.Array(Type.String(), { description: 'vLLM: the output is exactly one of these strings' }))),
  guided_grammar: Type.Optional(Nullable(Type.String({ description: "vLLM: constrain the output to this EBNF grammar (XGrammar's dialect; start rule root)" }))),
  guided_decoding_backend: Type.Optional(Nullable(Type.String({ description: 'vLLM: "xgrammar" or "auto" (the only backend)' }))),
  structured_outputs: Type.Optional(Nullable(Type.Any({ description: 'vLLM: {json | json_object | regex | choice | grammar, backend}' }))),
};

const ContentPart = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) }, { additionalProperties: true });

export const ChatMessageSchema = Type.Object(
  {
    role: Type.String({ minLength: 1 }),
    content: Type.Optional(Nullable(Type.Union([Type.String(), Type.Array(ContentPart)]))),
    name: Type.Optional(Type.String()),
    tool_calls: Type.Optional(Type.Array(Type.Any())),
    tool_call_id: Type.Optional(Type.String()),
    reasoning_content: Type.Optional(Nullable(Type.String({ description: "an assistant turn's thinking, as this server returns it: rendered where the chat template shows thinking" }))),
    reasoning: Type.Optional(Nullable(Type.String({ description: 'the same under vLLM\'s name' }))),
  },
  { additionalProperties: true },
);

export const ChatCompletionRequest = Type.Object(
  {
    model: Type.String({ description: "the base model's id (no adapter) or an adapter name" }),
    messages: Type.Array(ChatMessageSchema, { minItems: 1 }),
    max_completion_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    logprobs: Type.Optional(Nullable(Type.Boolean())),
    top_logprobs: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: 20 }))),
    tools: Type.Optional(Nullable(Type.Array(Type.Any()))),
    tool_choice: Type.Optional(Type.Any({ description: '"auto" (default with tools: the model decides; calls are parsed into message.tool_calls), "none" (the tools are not rendered), "required" or {"type": "function", "function": {"name"}} (a call is enforced by a grammar built from the parameter schemas)' })),
    parallel_tool_calls: Type.Optional(Nullable(Type.Boolean({ description: 'true (default); false: at most one call, enforced by a grammar' }))),
    add_generation_prompt: Type.Optional(Type.Boolean()),
    chat_template_kwargs: Type.Optional(Nullable(Type.Record(Type.String(), Type.Any(), { description: "vLLM: extra variables for the chat template (e.g. Qwen3's enable_thinking)" }))),
    ...SamplingFields,
  },
  { $id: 'ChatCompletionRequest', additionalProperties: true },
);
export type ChatCompletionRequest = Static<typeof ChatCompletionRequest>;

export const CompletionRequest = Type.Object(
  {
    model: Type.String(),
    prompt: Type.Union([
      Type.String(),
      Type.Array(Type.String(), { minItems: 1 }),
      Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }),
      Type.Array(Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 }), { minItems: 1 }),
    ]),
    logprobs: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: 20 }))),
    echo: Type.Optional(Nullable(Type.Boolean())),
    suffix: Type.Optional(Nullable(Type.String())),
    best_of: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    ...SamplingFields,
  },
  { $id: 'CompletionRequest', additionalProperties: true },
);
export type CompletionRequest = Static<typeof CompletionRequest>;

const Usage = Type.Object({
  prompt_tokens: Type.Integer(),
  completion_tokens: Type.Integer(),
  total_tokens: Type.Integer(),
  prompt_tokens_details: Type.Object({ cached_tokens: Type.Integer({ description: 'prompt tokens whose KV came from the prefix cache' }) }),
  completion_tokens_details: Type.Optional(Type.Object({ reasoning_tokens: Type.Integer({ description: 'tokens of thinking (opening tag to closing tag) when the answer was split (--reasoning-parser)' }) })),
});

const TopLogprob = Type.Object({ token: Type.String(), logprob: Type.Number(), bytes: Nullable(Type.Array(Type.Integer())) });
const ChatLogprobs = Type.Object({
  content: Nullable(Type.Array(Type.Object({ token: Type.String(), logprob: Type.Number(), bytes: Nullable(Type.Array(Type.Integer())), top_logprobs: Type.Array(TopLogprob) }))),
});

export const ChatCompletionResponse = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('chat.completion'),
    created: Type.Integer(),
    model: Type.String(),
    choices: Type.Array(
      Type.Object({
        index: Type.Integer(),
        message: Type.Object({
          role: Type.Literal('assistant'),
          content: Nullable(Type.String()),
          tool_calls: Type.Optional(Type.Array(Type.Object({ id: Type.String(), type: Type.Literal('function'), function: Type.Object({ name: Type.String(), arguments: Type.String({ description: 'the arguments as a JSON object in a string' }) }) }))),
          reasoning_content: Type.Optional(Nullable(Type.String({ description: "a reasoning model's thinking (<think>…</think>), split from content (llama.cpp's and DeepSeek's name)" }))),
          reasoning: Type.Optional(Nullable(Type.String({ description: 'the same text under vLLM\'s name' }))),
        }),
        logprobs: Nullable(ChatLogprobs),
        finish_reason: Nullable(Type.String()),
      }),
    ),
    usage: Usage,
    system_fingerprint: Nullable(Type.String()),
  },
  { $id: 'ChatCompletionResponse' },
);

const CompletionLogprobs = Type.Object({
  tokens: Type.Array(Type.String()),
  token_logprobs: Type.Array(Nullable(Type.Number())),
  top_logprobs: Nullable(Type.Array(Nullable(Type.Record(Type.String(), Type.Number())))),
  text_offset: Type.Array(Type.Integer()),
});

export const CompletionResponse = Type.Object(
  {
    id: Type.String(),
    object: Type.Literal('text_completion'),
    created: Type.Integer(),
    model: Type.String(),
    choices: Type.Array(Type.Object({ index: Type.Integer(), text: Type.String(), logprobs: Nullable(CompletionLogprobs), finish_reason: Nullable(Type.String()) })),
    usage: Usage,
    system_fingerprint: Nullable(Type.String()),
  },
  { $id: 'CompletionResponse' },
);

export const ModelCard = Type.Object({
  id: Type.String(),
  object: Type.Literal('model'),
  created: Type.Integer(),
  owned_by: Type.String(),
  root: Nullable(Type.String()),
  parent: Nullable(Type.String()),
  max_model_len: Type.Optional(Type.Integer()),
  digest: Type.Optional(Type.String({ description: "adapters: sha256 of the version's files" })),
});

export const ModelList = Type.Object({ object: Type.Literal('list'), data: Type.Array(ModelCard) }, { $id: 'ModelList' });

// ---- LoRAX / TGI

export const TgiParameters = Type.Object(
  {
    adapter_id: Type.Optional(Nullable(Type.String())),
    adapter_source: Type.Optional(Nullable(Type.String())),
    merged_adapters: Type.Optional(Nullable(MergedAdapters)),
    /** merged_adapters under the LoRAX client's name (one id with a weight scales that adapter). */
    adapter_parameters: Type.Optional(Nullable(MergedAdapters)),
    lora_scale: LoraScale,
    max_new_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 100 }))),
    top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
    top_k: Type.Optional(Nullable(Type.Integer({ minimum: 0 }))),
    repetition_penalty: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 10 }))),
    stop: Type.Optional(Nullable(Type.Array(Type.String(), { maxItems: 16 }))),
    seed: Type.Optional(Nullable(Type.Integer({ minimum: 0 }))),
    do_sample: Type.Optional(Nullable(Type.Boolean())),
    details: Type.Optional(Nullable(Type.Boolean())),
    return_full_text: Type.Optional(Nullable(Type.Boolean())),
    decoder_input_details: Type.Optional(Nullable(Type.Boolean({ description: 'return the prompt tokens with their logprobs in details.prefill (prompts up to 128 tokens)' }))),
    top_n_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: 20, description: 'return the n most likely tokens at each step (details.top_tokens, stream top_tokens)' }))),
    truncate: Type.Optional(Nullable(Type.Integer({ minimum: 1, description: 'keep only the last N prompt tokens' }))),
    best_of: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: 8, description: 'sample this many sequences and return the most likely (needs sampling; not with streaming)' }))),
    frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    typical_p: Type.Optional(Nullable(Type.Number({ description: 'typical sampling is not supported: refused unless null or 1' }))),
    watermark: Type.Optional(Nullable(Type.Boolean({ description: 'not supported: refused when true' }))),
    grammar: Type.Optional(Nullable(Type.Any({ description: '{"type": "json", "value": <JSON schema>} or {"type": "regex", "value": <pattern>}: the output is constrained to it' }))),
    response_format: Type.Optional(Nullable(Type.Any({ description: 'LoRAX: {"type": "json_object", "schema": <JSON schema>} (or OpenAI\'s shapes)' }))),
    cache_salt: CacheSalt,
  },
  { additionalProperties: true },
);

export const GenerateRequest = Type.Object(
  { inputs: Type.String(), parameters: Type.Optional(Nullable(TgiParameters)), stream: Type.Optional(Type.Boolean()) },
  { $id: 'GenerateRequest', additionalProperties: true },
);
export type GenerateRequest = Static<typeof GenerateRequest>;

const TgiToken = Type.Object({ id: Type.Integer(), text: Type.String(), logprob: Nullable(Type.Number()), special: Type.Boolean() });

const TgiPrefillToken = Type.Object({ id: Type.Integer(), text: Type.String(), logprob: Nullable(Type.Number()) });

const tgiSequenceDetails = {
  finish_reason: Type.String(),
  generated_tokens: Type.Integer(),
  seed: Nullable(Type.Integer()),
  prefill: Type.Array(TgiPrefillToken),
  tokens: Type.Array(TgiToken),
  top_tokens: Type.Optional(Type.Array(Type.Array(TgiToken))),
};

export const GenerateResponse = Type.Object(
  {
    generated_text: Type.String(),
    details: Type.Optional(
      Nullable(
        Type.Object({
          ...tgiSequenceDetails,
          best_of_sequences: Type.Optional(Type.Array(Type.Object({ generated_text: Type.String(), ...tgiSequenceDetails }))),
        }),
      ),
    ),
  },
  { $id: 'GenerateResponse' },
);

// ---- OpenAI Responses

const ResponseInputContent = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()) }, { additionalProperties: true });

export const ResponseInputItem = Type.Object(
  {
    type: Type.Optional(Type.String({ description: 'message (default), function_call, function_call_output or reasoning (its text is the thinking of the assistant turn that follows)' })),
    role: Type.Optional(Type.String()),
    content: Type.Optional(Type.Union([Type.String(), Type.Array(ResponseInputContent)])),
    call_id: Type.Optional(Type.String()),
    name: Type.Optional(Type.String()),
    arguments: Type.Optional(Type.String()),
    output: Type.Optional(Type.Union([Type.String(), Type.Array(ResponseInputContent)])),
    summary: Type.Optional(Type.Array(ResponseInputContent, { description: "a reasoning item's summary_text parts (its text is used when it has no reasoning_text content)" })),
    encrypted_content: Type.Optional(Nullable(Type.String({ description: 'refused unless null: reasoning is never encrypted here' }))),
    id: Type.Optional(Type.String()),
    status: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);

export const ResponsesRequest = Type.Object(
  {
    model: Type.String({ description: "the base model's id (no adapter) or an adapter name" }),
    lora_scale: LoraScale,
    input: Type.Union([Type.String(), Type.Array(ResponseInputItem, { minItems: 1 })]),
    instructions: Type.Optional(Nullable(Type.String({ description: 'a system message in front of the input' }))),
    max_output_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2 }))),
    top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
    stream: Type.Optional(Nullable(Type.Boolean())),
    store: Type.Optional(Nullable(Type.Boolean({ description: 'responses are not stored: false or absent' }))),
    previous_response_id: Type.Optional(Nullable(Type.String({ description: 'refused: responses are not stored' }))),
    tools: Type.Optional(Nullable(Type.Array(Type.Any(), { description: 'function tools, rendered with the chat template' }))),
    tool_choice: Type.Optional(Type.Any({ description: '"auto" (default with tools), "none", "required" or {"type": "function", "name"}: as on chat completions' })),
    parallel_tool_calls: Type.Optional(Nullable(Type.Boolean({ description: 'true (default); false: at most one call' }))),
    text: Type.Optional(Nullable(Type.Object({ format: Type.Optional(Type.Any()), verbosity: Type.Optional(Nullable(Type.String())) }, { additionalProperties: true }))),
    reasoning: Type.Optional(
      Nullable(
        Type.Object(
          {
            effort: Type.Optional(Nullable(Type.Union(['none', 'minimal', 'low', 'medium', 'high', 'xhigh'].map((e) => Type.Literal(e)), { description: 'none or minimal: thinking off (enable_thinking: false); low, medium, high or xhigh: thinking on (the template has no finer level); refused when the model does not think' }))),
            summary: Type.Optional(Nullable(Type.Union(['auto', 'concise', 'detailed'].map((e) => Type.Literal(e)), { description: 'accepted: the reasoning item always carries its text as one summary_text part too (the whole thinking: there is no separate summarizer)' }))),
            generate_summary: Type.Optional(Nullable(Type.Union(['auto', 'concise', 'detailed'].map((e) => Type.Literal(e)), { description: 'the older name of summary' }))),
          },
          { additionalProperties: false },
        ),
      ),
    ),
    truncation: Type.Optional(Nullable(Type.String({ description: '"disabled" (default); "auto" is refused' }))),
    metadata: Type.Optional(Nullable(Type.Record(Type.String(), Type.String(), { description: 'returned with the response' }))),
    user: Type.Optional(Type.String({ description: 'an end-user id; written to the request log' })),
    cache_salt: CacheSalt,
    include: Type.Optional(Nullable(Type.Array(Type.String(), { description: 'nothing extra can be included: refused unless empty' }))),
  },
  { $id: 'ResponsesRequest', additionalProperties: true },
);
export type ResponsesRequest = Static<typeof ResponsesRequest>;

export const TokenizeRequest = Type.Object(
  {
    model: Type.Optional(Type.String()),
    prompt: Type.Optional(Type.String()),
    messages: Type.Optional(Type.Array(ChatMessageSchema, { minItems: 1 })),
    add_generation_prompt: Type.Optional(Type.Boolean()),
    add_special_tokens: Type.Optional(Type.Boolean()),
    tools: Type.Optional(Nullable(Type.Array(Type.Any()))),
    chat_template_kwargs: Type.Optional(Nullable(Type.Record(Type.String(), Type.Any()))),
    return_token_strs: Type.Optional(Nullable(Type.Boolean())),
    inputs: Type.Optional(Type.String({ description: "TGI's form: the text to tokenize" })),
    parameters: Type.Optional(Nullable(Type.Object({ adapter_id: Type.Optional(Nullable(Type.String())) }, { additionalProperties: true }))),
  },
  { $id: 'TokenizeRequest', additionalProperties: true, description: "vLLM's form ({model, prompt | messages}) or TGI's ({inputs, parameters})" },
);
export type TokenizeRequest = Static<typeof TokenizeRequest>;

export const DetokenizeRequest = Type.Object({ model: Type.String(), tokens: Type.Array(Type.Integer({ minimum: 0 }), { maxItems: 1_000_000 }) }, { $id: 'DetokenizeRequest', additionalProperties: true });

// ---- admin

export const AdapterInfo = Type.Object(
  {
    name: Type.String(),
    digest: Type.String({ description: "sha256 of the adapter version's files: its identity" }),
    source: Type.String({ description: 'upload (a version uploaded through this API), directory (laid out in the store on disk) or path (load_lora_adapter)' }),
    rank: Type.Integer(),
    lora_alpha: Type.Number(),
    use_rslora: Type.Boolean(),
    target_modules: Type.Array(Type.String()),
    bytes: Type.Integer({ description: 'memory the factors take when loaded (float32)' }),
    base_model_name_or_path: Nullable(Type.String()),
    created: Type.Integer(),
    status: Type.Optional(Type.String({ description: 'running, waiting or idle' })),
  },
  { $id: 'AdapterInfo' },
);

export const LoadLoraRequest = Type.Object({ lora_name: Type.String(), lora_path: Type.String() }, { additionalProperties: true });
export const UnloadLoraRequest = Type.Object({ lora_name: Type.String() }, { additionalProperties: true });
