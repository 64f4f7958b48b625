// Embeds texts with transformers.js the way EmbeddingGemma's ONNX model card does (AutoTokenizer + AutoModel,
// `sentence_embedding`), offline, from a local folder written by `gemma-export --target web`.
//   node embed.mjs FOLDER [DTYPE]  < texts.json   ->   {"input_ids": [[...]], "sentence_embedding": [[...]]}
// DTYPE: transformers.js's dtype (fp32, fp16, q8, q4); default: the folder's config.json transformers.js_config.
import { AutoModel, AutoTokenizer, env } from "@huggingface/transformers";
import { readJson, useLocalFolder } from "./local.mjs";

const [folder, dtype] = process.argv.slice(2);
const name = useLocalFolder(env, folder);
const texts = await readJson();

const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModel.from_pretrained(name, { device: "cpu", ...(dtype ? { dtype } : {}) });
const inputs = await tokenizer(texts, { padding: true });
const { sentence_embedding } = await model(inputs);
const ids = inputs.input_ids.tolist().map((row, i) =>
  row.filter((_, j) => inputs.attention_mask.tolist()[i][j] === 1n).map(Number));
process.stdout.write(JSON.stringify({ input_ids: ids, sentence_embedding: sentence_embedding.tolist() }) + "\n");
