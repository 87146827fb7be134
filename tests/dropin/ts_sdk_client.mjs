// A TypeScript Agent SDK user, unchanged but for pathToClaudeCodeExecutable: streaming input with
// canUseTool over two turns, then a new query() that resumes the conversation.
// Usage: node ts_sdk_client.mjs <claude executable> <cwd>; prints one JSON object.
import { query } from "@anthropic-ai/claude-agent-sdk";

const [executable, cwd] = process.argv.slice(2);
const out = { asked: [], results: [], resume: null };
let release;
const firstDone = new Promise((resolve) => (release = resolve));

function user(content) {
  return { type: "user", message: { role: "user", content }, parent_tool_use_id: null, session_id: "" };
}

async function* prompts() {
  yield user(`[[bash:touch ${cwd}/ts-allowed]][[say:one]]`);
  await firstDone;
  yield user("remember TANGERINE [[say:two]]");
}

const first = query({
  prompt: prompts(),
  options: {
    pathToClaudeCodeExecutable: executable,
    cwd,
    permissionMode: "default",
    canUseTool: async (toolName, input) => {
      out.asked.push(toolName);
      return { behavior: "allow", updatedInput: input };
    },
  },
});
for await (const message of first) {
  if (message.type === "result") {
    out.results.push({ result: message.result, session_id: message.session_id });
    if (out.results.length === 1) release();
  }
}

const again = query({
  prompt: "what fruit? [[say:TANGERINE]]",
  options: { pathToClaudeCodeExecutable: executable, cwd, resume: out.results[0].session_id },
});
for await (const message of again) {
  if (message.type === "result") out.resume = { result: message.result, session_id: message.session_id };
}
console.log(JSON.stringify(out));
