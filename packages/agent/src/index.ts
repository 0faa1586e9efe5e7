// Library surface of the agent, for tests and tools that run it in-process. The guest entry point is main.ts.
export { Agent, createAgent, serveSession, type AgentOptions, type AgentSession } from "./agent-core.js";
export { runSessionLoop, type ServedSession, type SessionLoopOptions } from "./transport/session-loop.js";
export { fdPortIo, type PortIo } from "./transport/port-io.js";
export { findPortDevice, openAgentPort } from "./transport/port.js";
export { validateExecSpec } from "./commands/spec.js";
export { validateIdentityRequest } from "./identity/request.js";
export type { IdentityOptions } from "./identity/refresh.js";
export { AGENT_VERSION } from "./version.js";
