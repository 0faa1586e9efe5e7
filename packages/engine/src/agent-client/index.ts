export { AgentClient, type ConnectOptions, type RunOptions, type RunResult, type WriteFileOptions } from "./client.js";
export { CommandHandle, type AttachOptions, type ExecOptions } from "./command.js";
export {
  AgentClientError,
  AgentDisconnectedError,
  AgentError,
  AgentExitedError,
  AgentProtocolError,
  AgentTimeoutError,
  CommandDetachedError,
} from "./errors.js";
export { createIdentityRequest } from "./identity.js";
export { parseWatchEvent, type WatchOptions } from "./watch.js";
