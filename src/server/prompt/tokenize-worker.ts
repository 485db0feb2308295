/**
 * The tokenizer thread (see tokenizer-pool.ts): renders chat templates and tokenizes prompts with
 * the base model's tokenizer, off the HTTP event loop and off the engine thread, at a lower
 * scheduling priority than the engine. Adapters' own chat templates are read from their (immutable)
 * version directories and kept in a small cache.
 */
import { workerData } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { chatTemplateFor, readAdapterChatTemplate } from '../../adapters/peft.js';
import { LoraplexError } from '../../errors.js';
import type { ChatTemplate } from '../../runtime/chat-template.js';
import { TextTokenizer } from '../../runtime/tokenizer.js';
import { lowerThreadPriority, serve, transferring } from '../../util/worker-task.js';
import { IncrementalDetokenizer } from '../../runtime/detokenizer.js';
import { promptOpensThinking } from '../../runtime/reasoning/think-split.js';
import { SAMPLE_CONVERSATIONS, type TokenizerTasks, type TokenPiece } from './tasks.js';

const { modelDir } = workerData as { modelDir: string };
lowerThreadPriority();
const tokenizer = TextTokenizer.load(modelDir);
warmUp();
/** Adapter version directory → its own chat template (null: it has none). */
const templates = new LRUCache<string, { t: ChatTemplate | null }>({ max: 256 });

function adapterTemplate(dir: string): ChatTemplate | null {
  let hit = templates.get(dir);
  if (!hit) templates.set(dir, (hit = { t: readAdapterChatTemplate(dir) }));
  return hit.t;
}

/**
 * Renders and tokenizes a sample conversation before the thread takes tasks (the pool starts no
 * task's budget before then): parsing the template and the tokenizer's first encodes are paid at
 * start-up, not by the first request.
 */
function warmUp(): void {
  if (!tokenizer) return;
  try {
    const text = tokenizer.chatTemplate?.render(SAMPLE_CONVERSATIONS[0], { addGenerationPrompt: true }) ?? 'Hello, world.';
    tokenizer.encode(text, false);
  } catch {
    // A template that cannot render the sample fails the requests that use it, with their own error.
  }
}

function need(): TextTokenizer {
  if (!tokenizer) throw new LoraplexError('no_tokenizer', 'this model has no tokenizer.json: send token ids', { param: 'prompt' });
  return tokenizer;
}

function ids(values: number[]) {
  const out = Int32Array.from(values);
  return transferring(out, [out.buffer as ArrayBuffer]);
}

serve<TokenizerTasks>({
  info: () => ({ hasTokenizer: tokenizer !== null, hasChatTemplate: tokenizer?.chatTemplate != null, maxTokenBytes: tokenizer?.maxTokenBytes ?? 1 }),
  text: (t) => ids(need().encode(t.text, t.addSpecialTokens)),
  chat: (t) => {
    const tok = need();
    const template = chatTemplateFor(tok, t.adapterDir, adapterTemplate);
    if (!template) {
      throw new LoraplexError('no_chat_template', 'this model has no chat template (tokenizer_config.json chat_template); use the completions API', { param: 'messages' });
    }
    const text = template.render(t.messages, { addGenerationPrompt: t.addGenerationPrompt, tools: t.tools, extra: t.templateKwargs });
    const out = Int32Array.from(tok.encode(text, false));
    const reasoning = { templateThinks: template.thinks(), insideThinking: promptOpensThinking(text) };
    return transferring({ ids: out, toolCallFormat: template.toolCallFormat(), reasoning }, [out.buffer as ArrayBuffer]);
  },
  decode: (t) => need().decode(t.ids, t.skipSpecialTokens),
  pieces: (t) => {
    const tok = need();
    const detok = new IncrementalDetokenizer(tok);
    const out: TokenPiece[] = [];
    let at = 0;
    for (const id of t.ids) {
      const piece = detok.push(id);
      out.push({ id, text: tok.decode([id], false), start: at, stop: at + piece.length });
      at += piece.length;
    }
    return out;
  },
  checkTemplate: (t) => {
    // Parses the adapter's template, then renders sample conversations: it must render one.
    const template = readAdapterChatTemplate(t.adapterDir);
    if (!template) return false;
    let last: unknown = null;
    for (const messages of SAMPLE_CONVERSATIONS) {
      try {
        template.render(messages, { addGenerationPrompt: true });
        return true;
      } catch (err) {
        last = err;
      }
    }
    throw new LoraplexError('adapter_invalid', `tokenizer_config.json: the chat template renders none of the sample conversations: ${(last as Error).message}`, { param: 'tokenizer_config' });
  },
});
