// Checks Switchyard's OpenAI-compatible API with the official `openai` Node SDK.
//
// Usage: node gateway_check.mjs ENGINE_URL   (run by ../gateway_run.sh, which configures the
// models `steady`, `primary` — breaks after 3 tokens, falls back to `fallback` — and `auto`).
// Prints PASS/FAIL per check and `N passed, N failed`; exits non-zero on any failure.

import OpenAI from "openai";

const base = process.argv[2].replace(/\/$/, "");
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.SWITCHYARD_API_KEY, maxRetries: 0 });
const PROMPT = "Tell me about the switchyard";

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

async function reference() {
  const resp = await client.chat.completions.create({
    model: "steady",
    messages: [{ role: "user", content: PROMPT }],
  });
  return resp.choices[0].message.content;
}

async function plain(expected) {
  const { data, response } = await client.chat.completions
    .create({
      model: "steady",
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "user", content: PROMPT },
      ],
      max_completion_tokens: 200,
    })
    .withResponse();
  assert(response.headers.get("x-switchyard-model") === "steady", "x-switchyard-model");
  assert(response.headers.get("x-switchyard-failovers") === "0", "x-switchyard-failovers");
  assert(data.object === "chat.completion" && data.id.startsWith("chatcmpl-"), "object/id");
  assert(data.choices[0].message.content === expected, "content");
  assert(data.choices[0].finish_reason === "stop", "finish_reason");
  assert(data.usage.total_tokens === data.usage.prompt_tokens + data.usage.completion_tokens, "usage");
}

async function streamed(expected) {
  const stream = await client.chat.completions.create({
    model: "steady",
    messages: [{ role: "user", content: PROMPT }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    assert(chunk.object === "chat.completion.chunk", "chunk object");
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    } else {
      usage = chunk.usage;
    }
  }
  assert(text === expected, `streamed text ${JSON.stringify(text)}`);
  assert(finish === "stop", "finish_reason");
  assert(usage && usage.completion_tokens > 0, "usage chunk");
}

async function unknownModel() {
  try {
    await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  } catch (e) {
    assert(e instanceof OpenAI.NotFoundError, `NotFoundError, got ${e.constructor.name}`);
    assert(e.code === "model_not_found" && e.param === "model", "code/param");
    return;
  }
  throw new Error("no error for an unknown model");
}

async function failoverStream(expected) {
  const stream = await client.chat.completions.create({
    model: "primary",
    messages: [{ role: "user", content: PROMPT }],
    stream: true,
  });
  let text = "";
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
  }
  const firstThree = expected.split(" ").slice(0, 3).join(" ");
  assert(text.startsWith(firstThree) && text.length > firstThree.length, `failover text ${JSON.stringify(text)}`);
  assert(finish === "stop", "finish_reason after failover");
}

async function models() {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  for (const id of ["steady", "primary", "fallback", "auto"]) assert(ids.includes(id), `models include ${id}`);
}

const expected = await reference();
const checks = [
  ["openai-node: plain completion, headers", () => plain(expected)],
  ["openai-node: stream with include_usage", () => streamed(expected)],
  ["openai-node: unknown model is NotFoundError", unknownModel],
  ["openai-node: failover mid-stream is one clean stream", () => failoverStream(expected)],
  ["openai-node: models.list", models],
];
let passed = 0;
let failed = 0;
for (const [name, check] of checks) {
  try {
    await check();
    passed += 1;
    console.log(`PASS ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}\n${e.stack}`);
  }
}
console.log(`${passed} passed, ${failed} failed (openai node SDK)`);
process.exit(failed ? 1 : 0);
