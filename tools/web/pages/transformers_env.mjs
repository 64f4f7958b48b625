// transformers.js in the browser, offline: models from the harness's mounts (/m/<name>/), onnxruntime-web's wasm
// files from local node_modules (transformers.js would fetch them from jsDelivr), no Cache Storage between runs.
const ORT = "/node_modules/onnxruntime-web/dist/";

// wasm: "default" is transformers.js's own pick (the asyncify build, which also carries WebGPU); "plain" is the
// wasm-only build, which transformers.js itself picks only on Safari < 26 without WebGPU.
export function useLocalFiles(env, { wasm = "default", threads } = {}) {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = "/m/";
  env.useBrowserCache = false;
  env.useWasmCache = false;
  const suffix = { default: ".asyncify", plain: "" }[wasm];
  if (suffix === undefined) throw new Error(`wasm build ${wasm}: use default or plain`);
  env.backends.onnx.wasm.wasmPaths = { mjs: `${ORT}ort-wasm-simd-threaded${suffix}.mjs`,
                                       wasm: `${ORT}ort-wasm-simd-threaded${suffix}.wasm` };
  if (threads) env.backends.onnx.wasm.numThreads = threads;
}
