// Drives an MCP server with the official TypeScript SDK client and prints what an agent
// would see, one JSON line per step. Used by tests/ts_client.rs.
//
//   node client.mjs URL TOKEN STEPS_JSON
//
// STEPS_JSON is an array of {"list": true} or {"call": NAME, "args": {...}}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, stepsJson] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-sdk-client", version: "1.0.0" });
await client.connect(transport);

for (const step of JSON.parse(stepsJson)) {
  try {
    if (step.list) {
      const { tools } = await client.listTools();
      console.log(JSON.stringify({ tools: tools.map((t) => t.name).sort() }));
    } else {
      const result = await client.callTool({ name: step.call, arguments: step.args });
      console.log(JSON.stringify({ result }));
    }
  } catch (error) {
    console.log(JSON.stringify({ error: { code: error.code ?? null, message: String(error.message) } }));
  }
}
await client.close();
