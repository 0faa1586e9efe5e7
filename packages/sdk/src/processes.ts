import type { ApiProcessEvent, ApiProcessInfo, ApiPtySize, StartProcessRequest } from "@codecourier/protocol/api";
import type { ApiClient, RequestOptions } from "./client.js";
import { base64ToBytes, concatBytes, type CommandResult } from "./command-result.js";
import { CodeCourierError } from "./errors.js";
import { readNdjson } from "./ndjson.js";

export type ProcessInfo = ApiProcessInfo;
export type PtySize = ApiPtySize;

/** One piece of a process's output, as the guest wrote it. */
export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Uint8Array;
  /** Its sequence number: pass `seq + 1` as `from` to continue after it on another connection. */
  seq: number;
}

export interface OutputOptions extends RequestOptions {
  /** First sequence number wanted; default 0, everything the server still keeps (the last 4 MiB). */
  from?: number;
  /** Default true: wait for more output until the process exits. false: stop after the output so far. */
  follow?: boolean;
  /**
   * Called when output before sequence number `seq` was dropped before this stream read it: the server keeps only
   * the last 4 MiB per process (and a tenant's processes share a budget), so a late or slow reader misses some.
   */
  onTruncated?: (seq: number) => void;
}

export interface WaitOptions extends RequestOptions {
  /** Called with each piece of stdout as it arrives (decoded as UTF-8 across chunk boundaries). */
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  /** Most bytes of each stream the result holds (the callbacks still see all of it). Default: no cap. */
  maxOutputBytes?: number;
}

/** What a process is started with: the command fields of runCommand plus stdin and terminal choices. */
export type StartProcessOptions = Omit<StartProcessRequest, "cmd" | "argv"> & RequestOptions;

/**
 * A process in a sandbox: a command that runs on after the call that started it. Its output is kept by the server,
 * so `wait()`, `output()`, `stdout` and `stderr` can each start late (or in another program, after
 * `sandbox.processes.connect(pid)`) and still see it from the beginning — within the last 4 MiB.
 */
export class CommandProcess {
  protected readonly client: ApiClient;
  protected readonly path: string;

  /** @internal Use sandbox.runCommand(…, { background: true }), sandbox.processes or sandbox.pty. */
  constructor(
    client: ApiClient,
    sandboxPath: string,
    readonly pid: string,
  ) {
    this.client = client;
    this.path = `${sandboxPath}/processes/${encodeURIComponent(pid)}`;
  }

  /** Whether it runs, and how it ended. */
  info(options: RequestOptions = {}): Promise<ProcessInfo> {
    return this.client.request<ProcessInfo>("GET", this.path, options);
  }

  /** Its output chunks in order; ends when the process exits (or, with follow: false, once caught up). */
  async *output(options: OutputOptions = {}): AsyncGenerator<OutputChunk> {
    for await (const event of this.#events(options)) {
      if (event.type === "stdout" || event.type === "stderr") yield { stream: event.type, data: base64ToBytes(event.data), seq: event.seq };
      else if (event.type === "truncated") options.onTruncated?.(event.seq);
    }
  }

  /** stdout as text, piece by piece, until the process exits. */
  get stdout(): AsyncIterable<string> {
    return this.#text("stdout");
  }

  get stderr(): AsyncIterable<string> {
    return this.#text("stderr");
  }

  /**
   * Waits for the exit and returns it with its output: what the server still keeps (the last 4 MiB), up to
   * `maxOutputBytes` per stream; stdoutTruncated says when some is missing. Whatever the exit code.
   */
  async wait(options: WaitOptions = {}): Promise<CommandResult> {
    const maxBytes = options.maxOutputBytes ?? Number.POSITIVE_INFINITY;
    const callbacks = { stdout: options.onStdout, stderr: options.onStderr };
    const streams = {
      stdout: { decoder: new TextDecoder(), pieces: [] as Uint8Array[], kept: 0, seen: 0 },
      stderr: { decoder: new TextDecoder(), pieces: [] as Uint8Array[], kept: 0, seen: 0 },
    };
    let dropped = false;
    for await (const event of this.#events({ signal: options.signal })) {
      if (event.type === "stdout" || event.type === "stderr") {
        const bytes = base64ToBytes(event.data);
        const stream = streams[event.type];
        stream.seen += bytes.length;
        const room = Math.min(bytes.length, maxBytes - stream.kept);
        if (room > 0) {
          stream.pieces.push(room === bytes.length ? bytes : bytes.subarray(0, room));
          stream.kept += room;
        }
        const callback = callbacks[event.type];
        if (callback !== undefined) {
          const text = stream.decoder.decode(bytes, { stream: true });
          if (text !== "") callback(text);
        }
      } else if (event.type === "truncated") {
        dropped = true;
      } else if (event.type === "exit") {
        for (const name of ["stdout", "stderr"] as const) {
          const rest = streams[name].decoder.decode();
          if (rest !== "") callbacks[name]?.(rest);
        }
        // The server counts each stream's bytes; one that does not (older) leaves "some was dropped" for both.
        const total = { stdout: event.stdoutBytes, stderr: event.stderrBytes };
        const result = (name: "stdout" | "stderr") => {
          const stream = streams[name];
          const bytes = concatBytes(stream.pieces);
          const totalBytes = total[name] ?? stream.seen;
          const truncated = stream.kept < stream.seen || (total[name] === undefined ? dropped : stream.seen < totalBytes);
          return { text: new TextDecoder().decode(bytes), bytes, totalBytes, truncated };
        };
        const stdout = result("stdout");
        const stderr = result("stderr");
        return {
          exitCode: event.exitCode,
          signal: event.signal,
          timedOut: event.timedOut,
          stdout: stdout.text,
          stderr: stderr.text,
          stdoutBytes: stdout.bytes,
          stderrBytes: stderr.bytes,
          stdoutTruncated: stdout.truncated,
          stderrTruncated: stderr.truncated,
          stdoutTotalBytes: stdout.totalBytes,
          stderrTotalBytes: stderr.totalBytes,
        };
      }
    }
    throw new CodeCourierError(`the output stream of process ${this.pid} ended before its exit`, { code: "unavailable" });
  }

  /** Sends a signal to its process group (default SIGKILL). An exited process is left as it is. */
  kill(signal = "SIGKILL", options: RequestOptions = {}): Promise<ProcessInfo> {
    return this.client.request<ProcessInfo>("POST", `${this.path}/signal`, { body: { signal }, signal: options.signal });
  }

  /** Writes to its stdin (text as UTF-8). It must have been started with keepStdinOpen (a pty always is). */
  async sendStdin(data: string | Uint8Array, options: RequestOptions = {}): Promise<void> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    await this.client.raw("POST", `${this.path}/stdin`, { body: bytes as BodyInit, signal: options.signal });
  }

  /** Ends its stdin: the process reads EOF. */
  async closeStdin(options: RequestOptions = {}): Promise<void> {
    await this.client.request<void>("POST", `${this.path}/stdin/close`, options);
  }

  async *#events(options: OutputOptions): AsyncGenerator<ApiProcessEvent> {
    const query = new URLSearchParams({ from: String(options.from ?? 0), follow: String(options.follow ?? true) });
    const response = await this.client.raw("GET", `${this.path}/output`, { query, signal: options.signal });
    if (response.body === null) throw new CodeCourierError(`the server sent no output stream for process ${this.pid}`, { code: "internal" });
    yield* readNdjson<ApiProcessEvent>(response.body);
  }

  async *#text(stream: "stdout" | "stderr"): AsyncGenerator<string> {
    const decoder = new TextDecoder();
    for await (const chunk of this.output()) {
      if (chunk.stream !== stream) continue;
      const text = decoder.decode(chunk.data, { stream: true });
      if (text !== "") yield text;
    }
    const rest = decoder.decode();
    if (rest !== "") yield rest;
  }
}

/** A process on a pseudo-terminal: what it writes comes as stdout, what you send is typed into the terminal. */
export class PtyProcess extends CommandProcess {
  /** Types into the terminal (e.g. "ls\n", or "\x03" for Ctrl-C). */
  sendInput(data: string | Uint8Array, options: RequestOptions = {}): Promise<void> {
    return this.sendStdin(data, options);
  }

  /** Changes the terminal's size; the program in it gets SIGWINCH. */
  async resize(size: PtySize, options: RequestOptions = {}): Promise<void> {
    await this.client.request<void>("POST", `${this.path}/resize`, { body: size, signal: options.signal });
  }
}

export interface PtyOptions extends RequestOptions {
  rows?: number;
  cols?: number;
  /** What to run; default a login shell (`bash -l` where the guest has bash, else `sh -l`). */
  cmd?: string;
  cwd?: string;
  env?: Record<string, string>;
  user?: string;
  timeoutMs?: number;
}

/** The sandbox's processes: start one, find one again by pid, list them. */
export class SandboxProcesses {
  readonly #client: ApiClient;
  readonly #sandboxPath: string;

  constructor(client: ApiClient, sandboxPath: string) {
    this.#client = client;
    this.#sandboxPath = sandboxPath;
  }

  /** Starts a command that runs on after this call (a string runs with /bin/sh -c, an array is an argv). */
  async start(command: string | readonly string[], options: StartProcessOptions = {}): Promise<CommandProcess> {
    const info = await this.#start(command, options);
    return info.pty ? new PtyProcess(this.#client, this.#sandboxPath, info.pid) : new CommandProcess(this.#client, this.#sandboxPath, info.pid);
  }

  /** A handle on a process by pid: one started earlier, by this program or another (after a pause, a restart). */
  async connect(pid: string, options: RequestOptions = {}): Promise<CommandProcess> {
    const handle = new CommandProcess(this.#client, this.#sandboxPath, pid);
    const info = await handle.info(options);
    return info.pty ? new PtyProcess(this.#client, this.#sandboxPath, pid) : handle;
  }

  /** Running and recently exited processes, oldest first. */
  async list(options: RequestOptions = {}): Promise<ProcessInfo[]> {
    return (await this.#client.request<{ processes: ProcessInfo[] }>("GET", `${this.#sandboxPath}/processes`, options)).processes;
  }

  /** Starts a program on a new pseudo-terminal (default: a login shell, 24×80). */
  async pty(options: PtyOptions = {}): Promise<PtyProcess> {
    const { rows = 24, cols = 80, cmd, signal, ...rest } = options;
    const command = cmd ?? "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";
    const info = await this.#start(command, { ...rest, signal, pty: { rows, cols }, keepStdinOpen: true });
    return new PtyProcess(this.#client, this.#sandboxPath, info.pid);
  }

  #start(command: string | readonly string[], options: StartProcessOptions): Promise<ProcessInfo> {
    const { signal, ...request } = options;
    const body: StartProcessRequest = typeof command === "string" ? { cmd: command, ...request } : { argv: [...command], ...request };
    return this.#client.request<ProcessInfo>("POST", `${this.#sandboxPath}/processes`, { body, signal });
  }
}

/** Terminals: `sandbox.pty.create({ rows, cols })` starts a shell on one. */
export class SandboxPty {
  constructor(private readonly processes: SandboxProcesses) {}

  /** Starts a program on a new pseudo-terminal (default: a login shell, 24×80). */
  create(options: PtyOptions = {}): Promise<PtyProcess> {
    return this.processes.pty(options);
  }

  /** A handle on a terminal process by pid (e.g. after a reconnect). */
  async connect(pid: string, options: RequestOptions = {}): Promise<PtyProcess> {
    const process = await this.processes.connect(pid, options);
    if (!(process instanceof PtyProcess)) throw new CodeCourierError(`process ${pid} has no terminal`, { code: "bad_request" });
    return process;
  }
}
