import type {
  ApiCommandResult,
  ApiSandbox,
  ApiSandboxList,
  ApiSandboxState,
  CreateSandboxRequest,
  RunCommandRequest,
} from "@codecourier/protocol/api";
import { ApiClient, type RequestOptions } from "./client.js";
import { DEFAULT_COMMAND_OUTPUT_BYTES, MAX_COMMAND_OUTPUT_BYTES, decodeCommandResult, requireWholeOutput, type CommandResult } from "./command-result.js";
import type { ConnectionOptions } from "./env.js";
import { CommandExitError, NotFoundError, TimeoutError } from "./errors.js";
import { SandboxFiles } from "./files.js";
import { SandboxGit } from "./git.js";
import { SandboxNetwork } from "./network.js";
import { SandboxProcesses, SandboxPty, type CommandProcess, type WaitOptions } from "./processes.js";

export type SandboxInfo = ApiSandbox;
export type SandboxState = ApiSandboxState;
export type { CommandResult };

/** The create request (template, cpu, memoryMB, diskMB, env, metadata, timeoutMs, onTimeout, region) and where to send it. */
export type CreateSandboxOptions = CreateSandboxRequest & ConnectionOptions & RequestOptions;

/**
 * The command fields, stdin, and `maxOutputBytes`: the most bytes of each stream the result holds (default 1 MiB, at
 * most 16 MiB; see stdoutTruncated). For more, stream it: onStdout, or a background process's output().
 */
export type RunCommandOptions = Omit<RunCommandRequest, "cmd" | "argv"> &
  RequestOptions & {
    /** Called with each piece of stdout as it arrives (the result still holds it, up to maxOutputBytes). */
    onStdout?: (text: string) => void;
    onStderr?: (text: string) => void;
    /**
     * Throw unless the command exits 0: CommandExitError, or TimeoutError if it ran past timeoutMs (both carry
     * the result). Off by default because a non-zero exit is often an answer (grep, test), not a failure.
     */
    check?: boolean;
  };

/** runCommand with `background: true`: it answers at once with a process handle (wait, kill, sendStdin, output). */
export type BackgroundCommandOptions = Omit<RunCommandOptions, "check" | "onStdout" | "onStderr" | "maxOutputBytes"> & {
  background: true;
  /** Keep stdin open for sendStdin() (default false: stdin ends after `stdin`, or at once). */
  keepStdinOpen?: boolean;
};

export interface ListSandboxesQuery {
  /** Default: the live ones (running and paused). */
  state?: SandboxState;
  /** Only sandboxes whose metadata has all these entries. */
  metadata?: Record<string, string>;
  /** Page size, 1-1000; default 100. */
  limit?: number;
  /** The previous page's nextCursor. */
  cursor?: string;
}

export interface SandboxList {
  sandboxes: SandboxInfo[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * The key `await using` disposes with. Runtimes without Symbol.asyncDispose are given the registry symbol that
 * the common polyfills install, so such a polyfill still finds the method.
 */
const asyncDispose: typeof Symbol.asyncDispose = (Symbol.asyncDispose ?? Symbol.for("Symbol.asyncDispose")) as typeof Symbol.asyncDispose;

/**
 * A handle on one sandbox. It holds only the id and the connection: state lives on the server (`info()`), so a
 * handle never goes stale and several handles on one sandbox (here, in other processes) agree.
 *
 * Capabilities are properties (`network`; later `files`, `git`, processes), each built in the constructor from
 * the shared client and the id.
 */
export class Sandbox {
  readonly network: SandboxNetwork;
  readonly files: SandboxFiles;
  readonly git: SandboxGit;
  readonly processes: SandboxProcesses;
  readonly pty: SandboxPty;
  readonly #client: ApiClient;
  readonly #path: string;

  private constructor(
    client: ApiClient,
    readonly sandboxId: string,
  ) {
    this.#client = client;
    this.#path = `/v1/sandboxes/${encodeURIComponent(sandboxId)}`;
    this.network = new SandboxNetwork(client, this.#path);
    this.files = new SandboxFiles(client, this.#path);
    // Git's output is parsed whole: the largest cap, and an error rather than a parse of a cut one.
    this.git = new SandboxGit(async (argv, options) =>
      requireWholeOutput(await this.runCommand(argv, { ...options, maxOutputBytes: MAX_COMMAND_OUTPUT_BYTES }), `git ${argv[1] ?? ""}`.trim()),
    );
    this.processes = new SandboxProcesses(client, this.#path);
    this.pty = new SandboxPty(this.processes);
  }

  /** A new sandbox from a template (default "base"). */
  static async create(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const { apiKey, url, signal, ...request } = options;
    const client = new ApiClient({ apiKey, url });
    const info = await client.request<ApiSandbox>("POST", "/v1/sandboxes", { body: request, signal });
    return new Sandbox(client, info.sandboxId);
  }

  /**
   * A handle on an existing sandbox, e.g. one another process created. Connecting resumes a paused sandbox, so
   * the handle is ready to run commands; a stopped one is a SandboxGoneError.
   */
  static async connect(sandboxId: string, options: ConnectionOptions & RequestOptions = {}): Promise<Sandbox> {
    const client = new ApiClient(options);
    const info = await client.request<ApiSandbox>("POST", `/v1/sandboxes/${encodeURIComponent(sandboxId)}/connect`, {
      signal: options.signal,
    });
    return new Sandbox(client, info.sandboxId);
  }

  /**
   * A handle on an existing sandbox without resuming it (to pause, kill, inspect or snapshot it as it is).
   * A sandbox this key does not own is a NotFoundError.
   */
  static async get(sandboxId: string, options: ConnectionOptions & RequestOptions = {}): Promise<Sandbox> {
    const client = new ApiClient(options);
    const info = await client.request<ApiSandbox>("GET", `/v1/sandboxes/${encodeURIComponent(sandboxId)}`, { signal: options.signal });
    return new Sandbox(client, info.sandboxId);
  }

  /** The sandbox as the server sees it now (state, timeout, metadata). */
  async info(options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.#client.request<ApiSandbox>("GET", this.#path, options);
  }

  /**
   * Runs a command to completion and returns its exit status and output, whatever the exit code (see `check`).
   * A string runs with /bin/sh -c; an array is an argv, run without a shell, so its words need no quoting.
   * The result holds at most `maxOutputBytes` of each stream (default 1 MiB): past it the rest is dropped, the
   * command still runs to its end, and `stdoutTruncated` / `stdoutTotalBytes` say so. Output that is not UTF-8 text
   * (binary, NUL bytes) is exact in `stdoutBytes`.
   * With onStdout/onStderr the output also arrives piece by piece as it is written; aborting `signal` then kills
   * the command. With `background: true` it answers at once with a CommandProcess.
   * A paused sandbox is resumed first.
   */
  runCommand(command: string | readonly string[], options: BackgroundCommandOptions): Promise<CommandProcess>;
  runCommand(command: string | readonly string[], options?: RunCommandOptions): Promise<CommandResult>;
  async runCommand(
    command: string | readonly string[],
    options: RunCommandOptions | BackgroundCommandOptions = {},
  ): Promise<CommandResult | CommandProcess> {
    if ("background" in options && options.background) {
      const { background: _background, ...start } = options;
      return this.processes.start(command, start);
    }
    const { check, signal, onStdout, onStderr, ...rest } = options as RunCommandOptions;
    let result: CommandResult;
    if (onStdout !== undefined || onStderr !== undefined) {
      // Processes take no cap (their output is streamed); the result is held to the same cap here instead.
      const { maxOutputBytes = DEFAULT_COMMAND_OUTPUT_BYTES, ...start } = rest;
      result = await this.#runStreamed(command, start, { onStdout, onStderr, signal, maxOutputBytes });
    } else {
      const body: RunCommandRequest = typeof command === "string" ? { cmd: command, ...rest } : { argv: [...command], ...rest };
      result = decodeCommandResult(await this.#client.request<ApiCommandResult>("POST", `${this.#path}/commands`, { body, signal }));
    }
    if (check) throwUnlessSucceeded(command, result);
    return result;
  }

  async #runStreamed(
    command: string | readonly string[],
    request: Omit<RunCommandRequest, "cmd" | "argv" | "maxOutputBytes">,
    options: WaitOptions,
  ): Promise<CommandResult> {
    const process = await this.processes.start(command, request);
    try {
      return await process.wait(options);
    } catch (error) {
      // The caller gave up (abort) or the stream broke: do not leave the command running unseen.
      await process.kill().catch(() => undefined);
      throw error;
    }
  }

  /** Saves the running sandbox (it keeps running) and returns the snapshot's id, which `fork` can start from. */
  async snapshot(options: RequestOptions = {}): Promise<string> {
    const { snapshotId } = await this.#client.request<{ snapshotId: string }>("POST", `${this.#path}/snapshot`, options);
    return snapshotId;
  }

  /** Saves the sandbox's memory and stops its VM, so it costs nothing but disk until resumed. */
  async pause(options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.#client.request<ApiSandbox>("POST", `${this.#path}/pause`, options);
  }

  async resume(options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.#client.request<ApiSandbox>("POST", `${this.#path}/resume`, options);
  }

  /** `count` new sandboxes that start where this one is now (memory, processes and files). */
  async fork(count = 1, options: RequestOptions = {}): Promise<Sandbox[]> {
    const { sandboxes } = await this.#client.request<{ sandboxes: ApiSandbox[] }>("POST", `${this.#path}/fork`, {
      body: { count },
      signal: options.signal,
    });
    return sandboxes.map((info) => new Sandbox(this.#client, info.sandboxId));
  }

  /** Ends the sandbox for good; it cannot be resumed. */
  async kill(options: RequestOptions = {}): Promise<void> {
    await this.#client.request<void>("DELETE", this.#path, options);
  }

  /** The sandbox ends (or pauses, per its onTimeout) this long from now, replacing any earlier timeout. */
  async setTimeout(timeoutMs: number, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.#client.request<ApiSandbox>("POST", `${this.#path}/timeout`, { body: { timeoutMs }, signal: options.signal });
  }

  /** `await using sandbox = await createSandbox()` kills it on scope exit; one already gone is no error. */
  async [asyncDispose](): Promise<void> {
    try {
      await this.kill();
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error;
    }
  }
}

/** A new sandbox from a template (default "base"); see Sandbox.create. */
export function createSandbox(options: CreateSandboxOptions = {}): Promise<Sandbox> {
  return Sandbox.create(options);
}

/** One page of this key's sandboxes, oldest first. */
export async function listSandboxes(query: ListSandboxesQuery = {}, options: ConnectionOptions & RequestOptions = {}): Promise<SandboxList> {
  const client = new ApiClient(options);
  const list = await client.request<ApiSandboxList>("GET", "/v1/sandboxes", { query: listSandboxesQuery(query), signal: options.signal });
  return { sandboxes: list.sandboxes, nextCursor: list.nextCursor };
}

/** The query string of GET /v1/sandboxes: the metadata filter travels as one `metadata.KEY=VALUE` per entry. */
export function listSandboxesQuery(query: ListSandboxesQuery): URLSearchParams {
  const params = new URLSearchParams();
  if (query.state !== undefined) params.set("state", query.state);
  for (const [key, value] of Object.entries(query.metadata ?? {})) params.append(`metadata.${key}`, value);
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  if (query.cursor !== undefined) params.set("cursor", query.cursor);
  return params;
}

function throwUnlessSucceeded(command: string | readonly string[], result: CommandResult): void {
  if (result.exitCode === 0 && !result.timedOut) return;
  const shown = describeCommand(command);
  const stderr = result.stderr.trim();
  const tail = stderr ? `: ${stderr.length > 500 ? `…${stderr.slice(-500)}` : stderr}` : "";
  if (result.timedOut) throw new TimeoutError(`command ${shown} timed out${tail}`, { result });
  const how = result.exitCode !== null ? `exited with code ${result.exitCode}` : `was killed by ${result.signal ?? "a signal"}`;
  throw new CommandExitError(`command ${shown} ${how}${tail}`, result);
}

function describeCommand(command: string | readonly string[]): string {
  const text = typeof command === "string" ? command : command.join(" ");
  return JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text);
}
