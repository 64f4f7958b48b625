// Runs a `--target web` graph on onnxruntime-web's wasm build in Node (the wasm code of the browser's plain wasm
// bundle), the way transformers.js drives it: caches start empty ([1, kv, 0, D]) and grow, `num_logits_to_keep`.
//   node ortweb_run.mjs MODEL.onnx THREADS STEPS KEEP < {"ids": [...]}
//   -> {"prefill_logits": [[...]], "tokens": [...], "step_logits": [[...]], "prefill_ms", "decode_ms"}
// The prompt in one call (KEEP: its num_logits_to_keep, 0 = every position), then STEPS greedy one-token steps.
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-web";
import { readJson } from "./local.mjs";

const [file, threads, steps, keep] = process.argv.slice(2);
ort.env.wasm.numThreads = Number(threads);
const { ids } = await readJson();
const data = fs.existsSync(file + "_data") ? [{ path: path.basename(file) + "_data", data: fs.readFileSync(file + "_data") }]
  : undefined;
const session = await ort.InferenceSession.create(fs.readFileSync(file), { executionProviders: ["wasm"], externalData: data });
const kv = session.inputMetadata.filter((m) => m.name.startsWith("past_key_values."));
let past = Object.fromEntries(kv.map((m) => [m.name, new ort.Tensor(m.type, new Float32Array(0), [1, m.shape[1], 0, m.shape[3]])]));
const int64 = (a, dims) => new ort.Tensor("int64", BigInt64Array.from(a.map(BigInt)), dims);
let total = 0;
async function call(tokens, k) {
  total += tokens.length;
  const feeds = { input_ids: int64(tokens, [1, tokens.length]), attention_mask: int64(new Array(total).fill(1), [1, total]),
                  num_logits_to_keep: int64([k], []), ...past };
  const out = await session.run(feeds);
  past = Object.fromEntries(kv.map((m) => [m.name, out[m.name.replace("past_key_values.", "present.")]]));
  const [, rows, vocab] = out.logits.dims;
  const all = out.logits.data;
  return Array.from({ length: rows }, (_, r) => Array.from(all.subarray(r * vocab, (r + 1) * vocab)));
}
const argmax = (row) => row.reduce((best, v, i) => (v > row[best] ? i : best), 0);
let t = performance.now();
const prefill = await call(ids, Number(keep));
const prefill_ms = performance.now() - t;
const tokens = [argmax(prefill.at(-1))];
const step_logits = [];
t = performance.now();
for (let s = 0; s < Number(steps); s++) {
  const [row] = await call([tokens.at(-1)], 1);
  step_logits.push(row);
  tokens.push(argmax(row));
}
const decode_ms = performance.now() - t;
const small = prefill[0].length <= 4096;       // real vocabularies: report tokens and timings only
process.stdout.write(JSON.stringify({ prefill_logits: small ? prefill : [], tokens, step_logits: small ? step_logits : [],
                                      prefill_ms, decode_ms }) + "\n");
