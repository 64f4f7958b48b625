// EmbeddingGemma's speed in the browser as an app gets it: transformers.js's browser build (its default
// onnxruntime-web build unless `wasm` says otherwise), AutoTokenizer + AutoModel on a `--target web` folder, the
// tokenizer's time included. args: {folder: mount name, texts: {label: [text, ...]}, repeats, budget (s), device,
// threads?, wasm?, dtype?}. Per label: `repeats` texts one call each (fewer once `budget` seconds have passed, at
// least one), after one warm-up call, then all of them in one padded call (skipped when the one-text calls say it
// would take over 4 budgets, unless the label is in `vectorsOf`: the vectors wanted).
// -> {load_s, rates: {label: {tokens, single_per_s, batch, batch_per_s}}, vectors: {label: the batch's vectors}}.
import { AutoModel, AutoTokenizer, env } from "/node_modules/@huggingface/transformers/dist/transformers.min.js";
import { useLocalFiles } from "./transformers_env.mjs";

export default async function ({ folder = "model", texts, repeats = 8, budget = 30, device = "wasm", threads,
                                 wasm = "default", dtype, vectorsOf = [] }) {
  useLocalFiles(env, { wasm, threads });
  const t0 = performance.now();
  const tokenizer = await AutoTokenizer.from_pretrained(folder);
  const model = await AutoModel.from_pretrained(folder, { device, ...(dtype ? { dtype } : {}) });
  const load_s = (performance.now() - t0) / 1000;
  const embed = async (batch) => {
    const inputs = await tokenizer(batch, { padding: true });
    return { tokens: inputs.input_ids.dims[1], vectors: (await model(inputs)).sentence_embedding };
  };
  const rates = {}, vectors = {};
  for (const [label, batch] of Object.entries(texts)) {
    const { tokens } = await embed([batch[0]]);
    let done = 0;
    const t = performance.now();
    while (done < Math.min(repeats, batch.length) && (done === 0 || performance.now() - t < budget * 1000)) {
      await embed([batch[done]]);
      done += 1;
    }
    const single_s = (performance.now() - t) / 1000 / done;
    rates[label] = { tokens, singles: done, single_per_s: 1 / single_s, batch: batch.length, batch_per_s: null };
    if (single_s * batch.length > 4 * budget && !vectorsOf.includes(label)) continue;   // too slow to batch
    const tb = performance.now();
    const all = await embed(batch);
    rates[label].batch_per_s = batch.length / ((performance.now() - tb) / 1000);
    vectors[label] = all.vectors.tolist();
  }
  await model.dispose();
  return { load_s, rates, vectors };
}
