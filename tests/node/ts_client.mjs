// A TypeScript MCP SDK client (@modelcontextprotocol/sdk) driving `soul-mcp serve` over stdio.
//
// Usage: MCP_NODE_MODULES=<.ci/node_modules> node ts_client.mjs <command> [args...]
// Prints one JSON object with what the server answered; tests/test_typescript_client.py checks it.
//
// The SDK lives in .ci/node_modules, which is not on this file's resolution path, and ESM ignores
// NODE_PATH; so the modules are imported by absolute file URL (the package's "./*" export maps to
// dist/esm/*). Their own dependencies then resolve from .ci/node_modules as usual.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.env.MCP_NODE_MODULES;
if (!nodeModules) {
  console.error("set MCP_NODE_MODULES to the node_modules folder that holds @modelcontextprotocol/sdk");
  process.exit(2);
}
const sdkDir = join(nodeModules, "@modelcontextprotocol", "sdk");
const load = (path) => import(pathToFileURL(join(sdkDir, "dist", "esm", path)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport, getDefaultEnvironment } = await load("client/stdio.js");
const sdkVersion = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8")).version;

const [command, ...args] = process.argv.slice(2);
// The transport passes the server only HOME, LOGNAME, PATH, SHELL, TERM and USER unless told
// otherwise: forward soul-mcp's own settings explicitly, as a host's config "env" block would.
const env = getDefaultEnvironment();
for (const [key, value] of Object.entries(process.env)) {
  if (key.startsWith("SOUL_MCP_")) env[key] = value;
}

const transport = new StdioClientTransport({ command, args, env, stderr: "inherit" });
const client = new Client({ name: "ts-sdk-test", version: "1.0.0" });
const out = { sdkVersion };
await client.connect(transport);
try {
  out.serverVersion = client.getServerVersion();
  out.capabilities = client.getServerCapabilities();
  // listTools first: the SDK then validates every structuredContent against the tool's outputSchema
  // and throws on a mismatch, so each call below also checks the server's declared schemas.
  out.tools = (await client.listTools()).tools.map((tool) => tool.name);
  out.wakeUp = (await client.callTool({ name: "wake_up", arguments: { focus: "typescript" } })).structuredContent;
  const content = "The TypeScript client stored this memory";
  out.remember = (await client.callTool({ name: "remember", arguments: { content, tags: ["ts"] } })).structuredContent;
  out.rememberAgain = (await client.callTool({ name: "remember", arguments: { content } })).structuredContent;
  out.recall = (await client.callTool({ name: "recall", arguments: { query: "typescript memory" } })).structuredContent;
  out.writeIntent = (
    await client.callTool({ name: "write_intent", arguments: { content: "Check the TypeScript client" } })
  ).structuredContent;
  out.intentResource = (await client.readResource({ uri: "self://intent" })).contents;
  out.history = (await client.callTool({ name: "history", arguments: { document: "intent" } })).structuredContent;
  out.toolError = await client.callTool({ name: "forget", arguments: { memory_id: "m_000000000000", reason: "x" } });
  out.prompts = (await client.listPrompts()).prompts.map((prompt) => prompt.name);
} finally {
  await client.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
