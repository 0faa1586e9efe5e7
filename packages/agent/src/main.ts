// Entry point of the guest agent (bundled to dist/agent.mjs). Must stay the first import: sizes the threadpool.
import "./threadpool.js";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createAgent } from "./agent-core.js";
import { logProblem } from "./log.js";
import { openAgentPort } from "./transport/port.js";
import { runSessionLoop } from "./transport/session-loop.js";

// A dead agent is a dead sandbox: report anything that slipped through and keep serving.
process.on("uncaughtException", (error) => logProblem("uncaught exception", error));
process.on("unhandledRejection", (reason) => logProblem("unhandled rejection", reason));

// The system disk's layout is the engine's business: it tells the agent where its helpers live.
const { values: args } = parseArgs({ options: { "identity-helper": { type: "string" }, spawner: { type: "string" }, watcher: { type: "string" } } });
const agent = createAgent({ identity: { helperPath: args["identity-helper"] }, spawnerPath: args.spawner, watcherPath: args.watcher });
const { device, io } = await openAgentPort();
agent.markServing(Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1000);
logProblem(`serving on ${device} (pid ${process.pid})`);
await runSessionLoop(io, (duplex) => agent.serveSession(duplex));
