// What this browser offers a web app: cross-origin isolation (wasm threads), cores, the largest wasm32 memory a
// page can grow (64 KiB pages up to 65536 = 4 GiB), whether memory64 exists, and the WebGPU adapter with its limits.
export default async function () {
  const out = { userAgent: navigator.userAgent, crossOriginIsolated, hardwareConcurrency: navigator.hardwareConcurrency,
                deviceMemoryGB: navigator.deviceMemory ?? null, jsHeapSizeLimit: performance.memory?.jsHeapSizeLimit ?? null };
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 65536 });
  let pages = 1;
  for (const step of [16384, 4096, 1024, 256, 64, 16, 1]) {
    try { while (pages + step <= 65536) { memory.grow(step); pages += step; } } catch { /* next, smaller step */ }
  }
  out.wasm32MaxBytes = pages * 65536;
  out.memory64 = false;
  for (const key of ["address", "index"]) {   // the JS API's name for it, then the proposal's older one
    try { new WebAssembly.Memory({ initial: 1n, maximum: 2n, [key]: "i64" }); out.memory64 = true; } catch { /* absent */ }
  }
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  if (adapter) {
    const info = adapter.info ?? {};
    out.webgpu = { vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description,
                   maxBufferSize: adapter.limits.maxBufferSize,
                   maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
                   shaderF16: adapter.features.has("shader-f16") };
  } else out.webgpu = null;
  return out;
}
