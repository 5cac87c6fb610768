// The TypeScript MCP SDK's OAuth client against `soul-mcp serve --http --oauth`.
//
// Usage: MCP_NODE_MODULES=<.ci/node_modules> OWNER_PASSPHRASE=... node ts_oauth_client.mjs <mcp url>
// Its OAuthClientProvider discovers the server, registers, and sends "the browser" to the consent
// page, where this script plays the owner (passphrase, scopes read and write); then it finishes the
// authorization, calls tools, and prints what it saw as JSON for tests/test_oauth.py.

import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.env.MCP_NODE_MODULES;
const passphrase = process.env.OWNER_PASSPHRASE;
const [serverUrl] = process.argv.slice(2);
if (!nodeModules || !passphrase || !serverUrl) {
  console.error("set MCP_NODE_MODULES and OWNER_PASSPHRASE, and pass the server's /mcp URL");
  process.exit(2);
}
const sdkDir = join(nodeModules, "@modelcontextprotocol", "sdk");
const load = (path) => import(pathToFileURL(join(sdkDir, "dist", "esm", path)).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { UnauthorizedError } = await load("client/auth.js");

const CALLBACK = "http://127.0.0.1:9/callback";
let authorizeUrl;
const saved = {};
const provider = {
  get redirectUrl() {
    return CALLBACK;
  },
  get clientMetadata() {
    return {
      client_name: "TS Connector",
      redirect_uris: [CALLBACK],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  clientInformation: () => saved.client,
  saveClientInformation: (info) => {
    saved.client = info;
  },
  tokens: () => saved.tokens,
  saveTokens: (tokens) => {
    saved.tokens = tokens;
  },
  redirectToAuthorization: (url) => {
    authorizeUrl = url;
  },
  saveCodeVerifier: (verifier) => {
    saved.verifier = verifier;
  },
  codeVerifier: () => saved.verifier,
};

// The owner's browser: follows /authorize to the consent page and approves read and write.
async function approve(url) {
  const sent = await fetch(url, { redirect: "manual" });
  const consentUrl = new URL(sent.headers.get("location"), url);
  const page = await fetch(consentUrl);
  const html = await page.text();
  const field = (name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))[1];
  const cookie = page.headers.getSetCookie().map((c) => c.split(";")[0]).join("; ");
  const form = new URLSearchParams({ request: field("request"), csrf: field("csrf"), passphrase, action: "approve" });
  form.append("scope", "read");
  form.append("scope", "write");
  const answer = await fetch(new URL("/consent", consentUrl), {
    method: "POST",
    body: form,
    headers: { cookie },
    redirect: "manual",
  });
  return new URL(answer.headers.get("location")).searchParams.get("code");
}

const out = {};
const first = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
try {
  await new Client({ name: "ts-oauth", version: "1.0.0" }).connect(first);
  out.connectedWithoutConsent = true;
} catch (error) {
  out.unauthorized = error instanceof UnauthorizedError;
  await first.finishAuth(await approve(authorizeUrl));
}
const client = new Client({ name: "ts-oauth", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider }));
try {
  const remembered = await client.callTool({ name: "remember", arguments: { content: "stored by the TypeScript OAuth client" } });
  out.remember = remembered.structuredContent;
  const soul = await client.callTool({ name: "write_soul", arguments: { content: "# Me\n", reason: "test" } });
  out.writeSoul = { isError: soul.isError, text: soul.content[0].text };
  out.scope = saved.tokens.scope;
  out.hasRefreshToken = Boolean(saved.tokens.refresh_token);
} finally {
  await client.close();
}
console.log(JSON.stringify(out));
