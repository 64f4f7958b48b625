// Times one-MatMul graphs (bench/browser_formats.py writes them) in onnxruntime-web: wasm on its wasm-only build,
// WebGPU on its WebGPU build (the one transformers.js bundles). One session at a time, released before the next.
// args: {ep: "wasm" | "webgpu", threads, folder: mount name, budget: s per cell, reps,
//        cells: [{file, tokens, width}]}  -> {versions, cells: [{file, tokens, create_ms, ms: [...], head, tail,
//        cpu_fallback} | {file, tokens, error}]}
// x[i] = 0.5 sin(i) (computed the same way in Python); head / tail: the first and last 16 outputs of the last row.
const DIST = "/node_modules/onnxruntime-web/dist/";
const BUILDS = { wasm: "ort.wasm.bundle.min.mjs", webgpu: "ort.webgpu.bundle.min.mjs" };

async function create(ort, url, ep) {
  const options = { executionProviders: [ep], graphOptimizationLevel: "all" };
  if (ep === "wasm") return [await ort.InferenceSession.create(url, options), false];
  try {   // on WebGPU, first with every node on the GPU; then, if that fails, as apps get it: some nodes on the CPU
    return [await ort.InferenceSession.create(url, { ...options, extra: { session: { disable_cpu_ep_fallback: "1" } } }), false];
  } catch {
    return [await ort.InferenceSession.create(url, options), true];
  }
}

export default async function ({ ep, threads = 1, folder = "formats", budget = 3, reps = 10, cells }) {
  const ort = await import(DIST + BUILDS[ep]);
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = DIST;
  ort.env.logLevel = "error";
  const out = [];
  for (const { file, tokens, width } of cells) {
    let session;
    try {
      const t0 = performance.now();
      const [made, cpuFallback] = await create(ort, `/m/${folder}/${file}`, ep);
      session = made;
      const createMs = performance.now() - t0;
      const x = new Float32Array(tokens * width);
      for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(i);
      const feed = { x: new ort.Tensor("float32", x, [tokens, width]) };
      let y = (await session.run(feed)).y;       // warm-up (WebGPU compiles its shaders here)
      const ms = [];
      const start = performance.now();
      while (ms.length < reps && (ms.length < 2 || performance.now() - start < budget * 1000)) {
        const t = performance.now();
        y = (await session.run(feed)).y;
        ms.push(performance.now() - t);
      }
      const data = y.data, row = data.length / tokens;
      out.push({ file, tokens, create_ms: createMs, ms, cpu_fallback: cpuFallback,
                 head: Array.from(data.slice(data.length - row, data.length - row + 16), Number),
                 tail: Array.from(data.slice(data.length - 16), Number) });
    } catch (e) {
      out.push({ file, tokens, error: String(e.message ?? e).split("\n")[0] });
    } finally {
      await session?.release();
    }
  }
  return { versions: ort.env.versions, cells: out };
}
