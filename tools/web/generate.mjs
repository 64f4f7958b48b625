// Greedy generation with transformers.js (AutoTokenizer + AutoModelForCausalLM), offline, from a local folder written
// by `gemma-export --target web`, as a web app would call it (Node: onnxruntime-node's CPU binary).
//   node generate.mjs FOLDER MAX_NEW_TOKENS [DTYPE] < {"ids": [...]} | {"text": "..."} | {"chat": [{role, content}]}
//   -> {"input_ids": [...], "new_ids": [...], "text": "..."}
// DTYPE: transformers.js's dtype (fp32, fp16, q8, q4); default: the folder's config.json transformers.js_config.
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env } from "@huggingface/transformers";
import { readJson, useLocalFolder } from "./local.mjs";

const [folder, maxNew, dtype] = process.argv.slice(2);
const name = useLocalFolder(env, folder);
const request = await readJson();

const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForCausalLM.from_pretrained(name, { device: "cpu", ...(dtype ? { dtype } : {}) });
let ids;
if (request.ids) ids = request.ids;
else if (request.chat) ids = tokenizer.apply_chat_template(request.chat, { add_generation_prompt: true, return_tensor: false }).input_ids;
else ids = tokenizer.encode(request.text);
const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
const out = await model.generate({ input_ids, attention_mask, max_new_tokens: Number(maxNew), do_sample: false });
const all = out.tolist()[0].map(Number);
const new_ids = all.slice(ids.length);
process.stdout.write(JSON.stringify({ input_ids: ids, new_ids, text: tokenizer.decode(new_ids, { skip_special_tokens: true }) }) + "\n");
