// Greedy generation with transformers.js's browser build (AutoTokenizer + AutoModelForCausalLM.generate), as a web
// app calls it, from a `--target web` folder mounted at /m/<folder>/.
// args: {folder, ids | text, max_new_tokens, dtype?, device: "wasm" | "webgpu", wasm: "default" | "plain", threads?}
//   -> {input_ids, new_ids, text, load_ms, generate_ms}
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env } from "/node_modules/@huggingface/transformers/dist/transformers.min.js";
import { useLocalFiles } from "./transformers_env.mjs";

export default async function ({ folder = "model", ids, text, max_new_tokens = 8, dtype, device = "wasm", wasm = "default", threads }) {
  useLocalFiles(env, { wasm, threads });
  const tokenizer = await AutoTokenizer.from_pretrained(folder);
  const t0 = performance.now();
  const model = await AutoModelForCausalLM.from_pretrained(folder, { device, ...(dtype ? { dtype } : {}) });
  const loadMs = performance.now() - t0;
  ids ??= tokenizer.encode(text);
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  const t1 = performance.now();
  const out = await model.generate({ input_ids, attention_mask, max_new_tokens, do_sample: false });
  const generateMs = performance.now() - t1;
  const newIds = out.tolist()[0].map(Number).slice(ids.length);
  await model.dispose();
  return { input_ids: ids, new_ids: newIds, text: tokenizer.decode(newIds, { skip_special_tokens: true }),
           load_ms: loadMs, generate_ms: generateMs };
}
