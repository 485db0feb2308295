/**
 * Every inference route — OpenAI chat and completions, the Responses API, TGI's /generate,
 * /generate_stream and / — streamed or not, records the same things: time to first token (by
 * route), inter-token latency, prompt and generated token counters, and one `generation` log line
 * with the token counts. The counts are checked against the usage each response reports.
 */
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/server/serve.js';
import { postJson, testConfig, tinyQwen, until } from '../helpers/server.js';

let server: RunningServer;
const logs: Record<string, unknown>[] = [];

beforeAll(async () => {
  const tm = tinyQwen(431);
  const logStream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  server = await startServer(testConfig({ model: tm.dir, port: 0, host: '127.0.0.1', servedModelName: 'tiny' }), { logger: true, logStream });
  await server.ready;
}, 300_000);
afterAll(async () => {
  await server?.close();
});

interface Snapshot {
  ttft: number;
  itl: number;
  prompt: number;
  generated: number;
}

/** The series this test watches, read from GET /metrics. */
async function snapshot(route: string): Promise<Snapshot> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const value = (series: string): number => {
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line ? Number(line.slice(series.length + 1)) : 0;
  };
  return {
    ttft: value(`loraplex_time_to_first_token_seconds_count{route="${route}"}`),
    itl: value('loraplex_inter_token_latency_seconds_count'),
    prompt: value('loraplex_prompt_tokens_total{adapter="base"}'),
    generated: value('loraplex_generated_tokens_total{adapter="base"}'),
  };
}

/** The `data:` payloads of an SSE body (without OpenAI's [DONE]). */
function events(text: string): Record<string, unknown>[] {
  return text
    .split('\n\n')
    .map((frame) => frame.split('\n').find((l) => l.startsWith('data: '))?.slice(6))
    .filter((d): d is string => d !== undefined && d !== '[DONE]')
    .map((d) => JSON.parse(d) as Record<string, unknown>);
}

interface Usage {
  prompt: number;
  completion: number;
}

const MAX = 4;
const chat = { model: 'tiny', messages: [{ role: 'user', content: 'Count with me' }], max_tokens: MAX, temperature: 0, ignore_eos: true };
const completion = { model: 'tiny', prompt: 'One two three', max_tokens: MAX, temperature: 0, ignore_eos: true };
const responses = { model: 'tiny', input: 'Count with me', max_output_tokens: MAX, temperature: 0 };
const tgi = { inputs: 'One two three', parameters: { max_new_tokens: MAX, details: true } };

const openaiUsage = (u: { prompt_tokens: number; completion_tokens: number }): Usage => ({ prompt: u.prompt_tokens, completion: u.completion_tokens });
const responsesUsage = (u: { input_tokens: number; output_tokens: number }): Usage => ({ prompt: u.input_tokens, completion: u.output_tokens });

/** route label, path, body, and how to read the usage (prompt tokens: null where the API does not report them). */
const cases: [string, string, string, unknown, (r: Response) => Promise<{ prompt: number | null; completion: number }>][] = [
  ['chat, whole', '/v1/chat/completions', '/v1/chat/completions', chat, async (r) => openaiUsage(((await r.json()) as { usage: never }).usage)],
  [
    'chat, streamed',
    '/v1/chat/completions',
    '/v1/chat/completions',
    { ...chat, stream: true, stream_options: { include_usage: true } },
    async (r) => openaiUsage(events(await r.text()).at(-1)!.usage as never),
  ],
  ['completions, whole', '/v1/completions', '/v1/completions', completion, async (r) => openaiUsage(((await r.json()) as { usage: never }).usage)],
  [
    'completions, streamed',
    '/v1/completions',
    '/v1/completions',
    { ...completion, stream: true, stream_options: { include_usage: true } },
    async (r) => openaiUsage(events(await r.text()).at(-1)!.usage as never),
  ],
  ['responses, whole', '/v1/responses', '/v1/responses', responses, async (r) => responsesUsage(((await r.json()) as { usage: never }).usage)],
  [
    'responses, streamed',
    '/v1/responses',
    '/v1/responses',
    { ...responses, stream: true },
    async (r) => responsesUsage((events(await r.text()).at(-1)!.response as { usage: never }).usage),
  ],
  ['/generate', '/generate', '/generate', tgi, async (r) => ({ prompt: null, completion: ((await r.json()) as { details: { generated_tokens: number } }).details.generated_tokens })],
  ['/generate, stream: true', '/generate', '/generate', { ...tgi, stream: true }, async (r) => ({ prompt: null, completion: (events(await r.text()).at(-1)!.details as { generated_tokens: number }).generated_tokens })],
  ['/generate_stream', '/generate_stream', '/generate_stream', tgi, async (r) => ({ prompt: null, completion: (events(await r.text()).at(-1)!.details as { generated_tokens: number }).generated_tokens })],
  ['/generate_stream, stream: false', '/generate_stream', '/generate_stream', { ...tgi, stream: false }, async (r) => ({ prompt: null, completion: ((await r.json()) as { details: { generated_tokens: number } }).details.generated_tokens })],
  ['/ (TGI compat), stream: true', '/', '/', { ...tgi, stream: true }, async (r) => ({ prompt: null, completion: (events(await r.text()).at(-1)!.details as { generated_tokens: number }).generated_tokens })],
];

describe('every inference route records time to first token, inter-token latency, token counters and the generation log line', () => {
  it.each(cases)('%s', async (_name, route, path, body, usageOf) => {
    const before = await snapshot(route);
    const lines = logs.filter((l) => l.msg === 'generation').length;
    const r = await postJson(server.url, path, body);
    expect(r.status).toBe(200);
    const usage = await usageOf(r);
    expect(usage.completion).toBeGreaterThanOrEqual(2);
    // (The log line is checked last, so a route that records nothing fails on the metrics first.)
    await until(() => logs.filter((l) => l.msg === 'generation').length > lines, 10_000).catch(() => {});
    const after = await snapshot(route);
    expect(after.ttft - before.ttft).toBe(1);
    expect(after.itl - before.itl).toBe(usage.completion - 1);
    expect(after.generated - before.generated).toBe(usage.completion);
    expect(after.prompt - before.prompt).toBeGreaterThan(0);
    if (usage.prompt !== null) expect(after.prompt - before.prompt).toBe(usage.prompt);
    const gen = logs.filter((l) => l.msg === 'generation');
    expect(gen.length).toBe(lines + 1);
    expect(gen.at(-1)).toMatchObject({ adapter: 'base', completionTokens: usage.completion, promptTokens: after.prompt - before.prompt });
  });
});
