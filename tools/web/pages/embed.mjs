// EmbeddingGemma's vectors from a `--target web` folder through transformers.js's browser build (dist/
// transformers.min.js, what jsDelivr and unpkg serve), as its model card does: AutoTokenizer + AutoModel,
// `sentence_embedding`. args: {folder: mount name, texts, dtype?, device: "wasm" | "webgpu", threads?,
// wasm: "default" (transformers.js's choice: onnxruntime-web's asyncify/WebGPU build) | "plain" (the wasm-only build)}.
import { AutoModel, AutoTokenizer, env } from "/node_modules/@huggingface/transformers/dist/transformers.min.js";
import { useLocalFiles } from "./transformers_env.mjs";

export default async function ({ folder = "model", texts, dtype, device = "wasm", threads, wasm = "default" }) {
  useLocalFiles(env, { wasm, threads });
  const tokenizer = await AutoTokenizer.from_pretrained(folder);
  const model = await AutoModel.from_pretrained(folder, { device, ...(dtype ? { dtype } : {}) });
  const inputs = await tokenizer(texts, { padding: true });
  const { sentence_embedding } = await model(inputs);
  const mask = inputs.attention_mask.tolist();
  const ids = inputs.input_ids.tolist().map((row, i) => row.filter((_, j) => mask[i][j] === 1n).map(Number));
  const result = { input_ids: ids, sentence_embedding: sentence_embedding.tolist() };
  await model.dispose();
  return result;
}
