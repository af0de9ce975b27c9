// A task created with the official TypeScript SDK client (MCP 2025-11-25: a
// task-augmented tools/call, polled with tasks/get, read with tasks/result), and a second
// client with another credential trying to reach it. One JSON line per step. Used by
// mcp-policy/tests/interop_ts.rs.
//
//   node tasks.mjs URL OWNER_TOKEN OTHER_TOKEN
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, ownerToken, otherToken] = process.argv.slice(2);
const out = (value) => console.log(JSON.stringify(value));
const failure = (error) => ({ code: error.code ?? null, message: String(error.message) });

async function connect(token) {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "ts-sdk-tasks", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

const owner = await connect(ownerToken);
const other = await connect(otherToken);
const stream = owner.experimental.tasks.callToolStream(
  { name: "simulate-research-query", arguments: { topic: "policy layers" } },
  CallToolResultSchema,
  { task: { ttl: 60000 } },
);
for await (const message of stream) {
  if (message.type === "taskCreated") {
    const taskId = message.task.taskId;
    out({ created: taskId });
    const attempts = {
      "tasks/get": () => other.experimental.tasks.getTask(taskId),
      "tasks/result": () => other.experimental.tasks.getTaskResult(taskId, CallToolResultSchema),
      "tasks/cancel": () => other.experimental.tasks.cancelTask(taskId),
    };
    for (const [method, attempt] of Object.entries(attempts)) {
      try {
        out({ other: method, answer: await attempt() });
      } catch (error) {
        out({ other: method, error: failure(error) });
      }
    }
    const listed = await other.experimental.tasks.listTasks();
    out({ otherList: listed.tasks.map((task) => task.taskId) });
  } else if (message.type === "taskStatus") {
    out({ status: message.task.status });
  } else if (message.type === "result") {
    out({ result: message.result });
  } else if (message.type === "error") {
    out({ error: failure(message.error) });
  }
}
const listed = await owner.experimental.tasks.listTasks();
out({ ownerList: listed.tasks.map((task) => task.taskId) });
await owner.close();
await other.close();
