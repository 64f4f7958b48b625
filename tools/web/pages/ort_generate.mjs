// Greedy tokens straight from onnxruntime-web (no transformers.js) on a causal graph, fed as transformers.js feeds a
// `--target web` graph: the prompt in one call, then one token per call, only the last position's logits kept (when
// the graph has the input), each call's present caches fed back as the next call's past. Timed: session creation
// (fetching the graph and its weights included), the prompt, the decode steps.
// args: {folder, file: path in the folder, external: the graph's external data files (names beside it; `true`:
//        <file>_data), caches: {past name: [kv heads, length, head size]} the first call's caches (default: empty,
//        [kv, 0, head] from the graph's metadata, as transformers.js makes them; onnxruntime-genai's graphs with a
//        sliding-window cache take a window-long zero cache on those layers), ids, steps, ep: "wasm" | "webgpu",
//        threads} -> {tokens, create_ms, prefill_ms, decode_ms, decode_steps}
const DIST = "/node_modules/onnxruntime-web/dist/";
const BUILDS = { wasm: "ort.wasm.bundle.min.mjs", webgpu: "ort.webgpu.bundle.min.mjs" };
const ZEROS = { float32: Float32Array, float16: Uint16Array };

function half(bits) {                                  // IEEE float16 bits -> number (Uint16Array float16 tensors)
  const e = (bits >> 10) & 31, m = bits & 1023, s = bits >> 15 ? -1 : 1;
  return e === 31 ? (m ? NaN : s * Infinity) : e ? s * 2 ** (e - 15) * (1 + m / 1024) : s * 2 ** -14 * (m / 1024);
}

function argmaxLast(logits) {
  const vocab = logits.dims.at(-1), data = logits.data, start = data.length - vocab;
  if (!["float32", "float16"].includes(logits.type)) throw new Error(`logits are ${logits.type}: this page reads float logits`);
  const value = data instanceof Uint16Array ? (i) => half(data[i]) : (i) => data[i];
  let best = start, top = value(start);
  for (let i = start + 1; i < data.length; i++) {
    const v = value(i);
    if (v > top) { best = i; top = v; }
  }
  return best - start;
}

export default async function ({ folder = "model", file, external = false, caches: shapes, ids, steps = 8, ep = "wasm", threads = 1 }) {
  const ort = await import(DIST + BUILDS[ep]);
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = DIST;
  const url = `/m/${folder}/${file}`, dir = url.slice(0, url.lastIndexOf("/") + 1);
  const data = external === true ? [`${file.split("/").pop()}_data`] : external || [];
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(url, {
    executionProviders: [ep], ...(data.length ? { externalData: data.map((n) => ({ path: n, data: dir + n })) } : {}) });
  const createMs = performance.now() - t0;
  const meta = Object.fromEntries(session.inputMetadata.map((m) => [m.name, m]));
  const caches = session.inputNames.filter((n) => n.startsWith("past_key_values."));
  let past = Object.fromEntries(caches.map((n) => {
    const { type, shape } = meta[n];
    const [kv, length, head] = shapes?.[n] ?? [shape[1], 0, shape[3]];
    return [n, new ort.Tensor(type, new ZEROS[type](kv * length * head), [1, kv, length, head])];
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
