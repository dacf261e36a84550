// The official openai npm package as a real client of `lathe serve` (run by lathe_serve_test):
// chat, streaming with usage, completions (a batch of prompts too), logprobs, echo, n, and errors
// as the SDK's typed exceptions. Usage: node openai_client.cjs BASE_URL MODEL NPM_DIR. Prints "ok N" on success.
'use strict';
const path = require('path');
const assert = require('assert');

const [baseURL, model, npmDir] = process.argv.slice(2);
const OpenAI = require(path.join(npmDir, 'node_modules', 'openai'));
const client = new OpenAI({ baseURL: baseURL + '/v1', apiKey: 'test-key', maxRetries: 0, timeout: 60000 });
let checks = 0;
const check = (cond, what) => { assert.ok(cond, what); ++checks; };

async function main() {
  const models = await client.models.list();
  check(models.data.some((m) => m.id === model), 'models.list names the served model');

  const messages = [{ role: 'user', content: 'Say something' }];
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, ignore_eos: true });
  check(chat.object === 'chat.completion', 'chat object');
  check(chat.choices[0].message.role === 'assistant', 'assistant role');
  check(typeof chat.choices[0].message.content === 'string', 'content');
  check(chat.usage.completion_tokens === 12, 'completion tokens');
  check(chat.usage.total_tokens === chat.usage.prompt_tokens + 12, 'total tokens');

  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta && c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(text === chat.choices[0].message.content, 'streamed text equals the whole response');
  check(finish === 'length', 'stream finish reason');
  check(usage && usage.completion_tokens === 12, 'stream usage');

  const lp = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 2 });
  const content = lp.choices[0].logprobs.content;
  check(content.length === 4, 'chat logprobs per token');
  check(content.every((t) => t.logprob <= 0 && t.top_logprobs.length === 2), 'top logprobs');

  const comp = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, n: 2, ignore_eos: true });
  check(comp.choices.length === 2 && comp.choices[0].text === comp.choices[1].text, 'n = 2 greedy completions agree');
  check(comp.usage.completion_tokens === 16, 'completions usage');

  const batch = await client.completions.create({ model, prompt: ['Once upon a time', 'Hello'], max_tokens: 3, temperature: 0, ignore_eos: true });
  check(batch.choices.length === 2 && batch.choices[1].index === 1, 'a batch of prompts gives a choice each');

  const echo = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 2, echo: true, logprobs: 1, temperature: 0 });
  check(echo.choices[0].text.startsWith('Once upon a time'), 'echo');
  check(echo.choices[0].logprobs.token_logprobs[0] === null, 'first prompt token has no logprob');

  const cstream = await client.completions.create({ model, prompt: 'Hello', max_tokens: 6, temperature: 0, stream: true, ignore_eos: true });
  let ctext = '';
  for await (const chunk of cstream) for (const c of chunk.choices) ctext += c.text;
  const cwhole = await client.completions.create({ model, prompt: 'Hello', max_tokens: 6, temperature: 0, ignore_eos: true });
  check(ctext === cwhole.choices[0].text, 'completion stream equals the whole response');

  const expectError = async (cls, status, f, what) => {
    try {
      await f();
    } catch (e) {
      check(e instanceof cls && e.status === status, `${what}: got ${e.constructor.name} ${e.status}`);
      check(typeof e.message === 'string' && e.message.length > 0, `${what}: message`);
      return e;
    }
    assert.fail(`${what}: no error`);
  };
  const bad = await expectError(OpenAI.BadRequestError, 400,
    () => client.chat.completions.create({ model, messages, temperature: 5 }), 'temperature out of range');
  check(bad.param === 'temperature', 'error names the field');
  await expectError(OpenAI.BadRequestError, 400,
    () => client.completions.create({ model, prompt: Array(3000).fill(5) }), 'over-long prompt');
  await expectError(OpenAI.NotFoundError, 404,
    () => client.chat.completions.create({ model: 'no-such-model', messages }), 'unknown model');
  // Structured output: a bounded schema comes back as a document that validates.
  const structured = await client.chat.completions.create({
    model, messages, max_tokens: 64,
    response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: {
      type: 'object', properties: { ok: { type: 'boolean' }, n: { enum: [1, 2, 3] } },
      required: ['ok', 'n'], additionalProperties: false } } },
  });
  const doc = JSON.parse(structured.choices[0].message.content);
  check(typeof doc.ok === 'boolean' && [1, 2, 3].includes(doc.n), 'json_schema output validates');
  await expectError(OpenAI.BadRequestError, 400,
    () => client.chat.completions.create({ model, messages, response_format: { type: 'json_schema',
      json_schema: { name: 'x', schema: { type: 'string', pattern: 'a+' } } } }), 'unsupported schema keyword');
  const noKey = new OpenAI({ baseURL: baseURL + '/v1', apiKey: 'wrong', maxRetries: 0 });
  await expectError(OpenAI.AuthenticationError, 401, () => noKey.models.list(), 'wrong API key');
  console.log(`ok ${checks}`);
}

main().catch((e) => {
  console.error('FAIL', e && e.stack ? e.stack : e);
  process.exit(1);
});
