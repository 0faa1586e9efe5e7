import type { AgentErrorCode } from "@codecourier/protocol";

/** Base class of every error the agent client raises. */
export class AgentClientError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The agent answered with an error response (or a local limit of the client was hit, then `status` is 0). */
export class AgentError extends AgentClientError {
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    readonly status: number = 0,
  ) {
    super(message);
  }
}

/** The guest sent something that breaks the protocol: bad HTTP/2, bad records, oversized or malformed JSON. */
export class AgentProtocolError extends AgentClientError {}

/** The connection to the agent failed, closed, or the request was cancelled underneath. */
export class AgentDisconnectedError extends AgentClientError {}

/**
 * The agent process itself exited (the guest closed its port: it was killed, or crashed) under a session. What it
 * ran went with it: guest-spawner kills the process group of every command when the agent goes away.
 */
export class AgentExitedError extends AgentDisconnectedError {}

/** The agent did not answer in time. */
export class AgentTimeoutError extends AgentClientError {}

/**
 * A background command's output was taken over by a newer attach (from this host or another): this handle gets
 * nothing more, while the command keeps running.
 */
export class CommandDetachedError extends AgentClientError {}
