// Drives the example chat page (tools/web/chat, served by `gemma-export serve-web`) as a user would: waits until the
// model is loaded, types `text`, presses Send, waits for the reply. args: {text, timeout_ms}
//   -> {reply: window.lastReply ({ids, text, seconds, tokens}), shown: the reply bubble's text, status}
const wait = async (test, ms, what) => {
  const end = performance.now() + ms;
  while (!test()) {
    if (document.body.dataset.state === "error") throw new Error(`chat page: ${document.getElementById("status").textContent}`);
    if (performance.now() > end) throw new Error(`chat page: no ${what} within ${ms} ms`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
};

export default async function ({ text, timeout_ms = 120000 }) {
  await wait(() => document.body.dataset.state === "ready", timeout_ms, "model loaded");
  document.getElementById("prompt").value = text;
  document.getElementById("send").click();
  await wait(() => window.lastReply && document.body.dataset.state === "ready", timeout_ms, "reply");
  const bubbles = document.querySelectorAll(".turn.model");
  return { reply: window.lastReply, shown: bubbles[bubbles.length - 1].textContent,
           status: document.getElementById("status").textContent };
}
