// End-to-end tests of the Web UI: headless Chromium (Debian's `chromium`, driven through
// playwright-core) against the real engine with fake-llm as its upstream.
//
// The suite starts both binaries itself (built by `cargo build -p engine -p loadtest --bins`;
// paths from SWITCHYARD_BIN / FAKE_LLM_BIN, else the cargo target directory) with
// `engine.toml.in`: `steady` answers, `flaky` breaks after three tokens and fails over to
// `steady`, `slow` streams slowly enough to cancel or to cut the socket mid-reply.
// Screenshots go to SCREENSHOT_DIR (default: the repository's target/ui-screenshots).
//
// Run: cd engine/tests/ui && npm ci && npm test

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const screenshots = process.env.SCREENSHOT_DIR ?? join(repo, 'target', 'ui-screenshots');
const EMAIL = 'admin@ui.test';
const PASSWORD = 'ui-test-password-0123';
const TIMEOUT = 20_000;

let fake, engine, context, page, base, workdir;
const pageErrors = [];
const frames = [];

function targetDir() {
  if (process.env.CARGO_TARGET_DIR) return process.env.CARGO_TARGET_DIR;
  const meta = execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: repo });
  return JSON.parse(meta).target_directory;
}

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Spawns `bin` and resolves once a line of its output matches `ready`. */
function start(bin, args, env, ready, name) {
  return new Promise((ok, fail) => {
    const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    const timer = setTimeout(() => fail(new Error(`${name} did not start:\n${log}`)), 30_000);
    const onData = (chunk) => {
      log += chunk;
      const match = ready.exec(log);
      if (match) { clearTimeout(timer); ok({ child, match }); }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`${name} exited (${code}):\n${log}`)); });
  });
}

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  workdir = mkdtempSync(join(tmpdir(), 'switchyard-ui-'));
  const target = targetDir();
  const fakeBin = process.env.FAKE_LLM_BIN ?? join(target, 'debug', 'fake-llm');
  const engineBin = process.env.SWITCHYARD_BIN ?? join(target, 'debug', 'switchyard');
  for (const bin of [fakeBin, engineBin]) assert.ok(existsSync(bin), `${bin} is missing: cargo build -p engine -p loadtest --bins`);

  const fakePort = await freePort();
  fake = (await start(fakeBin, ['--listen', `127.0.0.1:${fakePort}`, '--token-delay-ms', '25', '--tokens', '24'],
    { RUST_LOG: 'info' }, /fake-llm started/, 'fake-llm')).child;
  const config = readFileSync(join(here, 'engine.toml.in'), 'utf8').replaceAll('@FAKE@', `http://127.0.0.1:${fakePort}/v1`);
  writeFileSync(join(workdir, 'engine.toml'), config);
  const started = await start(engineBin, ['--config', join(workdir, 'engine.toml')], {
    SWITCHYARD_BOOTSTRAP_EMAIL: EMAIL,
    SWITCHYARD_BOOTSTRAP_PASSWORD: PASSWORD,
    SWITCHYARD_LOG_FORMAT: 'json',
    HOME: workdir,
  }, /Switchyard is listening on (http:\/\/[\d.:]+)/, 'switchyard');
  engine = started.child;
  base = started.match[1];

  // A fresh profile per run (playwright passes it as --user-data-dir).
  context = await chromium.launchPersistentContext(join(workdir, 'chromium'), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
  });
  context.setDefaultTimeout(TIMEOUT);
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // A failed request (the wrong password's 401, a pending endpoint's 404) is logged by the
    // browser and expected; script errors and CSP refusals are not.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(`console: ${m.text()}`);
  });
  // The WebSocket traffic, kept for the report when a test fails.
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => frames.push(`> ${f.payload}`));
    ws.on('framereceived', (f) => frames.push(`< ${f.payload}`));
    ws.on('close', () => frames.push('closed'));
  });
});

afterEach((t) => {
  if (frames.length && process.env.DEBUG_WS) writeFileSync(join(screenshots, `ws-${Date.now()}.log`), frames.join('\n'));
  frames.length = 0;
});

after(async () => {
  await context?.close();
  engine?.kill('SIGTERM');
  fake?.kill('SIGTERM');
  if (workdir) rmSync(workdir, { recursive: true, force: true });
});

async function shot(name, fullPage = false) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage });
}

/** Calls the engine's REST API with the page's own session (fetch from inside the page). */
async function apiFromPage(path) {
  return page.evaluate(async (p) => {
    const { api } = await import('/ui/api.js');
    return api('GET', p);
  }, path);
}

async function createConversation({ title, model, system }) {
  await page.goto(`${base}/#/chat`);
  const details = page.locator('#new-conversation');
  if (!(await details.evaluate((d) => d.open))) await page.locator('#new-conversation summary').click();
  await page.getByLabel('Title').fill(title);
  await page.getByLabel('Model').selectOption(model);
  if (system) await page.getByLabel('System prompt').fill(system);
  await page.getByRole('button', { name: 'Create' }).click();
  await page.waitForURL(/#\/chat\/.+/);
  await page.locator('#chat-title', { hasText: title }).waitFor();
  await page.locator('#conn-status[data-state="open"]').waitFor();
  return decodeURIComponent(new URL(page.url()).hash.replace('#/chat/', ''));
}

async function send(text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
}

const lastReply = () => page.locator('li.msg.assistant').last();

test('signs in', async () => {
  await page.goto(base);
  await page.getByRole('heading', { name: 'Sign in to Switchyard' }).waitFor();
  await shot('login');
  await page.getByLabel('Email').fill(EMAIL);
  await page.getByLabel('Password').fill('wrong password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Wrong email' }).waitFor();
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#chat-view:not([hidden])').waitFor();
  assert.equal(await page.getByRole('link', { name: 'Admin' }).isVisible(), true, 'a superadmin sees the admin console');
});

test('chats with a reply streamed token by token, with model and cost shown', async () => {
  const id = await createConversation({ title: 'First chat', model: 'steady', system: 'Be brief.' });
  assert.match(await page.locator('#chat-settings').textContent(), /steady.*Be brief/);
  await send('Hello <b>there</b> & welcome');
  // The user's text is shown as text, markup and all.
  await page.locator('li.msg.user .msg-body', { hasText: 'Hello <b>there</b> & welcome' }).waitFor();
  assert.equal(await page.locator('li.msg.user b').count(), 0);
  // Streaming: the reply is visible and growing before it is done.
  const reply = lastReply();
  await reply.locator('xpath=self::*[@data-state="streaming"]').waitFor();
  const lengths = [];
  for (let i = 0; i < 40 && (await reply.getAttribute('data-state')) === 'streaming'; i += 1) {
    lengths.push((await reply.locator('.msg-body').textContent()).length);
    await page.waitForTimeout(40);
  }
  await reply.locator('xpath=self::*[@data-state="done"]').waitFor();
  const grew = new Set(lengths.filter((n) => n > 0));
  assert.ok(grew.size >= 2, `the reply should appear in pieces while streaming (saw lengths ${lengths})`);
  assert.equal(await reply.getAttribute('data-model'), 'steady');
  assert.match(await reply.locator('.msg-meta').textContent(), /steady.*\d+ in \/ \d+ out tokens.*\$0\.0*[1-9]\d*/);
  // What streamed is exactly what the engine stored.
  const stored = await apiFromPage(`/api/v1/conversations/${id}`);
  const assistant = stored.messages.filter((m) => m.role === 'assistant').at(-1);
  assert.equal((await reply.locator('.msg-body').innerText()).trim(), assistant.content.trim());
  // The conversation is in the list, marked current.
  await page.locator('#conversation-list a[aria-current="page"]', { hasText: 'First chat' }).waitFor();
  await shot('chat');
});

test('renders Markdown as DOM nodes and never as HTML', async () => {
  const result = await page.evaluate(async () => {
    const { renderMarkdown } = await import('/ui/markdown.js');
    const box = document.createElement('div');
    box.append(renderMarkdown([
      '# Title', 'some **bold** and `code` <img src=x onerror="window.pwned=1">',
      '[bad](javascript:window.pwned=2) [good](https://example.invalid/x)',
      '```js', 'const a = "<script>window.pwned=3</script>";', '```', '- one', '- two',
    ].join('\n')));
    document.body.append(box);
    await new Promise((r) => setTimeout(r, 50));
    const out = {
      img: box.querySelectorAll('img').length,
      script: box.querySelectorAll('script').length,
      strong: box.querySelector('strong')?.textContent,
      code: box.querySelector('pre code')?.textContent,
      links: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
      items: box.querySelectorAll('li').length,
      heading: box.querySelector('h3')?.textContent,
      pwned: window.pwned ?? null,
      text: box.textContent,
    };
    box.remove();
    return out;
  });
  assert.equal(result.img, 0);
  assert.equal(result.script, 0);
  assert.equal(result.pwned, null);
  assert.equal(result.strong, 'bold');
  assert.equal(result.heading, 'Title');
  assert.equal(result.items, 2);
  assert.equal(result.code, 'const a = "<script>window.pwned=3</script>";');
  assert.deepEqual(result.links, ['https://example.invalid/x']);
  assert.match(result.text, /<img src=x onerror=/);
});

test('shows a failover when the primary model breaks mid-stream', async () => {
  await createConversation({ title: 'Failover', model: 'flaky' });
  await send('Tell me something long');
  const reply = lastReply();
  await reply.locator('xpath=self::*[@data-state="done"]').waitFor();
  const badge = reply.locator('.badge.failover');
  await badge.waitFor();
  assert.match(await badge.textContent(), /flaky → steady/);
  assert.equal(await reply.getAttribute('data-model'), 'steady');
  assert.equal(await reply.getAttribute('data-failover'), 'true');
  await shot('chat-failover');
});

test('resumes after the socket is cut mid-reply, losing and repeating nothing', async () => {
  const id = await createConversation({ title: 'Resume', model: 'slow' });
  await send('Stream slowly please');
  const reply = lastReply();
  await page.waitForFunction(() => (document.querySelector('li.msg.assistant:last-child .msg-body')?.textContent.length ?? 0) > 10);
  frames.length = 0;
  // One evaluation, so no event can land between reading the seq and cutting the socket.
  const seqBefore = await page.evaluate(() => { const seq = window.switchyard.lastSeq(); window.switchyard.dropSocket(); return seq; });
  assert.ok(seqBefore > 1, 'cut mid-reply, after some deltas');
  await page.locator('#conn-status[data-state="reconnecting"]').waitFor();
  await page.locator('#conn-status[data-state="open"]').waitFor();
  await reply.locator('xpath=self::*[@data-state="done"]').waitFor({ timeout: 30_000 });
  const stored = await apiFromPage(`/api/v1/conversations/${id}`);
  const assistant = stored.messages.filter((m) => m.role === 'assistant').at(-1);
  assert.equal((await reply.locator('.msg-body').innerText()).trim(), assistant.content.trim());
  assert.equal(await page.evaluate(() => window.switchyard.lastSeq()), stored.conversation.last_seq);
  assert.ok(stored.conversation.last_seq > seqBefore);
  // The new socket asked for exactly what it had not shown.
  assert.ok(frames.includes(`> {"type":"resume","after_seq":${seqBefore}}`), frames.filter((f) => f.includes('resume')).join('\n'));
  assert.equal(await page.locator('li.msg.assistant').count(), 1, 'one reply, not a duplicate');
});

test('reopening a conversation shows its stored history', async () => {
  await page.getByRole('link', { name: /First chat/ }).click();
  await page.locator('#chat-title', { hasText: 'First chat' }).waitFor();
  await page.locator('li.msg.assistant[data-state="done"][data-model="steady"]').waitFor();
  assert.equal(await page.locator('li.msg.user').count(), 1);
});

test('stops a reply', async () => {
  const id = await createConversation({ title: 'Cancel', model: 'slow' });
  await send('Another slow one');
  await page.waitForFunction(() => (document.querySelector('li.msg.assistant:last-child .msg-body')?.textContent.length ?? 0) > 5);
  await page.getByRole('button', { name: 'Stop' }).click();
  const reply = lastReply();
  await reply.locator('xpath=self::*[@data-state="cancelled"]').waitFor();
  assert.match(await reply.locator('.badge.status').textContent(), /Stopped/);
  assert.equal(await page.getByRole('button', { name: 'Stop' }).isVisible(), false);
  const stored = await apiFromPage(`/api/v1/conversations/${id}`);
  assert.equal(stored.messages.at(-1).status, 'cancelled');
});

test('admin console: live actor tree, and a provider restarts after its fault button', async () => {
  await page.getByRole('link', { name: 'Admin' }).click();
  await page.getByRole('heading', { name: 'Admin console' }).waitFor();
  const row = page.locator('#providers-body tr[data-model="slow"]');
  await row.waitFor();
  await page.locator('#actor-tree li[data-id="provider:slow"]').waitFor();
  await page.locator('#actor-tree li[data-id="root_supervisor"] li[data-id="provider_supervisor"]').waitFor();
  const before = Number(await row.locator('td.restarts').textContent());
  await page.getByRole('button', { name: 'Inject a failure into provider slow' }).click();
  await page.locator('#drill-status', { hasText: 'Injected a failure into slow' }).waitFor();
  await page.waitForFunction((n) => Number(document.querySelector('#providers-body tr[data-model="slow"] td.restarts')?.textContent) === n + 1, before);
  await page.waitForFunction(() => document.querySelector('#providers-body tr[data-model="slow"]')?.dataset.state === 'running');
  assert.match(await row.locator('td.last-error').textContent(), /drill/);
  await page.locator('#slo-body', { hasText: 'Status:' }).waitFor();
  // Spend against budget: the tenant that chatted above has spent something (steady is priced).
  const spendRow = page.locator('#spend-body tbody tr').first();
  await spendRow.waitFor();
  assert.match(await spendRow.locator('td').first().textContent(), /^\$0\.0*[1-9]\d*$/);
  await page.locator('#spend-body svg rect.bar-spend').first().waitFor();
  await page.locator('#anomalies-body', { hasText: 'No anomalies.' }).waitFor();
  await shot('admin', true);
});

test('is usable on a phone-sized screen', async () => {
  // The same tab: the session lives in this tab's sessionStorage.
  await page.setViewportSize({ width: 390, height: 844 });
  try {
    await page.goto(`${base}/#/chat`);
    await page.getByRole('link', { name: /First chat/ }).click();
    await page.locator('li.msg.assistant[data-state="done"]').first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling on a phone (overflow ${overflow}px)`);
    await shot('chat-phone');
    await page.goto(`${base}/#/admin`);
    await page.locator('#providers-body tr[data-model="steady"]').waitFor();
    await shot('admin-phone', true);
  } finally {
    await page.setViewportSize({ width: 1280, height: 860 });
  }
});

test('a member sees the chat but not the admin console', async () => {
  const member = { email: 'member@ui.test', password: 'member-password-0123' };
  await page.goto(`${base}/#/chat`);
  await page.evaluate(async (m) => {
    const { api, currentSession } = await import('/ui/api.js');
    await api('POST', `/api/v1/tenants/${currentSession().tenant_id}/users`, { ...m, role: 'member' });
  }, member);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Switchyard' }).waitFor();
  await page.getByLabel('Email').fill(member.email);
  await page.getByLabel('Password').fill(member.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#chat-view:not([hidden])').waitFor();
  assert.equal(await page.getByRole('link', { name: 'Admin' }).isVisible(), false);
  // The server refuses the admin API whatever the UI shows; nothing of the owner's view stays.
  await page.goto(`${base}/#/admin`);
  await page.locator('#actors-error', { hasText: 'platform admin rights' }).waitFor();
  assert.equal(await page.locator('#providers-body tr').count(), 0);
});

test('no script errors or CSP violations on any page', () => {
  assert.deepEqual(pageErrors, []);
});
