/**
 * Chat templates from tokenizer_config.json, rendered with @huggingface/jinja and the variables real
 * templates use: messages, add_generation_prompt, bos_token, eos_token (and the other special
 * tokens) and tools; the library provides raise_exception and strftime_now. The rendered text already holds the template's special tokens,
 * so it is tokenized without adding BOS again (as transformers' apply_chat_template does).
 */
import { Template } from '@huggingface/jinja';
import { LoraplexError } from '../errors.js';
import { templateThinks } from './reasoning/think-split.js';
import { detectToolCallFormat, type ToolCallFormat } from './tool-calls/format.js';

export interface ChatMessage {
  role: string;
  content: string | null;
  name?: string;
  tool_calls?: unknown;
  tool_call_id?: string;
  /** An assistant turn's thinking (templates that show thinking render it; Qwen3's for the turns after the last user message). */
  reasoning_content?: string;
}

/** The chat template rejected the messages (raise_exception, or a rendering error): the client's. */
export class ChatTemplateError extends LoraplexError {
  constructor(message: string, param: string | null = 'messages') {
    super('chat_template_error', message, { param });
  }
}

/** A tokenizer_config.json whose chat_template cannot be used: the checkpoint's or the adapter's. */
export class TemplateInvalidError extends LoraplexError {
  constructor(message: string) {
    super('checkpoint_invalid', message);
  }
}

/** A special-token value in tokenizer_config.json: a string or an AddedToken object. */
export function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export class ChatTemplate {
  private readonly templates: Map<string, Template>;
  private readonly sources: Map<string, string>;
  private readonly specials: Record<string, string>;

  private constructor(templates: Map<string, Template>, sources: Map<string, string>, specials: Record<string, string>) {
    this.templates = templates;
    this.sources = sources;
    this.specials = specials;
  }

  /** The template of a tokenizer_config.json object, or null when it has none. */
  static fromTokenizerConfig(cfg: Record<string, unknown>, source = 'tokenizer_config.json'): ChatTemplate | null {
    const raw = cfg.chat_template;
    if (raw == null) return null;
    const entries: [string, string][] = [];
    if (typeof raw === 'string') {
      entries.push(['default', raw]);
    } else if (Array.isArray(raw)) {
      for (const t of raw as { name?: unknown; template?: unknown }[]) {
        if (typeof t?.name === 'string' && typeof t.template === 'string') entries.push([t.name, t.template]);
      }
    }
    if (entries.length === 0) throw new TemplateInvalidError(`${source}: chat_template must be a string or a list of {name, template}`);
    const templates = new Map<string, Template>();
    for (const [name, text] of entries) {
      try {
        templates.set(name, new Template(text));
      } catch (err) {
        throw new TemplateInvalidError(`${source}: chat template ${JSON.stringify(name)} does not parse: ${(err as Error).message}`);
      }
    }
    const specials: Record<string, string> = {};
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const t = tokenText(cfg[key]);
      if (t !== null) specials[key] = t;
    }
    return new ChatTemplate(templates, new Map(entries), specials);
  }

  /**
   * Renders messages to the prompt text. `extra` are further template variables (vLLM's
   * chat_template_kwargs, e.g. Qwen3's enable_thinking); they cannot replace the ones above.
   */
  render(messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean; tools?: unknown[] | null; extra?: Record<string, unknown> | null } = {}): string {
    const tools = opts.tools && opts.tools.length > 0 ? opts.tools : null;
    const template = this.templates.get(this.pick(tools !== null))!;
    try {
      return template.render({
        ...opts.extra,
        ...this.specials,
        messages,
        add_generation_prompt: opts.addGenerationPrompt ?? true,
        tools,
      });
    } catch (err) {
      // raise_exception (provided by the library) and rendering errors both mean these messages
      // do not fit the template: a client error.
      throw new ChatTemplateError(`the chat template rejected these messages: ${(err as Error).message}`);
    }
  }

  /** The template writes thinking blocks (`<think>`): its model's answers are split into reasoning and answer. */
  thinks(): boolean {
    return templateThinks(this.sources.get(this.pick(false))!) || templateThinks(this.sources.get(this.pick(true))!);
  }

  /** The tool-call format the template renders tools for (see tool-calls/format.ts), or null. */
  toolCallFormat(): ToolCallFormat | null {
    return detectToolCallFormat(this.sources.get(this.pick(true))!);
  }

  /** The template used: `tool_use` when there are tools and it exists, else `default`, else the first. */
  private pick(tools: boolean): string {
    if (tools && this.templates.has('tool_use')) return 'tool_use';
    return this.templates.has('default') ? 'default' : this.templates.keys().next().value!;
  }
}
