// Connects the official TypeScript SDK client to each URL in turn and lists its tools,
// printing one JSON line per URL: {"tools": [names]} or {"error": {code, message}}.
// Used by tests/unreadable_lists.rs.
//
//   node list_tools.mjs URL...
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

for (const url of process.argv.slice(2)) {
  const transport = new StreamableHTTPClientTransport(new URL(url));
  const client = new Client({ name: "ts-sdk-client", version: "1.0.0" });
  try {
    await client.connect(transport);
    const { tools } = await client.listTools(undefined, { timeout: 5000 });
    console.log(JSON.stringify({ tools: tools.map((t) => t.name).sort() }));
  } catch (error) {
    console.log(JSON.stringify({ error: { code: error.code ?? null, message: String(error.message) } }));
  }
  await client.close();
}
