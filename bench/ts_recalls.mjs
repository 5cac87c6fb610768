// The TypeScript MCP SDK's stdio client (what Claude Desktop, Claude Code and Cursor are built on)
// timing recall round trips against `soul-mcp serve`; bench/latency.py runs it.
//
// Usage: MCP_NODE_MODULES=<.ci/node_modules> node ts_recalls.mjs WORKLOAD.json <command> [args...]
// WORKLOAD.json: {"first": {...}, "warmup": [{...}], "settle_s": 5, "recalls": [{...}, ...]} (recall
// arguments). Prints {"sdkVersion", "first_ms", "ms": [...]} as JSON on stdout.
// The SDK is imported by file URL from MCP_NODE_MODULES, as in tests/node/ts_client.mjs.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";

const sdkDir = join(process.env.MCP_NODE_MODULES, "@modelcontextprotocol", "sdk");
const load = (path) => import(pathToFileURL(join(sdkDir, "dist", "esm", path)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport, getDefaultEnvironment } = await load("client/stdio.js");
const sdkVersion = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8")).version;

const [workloadPath, command, ...args] = process.argv.slice(2);
const work = JSON.parse(readFileSync(workloadPath, "utf8"));
const env = getDefaultEnvironment();
for (const [key, value] of Object.entries(process.env)) {
  if (key.startsWith("SOUL_MCP_")) env[key] = value;
}
const client = new Client({ name: "soul-mcp-bench-ts", version: "1.0.0" });
await client.connect(new StdioClientTransport({ command, args, env, stderr: "inherit" }));

async function recall(argumentsOf) {
  const started = performance.now();
  const result = await client.callTool({ name: "recall", arguments: argumentsOf });
  const ms = performance.now() - started;
  if (result.isError) throw new Error(`recall(${JSON.stringify(argumentsOf)}) failed: ${result.content[0].text}`);
  return ms;
}

try {
  await client.listTools(); // the SDK then validates each structuredContent against the output schema
  const first_ms = await recall(work.first);
  for (const argumentsOf of work.warmup) await recall(argumentsOf);
  await new Promise((resolve) => setTimeout(resolve, work.settle_s * 1000));
  const ms = [];
  for (const argumentsOf of work.recalls) ms.push(await recall(argumentsOf));
  console.log(JSON.stringify({ sdkVersion, first_ms, ms }));
} finally {
  await client.close();
}
