// Times single-operator ONNX graphs on onnxruntime-web's wasm build in Node (the same wasm code the browser's
// plain wasm bundle runs), as bench/web_formats.py writes them.
//   node bench_ops.mjs THREADS CALLS < [{"file": ..., "shape": [1, 640]}, ...]  ->  [{"file", "ms": [...]}, ...]
// Each graph: one session, a warm-up call, then CALLS timed calls (wall ms each).
import fs from "node:fs";
import * as ort from "onnxruntime-web";
import { readJson } from "./local.mjs";

const [threads, calls] = process.argv.slice(2).map(Number);
ort.env.wasm.numThreads = threads;
const jobs = await readJson();
const out = [];
for (const { file, shape } of jobs) {
  const session = await ort.InferenceSession.create(fs.readFileSync(file), { executionProviders: ["wasm"] });
  const n = shape.reduce((a, b) => a * b, 1);
  const x = new ort.Tensor("float32", Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.5), shape);
  await session.run({ x });
  const ms = [];
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    await session.run({ x });
    ms.push(performance.now() - t);
  }
  await session.release();
  out.push({ file, ms });
}
process.stdout.write(JSON.stringify(out) + "\n");
