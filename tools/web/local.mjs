// What the Node scripts here share: transformers.js pointed at a local `--target web` folder (no hub), and the
// request read from stdin as JSON.
import path from "node:path";

/** Points transformers.js's `env` at FOLDER's parent; -> the model name to pass to from_pretrained. */
export function useLocalFolder(env, folder) {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = path.dirname(path.resolve(folder)) + "/";
  return path.basename(path.resolve(folder));
}

/** stdin, parsed as JSON. */
export async function readJson() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}
