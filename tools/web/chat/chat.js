// A chat box over a `gemma-export --target web` folder with transformers.js, every file served by
// `gemma-export serve-web` from 127.0.0.1 (no CDN): the library from /transformers/, onnxruntime-web's wasm files
// from /ort/, the model from /models/. Query parameters: device (wasm | webgpu; default wasm), max_new_tokens
// (default 128), threads (wasm threads; default: transformers.js's). For tests: document.body.dataset.state is
// loading | ready | generating | error, and window.lastReply holds the last reply's {ids, text, seconds, tokens}.
import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from "/transformers/transformers.min.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const device = params.get("device") || "wasm";
const maxNew = Number(params.get("max_new_tokens") || 128);
const setState = (state, text) => { document.body.dataset.state = state; $("status").textContent = text; };

try {
  const info = await (await fetch("/serve-web.json")).json();
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = "/models/";
  env.backends.onnx.wasm.wasmPaths = "/ort/";
  if (params.get("threads")) env.backends.onnx.wasm.numThreads = Number(params.get("threads"));
  const t0 = performance.now();
  const tokenizer = await AutoTokenizer.from_pretrained(info.model);
  const model = await AutoModelForCausalLM.from_pretrained(info.model, { device });
  setState("ready", `${info.model} (${info.dtype}) on ${device}, loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  $("prompt").disabled = $("send").disabled = false;
  const messages = [];

  const bubble = (role, text) => {
    const div = document.createElement("div");
    div.className = `turn ${role}`;
    div.textContent = text;
    $("log").append(div);
    return div;
  };

  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || document.body.dataset.state !== "ready") return;
    $("prompt").value = "";
    messages.push({ role: "user", content: text });
    bubble("user", text);
    const reply = bubble("model", "");
    setState("generating", "generating…");
    try {
      const inputs = tokenizer.apply_chat_template(messages, { add_generation_prompt: true, return_dict: true });
      const streamer = new TextStreamer(tokenizer, { skip_prompt: true, skip_special_tokens: true,
                                                     callback_function: (piece) => { reply.textContent += piece; } });
      const start = performance.now();
      const out = await model.generate({ ...inputs, max_new_tokens: maxNew, do_sample: false, streamer });
      const seconds = (performance.now() - start) / 1000;
      const ids = out.tolist()[0].slice(inputs.input_ids.dims[1]).map(Number);
      const answer = tokenizer.decode(ids, { skip_special_tokens: true });
      reply.textContent = answer;
      messages.push({ role: "assistant", content: answer });
      window.lastReply = { ids, text: answer, seconds, tokens: ids.length };
      setState("ready", `${ids.length} tokens in ${seconds.toFixed(1)} s (${(ids.length / seconds).toFixed(1)} tokens/s, ${device})`);
    } catch (e) {
      setState("error", `error: ${e.message ?? e}`);
    }
  });
} catch (e) {
  setState("error", `error: ${e.message ?? e}`);
}
