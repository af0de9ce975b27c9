// Drives an MCP server with the official TypeScript SDK client and prints what an agent
// would see, one JSON line per step. Used by tests/ts_client.rs.
//
//   node client.mjs URL TOKEN STEPS_JSON
//   node client.mjs stdio COMMAND_JSON STEPS_JSON   (COMMAND_JSON: ["program", "arg", …];
//                                                   the SDK's stdio client starts it)
//
// STEPS_JSON is an array of {"list": true} or {"call": NAME, "args": {...}}; a call
// with "progress": true asks for progress and prints the updates it got beside its
// result; with "abortAfterMs": N the client gives up on the call after N ms (the SDK then
// sends notifications/cancelled).
//
// An optional fourth argument, "accept" or "decline", declares the elicitation
// capability and answers every elicitation that way (accept with {"approve": true});
// the messages shown are printed last as {"elicited": [...]}. "url" declares URL-mode
// elicitation only (the client opens links for its user, shows no form).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [url, token, stepsJson, elicit] = process.argv.slice(2);
let transport;
if (url === "stdio") {
  const [command, ...args] = JSON.parse(token);
  transport = new StdioClientTransport({ command, args, stderr: "inherit" });
} else {
  transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
}
const elicited = [];
const client = new Client(
  { name: "ts-sdk-client", version: "1.0.0" },
  elicit === "url"
    ? { capabilities: { elicitation: { url: {} } } }
    : elicit
      ? { capabilities: { elicitation: {} } }
      : undefined,
);
if (elicit && elicit !== "url") {
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    elicited.push(request.params.message);
    return elicit === "accept"
      ? { action: "accept", content: { approve: true } }
      : { action: "decline" };
  });
}
await client.connect(transport);

for (const step of JSON.parse(stepsJson)) {
  try {
    if (step.list) {
      const { tools } = await client.listTools();
      console.log(JSON.stringify({ tools: tools.map((t) => t.name).sort() }));
    } else {
      const progress = [];
      const options = {};
      if (step.progress) options.onprogress = (update) => progress.push(update);
      if (step.abortAfterMs) options.signal = AbortSignal.timeout(step.abortAfterMs);
      const result = await client.callTool({ name: step.call, arguments: step.args }, undefined, options);
      console.log(JSON.stringify(step.progress ? { result, progress } : { result }));
    }
  } catch (error) {
    const data = error.data ?? null;
    console.log(JSON.stringify({ error: { code: error.code ?? null, message: String(error.message), data } }));
  }
}
if (elicit) console.log(JSON.stringify({ elicited }));
await client.close();
