// Runs page modules in headless Chromium (Debian's /usr/bin/chromium, driven by puppeteer-core), offline: every
// file comes from a server on 127.0.0.1 (an ephemeral port) with the cross-origin isolation headers that wasm
// threads need, scripts from tools/web/node_modules, never a CDN. One browser for the process's life.
//   node browser.mjs      reads one JSON request per line on stdin, answers one JSON line each on stdout:
//   {"module": "/pages/embed.mjs", "args": {...}, "mounts": {"model": "/abs/dir"}, "timeout": 120}
//   -> {"ok": true, "result": <what the module's default export returned>, "console": [...], "bytes": N}
//   |  {"ok": false, "error": "...", "console": [...]}
// A module (a file under tools/web/pages, served at /pages/) exports `default async (args) => result`; it runs in a
// fresh browser context (no cache shared with the previous request), on /pages/index.html or the request's "page"
// (a path here, or the URL of an app's page on another local server, which the module then drives); "screenshot":
// a PNG of the page written after the module returns.
// A mount serves a directory at /m/<name>/. Page errors, failed requests (or status >= 400) and the timeout fail
// the request.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOTS = { node_modules: path.join(HERE, "node_modules"), pages: path.join(HERE, "pages") };
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
                ".wasm": "application/wasm", ".png": "image/png", ".css": "text/css" };
let mounts = {};
let served = 0;

function resolve(urlPath) {
  const parts = decodeURIComponent(urlPath.split("?")[0]).split("/").filter(Boolean);
  const [head, ...rest] = parts[0] === "m" ? [mounts[parts[1]], ...parts.slice(2)] : [ROOTS[parts[0]], ...parts.slice(1)];
  if (!head) return null;
  const file = path.resolve(head, ...rest);
  return file === head || file.startsWith(head + path.sep) ? file : null;
}

const server = http.createServer((req, res) => {
  const file = resolve(req.url);
  // CORS and cross-origin CORP: a page of another local server (an app under test) may import the page modules
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                    "Cross-Origin-Resource-Policy": "cross-origin", "Access-Control-Allow-Origin": "*",
                    "Cache-Control": "no-store" };
  fs.stat(file ?? "", (err, stat) => {
    if (err || !stat.isFile()) {
      res.writeHead(404, headers).end();
      return;
    }
    res.writeHead(200, { ...headers, "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
                         "Content-Length": stat.size });
    served += stat.size;
    fs.createReadStream(file).pipe(res);
  });
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // --no-sandbox: tests run as root in a container; --enable-unsafe-webgpu: WebGPU on the SwiftShader (CPU) adapter
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-dev-shm-usage", "--no-first-run"],
  protocolTimeout: 0,
});
const version = await browser.version();

async function run({ module, args = {}, mounts: dirs = {}, timeout = 120, page: at = "/pages/index.html", screenshot }) {
  mounts = Object.fromEntries(Object.entries(dirs).map(([k, v]) => [k, path.resolve(v)]));
  served = 0;
  const context = await browser.createBrowserContext();
  const log = [], failures = [];
  try {
    const page = await context.newPage();
    page.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
    page.on("requestfailed", (r) => failures.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    // the browser's own favicon request is not the page's
    page.on("response", (r) => r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico"
                               && failures.push(`HTTP ${r.status()}: ${r.url()}`));
    let timer;
    const limit = new Promise((_, fail) => { timer = setTimeout(() => fail(new Error(`timed out after ${timeout} s`)), timeout * 1000); });
    const work = (async () => {
      await page.goto(new URL(at, origin).href);
      return page.evaluate(async (m, a) => (await import(m)).default(a), new URL(module, origin).href, args);
    })();
    try {
      const result = await Promise.race([work, limit]);
      if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
      if (failures.length) throw new Error(failures.join("; "));
      return { ok: true, result, console: log, bytes: served };
    } finally {
      clearTimeout(timer);
      work.catch(() => {});
    }
  } catch (e) {
    const message = String(e.message ?? e).split("\n")[0];
    return { ok: false, error: [message, ...failures.filter((f) => !message.includes(f))].join("; "), console: log };
  } finally {
    await context.close().catch(() => {});
  }
}

process.stdout.write(JSON.stringify({ ready: true, origin, version }) + "\n");
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = await run(JSON.parse(line));
  } catch (e) {
    answer = { ok: false, error: String(e.message ?? e), console: [] };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
server.close();
