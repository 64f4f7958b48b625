// Greedy tokens straight from onnxruntime-web (no transformers.js) on a `--target web` graph, fed as transformers.js
// feeds it: caches start empty ([1, kv, 0, head]) and grow, the prompt in one call, then one token per call, only
// the last position's logits kept. Timed: session creation, the prompt, the decode steps.
// args: {folder, file: path in the folder, external: the graph has <file>_data, ids, steps, ep: "wasm" | "webgpu",
//        threads} -> {tokens, create_ms, prefill_ms, decode_ms}
const DIST = "/node_modules/onnxruntime-web/dist/";
const BUILDS = { wasm: "ort.wasm.bundle.min.mjs", webgpu: "ort.webgpu.bundle.min.mjs" };
const EMPTY = { float32: Float32Array, float16: Uint16Array };

function argmaxLast(logits) {
  const vocab = logits.dims.at(-1), data = logits.data, start = data.length - vocab;
  if (logits.type !== "float32") throw new Error(`logits are ${logits.type}: this page reads float32 logits`);
  let best = start;
  for (let i = start + 1; i < data.length; i++) if (data[i] > data[best]) best = i;
  return best - start;
}

export default async function ({ folder = "model", file, external = false, ids, steps = 8, ep = "wasm", threads = 1 }) {
  const ort = await import(DIST + BUILDS[ep]);
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = DIST;
  const url = `/m/${folder}/${file}`;
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(url, {
    executionProviders: [ep],
    ...(external ? { externalData: [{ path: `${file.split("/").pop()}_data`, data: `${url}_data` }] } : {}) });
  const createMs = performance.now() - t0;
  const meta = Object.fromEntries(session.inputMetadata.map((m) => [m.name, m]));
  const caches = session.inputNames.filter((n) => n.startsWith("past_key_values."));
  let past = Object.fromEntries(caches.map((n) => {
    const { type, shape } = meta[n];
    return [n, new ort.Tensor(type, new EMPTY[type](0), [1, shape[1], 0, shape[3]])];
  }));
  const int64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values.map(BigInt)), dims);
  let length = 0;
  async function step(tokens) {
    const feeds = { input_ids: int64(tokens, [1, tokens.length]), ...past };
    length += tokens.length;
    if (meta.attention_mask) feeds.attention_mask = int64(new Array(length).fill(1), [1, length]);
    if (meta.position_ids) feeds.position_ids = int64(tokens.map((_, i) => length - tokens.length + i), [1, tokens.length]);
    for (const keep of ["num_logits_to_keep", "logits_to_keep"]) if (meta[keep]) feeds[keep] = int64([1], []);
    const out = await session.run(feeds);
    past = Object.fromEntries(caches.map((n) => [n, out[n.replace("past_key_values.", "present.")]]));
    return argmaxLast(out.logits);
  }
  let t = performance.now();
  const tokens = [await step(ids)];
  const prefillMs = performance.now() - t;
  t = performance.now();
  for (let s = 1; s < steps; s++) tokens.push(await step([tokens.at(-1)]));
  const decodeMs = performance.now() - t;
  await session.release();
  return { tokens, create_ms: createMs, prefill_ms: prefillMs, decode_ms: decodeMs, decode_steps: steps - 1 };
}
