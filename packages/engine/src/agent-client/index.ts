export { AgentClient, type ConnectOptions, type RunOptions, type RunResult, type WriteFileOptions } from "./client.js";
export { CommandHandle, type ExecOptions } from "./command.js";
export {
  AgentClientError,
  AgentDisconnectedError,
  AgentError,
  AgentProtocolError,
  AgentTimeoutError,
} from "./errors.js";
