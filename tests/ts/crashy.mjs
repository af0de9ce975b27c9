// A stdio MCP server (the official TypeScript SDK) whose `crash` tool kills its own
// process in the middle of the call; `echo` answers; `slow` waits until it is cancelled
// and writes "cancelled" to the file. Each start is written to the file named by
// STARTS_FILE. Used by mcp-policy/tests/upstreams.rs.
import { appendFileSync } from "node:fs";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

if (process.env.STARTS_FILE) appendFileSync(process.env.STARTS_FILE, "started\n");
const server = new McpServer({ name: "crashy", version: "1.0.0" });
server.registerTool("echo", { inputSchema: { text: z.string() } }, async ({ text }) => ({
  content: [{ type: "text", text: `echo: ${text}` }],
}));
server.registerTool("crash", { inputSchema: {} }, async () => {
  setTimeout(() => process.exit(3), 50);
  await new Promise(() => {});
});
server.registerTool("slow", { inputSchema: {} }, async (_args, extra) => {
  await new Promise((resolve) => extra.signal.addEventListener("abort", resolve));
  if (process.env.STARTS_FILE) appendFileSync(process.env.STARTS_FILE, "cancelled\n");
  return { content: [{ type: "text", text: "cancelled" }] };
});
await server.connect(new StdioServerTransport());
