/**
 * Request and response schemas of Anthropic's Messages API (POST /v1/messages and
 * /v1/messages/count_tokens). Content blocks are checked by the conversion (conversation.ts), so
 * a wrong block gets an error naming it rather than a schema message about a union.
 */
import { Type, type Static } from 'typebox';
import { CacheSalt, LoraScale, Nullable } from '../schemas.js';

const Block = Type.Object({ type: Type.String() }, { additionalProperties: true });

export const AnthropicMessage = Type.Object(
  {
    role: Type.Union([Type.Literal('user'), Type.Literal('assistant')]),
    content: Type.Union([Type.String(), Type.Array(Block, { description: 'text, tool_use (assistant), tool_result (user) and thinking (assistant) blocks' })]),
  },
  { additionalProperties: false },
);

/** The fields count_tokens takes: what the prompt is made of. */
const PromptFields = {
  model: Type.String({ description: "the base model's id or an adapter name" }),
  messages: Type.Array(AnthropicMessage, { minItems: 1 }),
  system: Type.Optional(Type.Union([Type.String(), Type.Array(Block, { description: 'text blocks' })])),
  tools: Type.Optional(Type.Array(Type.Any(), { description: 'client tools: {name, description, input_schema}; rendered with the chat template' })),
  tool_choice: Type.Optional(Type.Any({ description: '{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}' })),
  thinking: Type.Optional(
    Type.Any({ description: '{"type": "enabled", "budget_tokens"} (the template thinks), {"type": "disabled"} (it does not), or {"type": "adaptive"} (the template decides); display "omitted" sends thinking blocks without their text' }),
  ),
  output_config: Type.Optional(
    Nullable(
      Type.Object(
        {
          format: Type.Optional(Type.Any({ description: '{"type": "json_schema", "schema"}: the answer is constrained to the schema (thinking is then off)' })),
          effort: Type.Optional(Type.Any({ description: 'refused unless null: the template has thinking on or off only (use thinking)' })),
        },
        { additionalProperties: false },
      ),
    ),
  ),
};

export const MessagesRequest = Type.Object(
  {
    ...PromptFields,
    lora_scale: LoraScale,
    max_tokens: Type.Integer({ minimum: 1, description: 'thinking and answer together' }),
    stop_sequences: Type.Optional(Type.Array(Type.String(), { maxItems: 16 })),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
    top_k: Type.Optional(Type.Integer({ minimum: 0 })),
    stream: Type.Optional(Type.Boolean()),
    metadata: Type.Optional(Type.Object({ user_id: Type.Optional(Nullable(Type.String({ description: 'an end-user id; written to the request log' }))) }, { additionalProperties: false })),
    cache_control: Type.Optional(Type.Any({ description: 'accepted: every prompt prefix is cached without being asked' })),
    service_tier: Type.Optional(Type.String({ description: '"auto" or "standard_only": both are the one tier there is' })),
    cache_salt: CacheSalt,
    container: Type.Optional(Type.Any({ description: 'refused unless null: there are no containers' })),
    mcp_servers: Type.Optional(Type.Any({ description: 'refused unless null or empty: MCP servers are not called' })),
    context_management: Type.Optional(Type.Any({ description: 'refused unless null: the context is never edited' })),
  },
  { $id: 'MessagesRequest', additionalProperties: true },
);
export type MessagesRequest = Static<typeof MessagesRequest>;

export const CountTokensRequest = Type.Object({ ...PromptFields, lora_scale: LoraScale }, { $id: 'CountTokensRequest', additionalProperties: true });
export type CountTokensRequest = Static<typeof CountTokensRequest>;

export const AnthropicErrorBody = Type.Object({ type: Type.Literal('error'), error: Type.Object({ type: Type.String(), message: Type.String() }) }, { $id: 'AnthropicErrorBody' });

export const MessageResponse = Type.Object(
  {
    id: Type.String(),
    type: Type.Literal('message'),
    role: Type.Literal('assistant'),
    model: Type.String(),
    content: Type.Array(Type.Any({ description: 'thinking, text and tool_use blocks' })),
    stop_reason: Nullable(Type.String({ description: 'end_turn, max_tokens, stop_sequence or tool_use' })),
    stop_sequence: Nullable(Type.String()),
    usage: Type.Object({ input_tokens: Type.Integer(), output_tokens: Type.Integer(), cache_read_input_tokens: Type.Integer(), cache_creation_input_tokens: Type.Integer() }, { additionalProperties: true }),
  },
  { $id: 'MessageResponse', additionalProperties: true },
);
