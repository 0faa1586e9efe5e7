import { randomBytes } from "node:crypto";
import { connect as connectHttp2, constants as h2, type ClientHttp2Stream } from "node:http2";
import { connect as connectSocket } from "node:net";
import { Readable, type Duplex } from "node:stream";
import {
  AGENT_HANDSHAKE_LIMITS,
  AGENT_LIMITS,
  AgentHandshakeError,
  AgentPath,
  EXEC_SPEC_HEADER,
  FILE_LIMITS,
  TERMINAL_LIMITS,
  encodeExecSpecHeader,
  performHostHandshake,
  type AgentHealth,
  type BackgroundCommandInfo,
  type DirEntry,
  type ExecExit,
  type ExecSpec,
  type FileStat,
  type GuestActivity,
  type IdentityRequest,
  type IdentityResult,
} from "@codecourier/protocol";
import { CommandHandle, type AttachOptions, type CommandControl, type ExecOptions } from "./command.js";
import { AgentConnection } from "./connection.js";
import { AgentClientError, AgentDisconnectedError, AgentError, AgentExitedError, AgentProtocolError, AgentTimeoutError } from "./errors.js";
import { Http2FrameGuard } from "./frame-guard.js";
import { openWatch, type WatchOptions } from "./watch.js";
import type { RequestActivity } from "./request-activity.js";
import {
  parseGuestActivity,
  parseBackgroundCommands,
  parseDirEntries,
  parseFileStat,
  parseHealth,
  parseIdentityResult,
} from "./validate.js";

export interface ConnectOptions {
  /** Bound on connecting plus the first health check. Default 10 s. */
  timeoutMs?: number;
  /** Bound on each request/response exchange (not on how long a command runs or a download takes). Default 30 s. */
  requestTimeoutMs?: number;
  /** Aborting gives up a handshake still waiting for the agent's answer (AgentDisconnectedError). */
  signal?: AbortSignal;
}

export interface RunOptions extends ExecOptions {
  /** Most bytes collected per output stream. Default 64 MiB (the API's commands ask for far less: command-output.ts). */
  maxOutputBytes?: number;
  /**
   * Past maxOutputBytes: "fail" (the default) cancels the command and fails the run with AgentError "too_large";
   * "truncate" keeps the first maxOutputBytes, reads and discards the rest while the command runs to its end, and
   * says so in the result.
   */
  overflow?: "fail" | "truncate";
  /**
   * With overflow "truncate": asked before each piece of output is kept, answers how many of its `bytes` may be
   * (a budget shared with other commands). What it refuses is discarded like output past maxOutputBytes; what it
   * grants is the caller's to give back.
   */
  reserveOutput?: (bytes: number) => number;
}

export interface RunResult extends ExecExit {
  stdout: Buffer;
  stderr: Buffer;
  /** Bytes each stream produced in all, kept or not. */
  stdoutTotalBytes: number;
  stderrTotalBytes: number;
  /** Whether output was discarded (only with overflow "truncate"). */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
}

export interface WriteFileOptions {
  /** Permission bits, e.g. 0o755. Default: the replaced file's mode, or 0o644 for a new file. */
  mode?: number;
  /** The new file's mtime, whole ms since the epoch; set before it replaces the old one. Default: when written. */
  mtimeMs?: number;
  /** The body's length, when known: a body that ends with fewer bytes leaves the old file (writeFile only). */
  expectedBytes?: number;
}

const defaultConnectTimeoutMs = 10_000;
const defaultRequestTimeoutMs = 30_000;
const defaultMaxCollectedBytes = 64 * 1024 * 1024;
/** Bound on file operations that walk a whole tree (a deep listing, a recursive remove): slow under TCG. */
const treeOperationTimeoutMs = 5 * 60_000;
/** The agent's bound on mtimes (the end of year 9999). */
const maxMtimeMs = 253_402_300_799_999;
/**
 * Per-stream receive window: how much one command's output may be in flight before the agent must wait for the
 * host to read. Also the most the guest can make the host buffer per stream beyond the output streams' own
 * buffers, so it stays moderate.
 */
const streamWindowBytes = 256 * 1024;
/** Connection-level window, so several busy streams can use the link at once without waiting on each other. */
const sessionWindowBytes = 8 * 1024 * 1024;
/**
 * nghttp2's memory budget for this session in MiB (header tables, queued frames). The guest cannot push DATA
 * beyond the windows above, so 32 MiB is ample headroom; past it Node refuses new streams rather than growing.
 */
const maxSessionMemoryMiB = 32;
/** Leave room for the pseudo-headers and the rest of the header block. */
const maxExecSpecHeaderBytes = AGENT_LIMITS.maxHeaderListSize - 1024;

/**
 * Host-side client of the guest agent: HTTP/2 over the virtio-serial port's Unix socket. The guest is untrusted:
 * every response is size-bounded and validated, and a misbehaving guest fails requests (or the session) with
 * typed errors instead of hurting the host.
 */
export class AgentClient {
  readonly #connection: AgentConnection;
  readonly #transport: Duplex;

  private constructor(transport: Duplex, options: ConnectOptions) {
    let connection: AgentConnection | undefined;
    const guard = new Http2FrameGuard(transport, (error) => connection?.fail(error));
    this.#transport = guard;
    // Failures reach callers through the session and its requests; an 'error' here must never go unhandled.
    guard.on("error", () => {});
    const session = connectHttp2("http://agent", {
      createConnection: () => guard,
      settings: {
        enablePush: false,
        maxFrameSize: AGENT_LIMITS.maxFrameSize,
        maxHeaderListSize: AGENT_LIMITS.maxHeaderListSize,
        initialWindowSize: streamWindowBytes,
      },
      maxSessionMemory: maxSessionMemoryMiB,
      maxHeaderListPairs: 64,
      peerMaxConcurrentStreams: AGENT_LIMITS.maxConcurrentStreams,
    });
    session.once("connect", () => {
      try {
        session.setLocalWindowSize(sessionWindowBytes);
      } catch {
        // Session already gone; the failure surfaces through the pending requests.
      }
    });
    connection = new AgentConnection(session, options.requestTimeoutMs ?? defaultRequestTimeoutMs);
    this.#connection = connection;
  }

  /**
   * Connects to the Unix socket QEMU exposes for the agent's port, opens the connection with the handshake (which
   * skips whatever stale bytes the port still held) and checks the agent answers.
   */
  static async connect(socketPath: string, options: ConnectOptions = {}): Promise<AgentClient> {
    const timeoutMs = options.timeoutMs ?? defaultConnectTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    const socket = connectSocket(socketPath);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AgentTimeoutError(`connecting to ${socketPath} took longer than ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        // Some error listener must stay until the frame guard (#establish) adds its own, after this promise's
        // continuation: an error emitted in between (next tick: a read failing right at connect) would otherwise
        // have none, which ends the server. The guard still learns of the failure from the socket's 'close'.
        socket.off("error", onError);
        socket.once("error", () => {});
        resolve();
      });
      const onError = (error: Error) => {
        clearTimeout(timer);
        reject(new AgentDisconnectedError(`cannot connect to ${socketPath}: ${error.message}`, { cause: error }));
      };
      socket.once("error", onError);
    });
    return AgentClient.#establish(socket, options, deadline);
  }

  /** Runs the client over an already connected byte stream (tests, custom transports), handshake first. */
  static async overStream(stream: Duplex, options: ConnectOptions = {}): Promise<AgentClient> {
    return AgentClient.#establish(stream, options, Date.now() + (options.timeoutMs ?? defaultConnectTimeoutMs));
  }

  static async #establish(transport: Duplex, options: ConnectOptions, deadline: number): Promise<AgentClient> {
    const giveUp = () => transport.destroy();
    options.signal?.addEventListener("abort", giveUp, { once: true });
    try {
      if (options.signal?.aborted) throw new AgentDisconnectedError("the handshake was given up");
      await performHostHandshake(transport, randomBytes(AGENT_HANDSHAKE_LIMITS.nonceBytes).toString("hex"), Math.max(1, deadline - Date.now()));
    } catch (error) {
      transport.destroy();
      throw handshakeFailure(error);
    } finally {
      options.signal?.removeEventListener("abort", giveUp);
    }
    const client = new AgentClient(transport, options);
    try {
      await client.#health(Math.max(1, deadline - Date.now()));
    } catch (error) {
      await client.close();
      throw error;
    }
    return client;
  }

  /**
   * Resolves once the session has ended: with the failure that ended it, and whether that was close() (the host's
   * choice) rather than the guest (garbage, a hang-up) or the transport.
   */
  get ended(): Promise<{ failure: AgentClientError; byHost: boolean }> {
    return this.#connection.ended;
  }

  /** True once the session has ended; reconnecting means calling connect() again. */
  get closed(): boolean {
    return this.#connection.isClosed;
  }

  health(): Promise<AgentHealth> {
    return this.#health(this.#connection.requestTimeoutMs);
  }

  async #health(timeoutMs: number): Promise<AgentHealth> {
    return parseHealth(await this.#unary("GET", AgentPath.health, undefined, timeoutMs));
  }

  /** Starts a command. Never throws: failures (including a refused start) reject `id` and `wait()`. */
  exec(spec: ExecSpec, options: ExecOptions = {}): CommandHandle {
    const encodedSpec = encodeExecSpecHeader(spec);
    const connection = this.#connection;
    return new CommandHandle(
      connection,
      (endStream) => {
        if (encodedSpec.length > maxExecSpecHeaderBytes) {
          throw new AgentError("bad_request", `exec spec is too large (${encodedSpec.length} bytes encoded)`);
        }
        return connection.open("POST", AgentPath.exec, { [EXEC_SPEC_HEADER]: encodedSpec }, endStream);
      },
      this.#commandControl,
      { ...options, stdinEnabled: spec.stdin !== false },
    );
  }

  /**
   * Re-attaches to a background command, e.g. after a reconnect: its output from now on, then its exit (only the
   * exit if it has already exited). The newest attachment wins: an earlier handle's wait() rejects with
   * CommandDetachedError. An unknown id fails wait() with AgentError "not_found".
   */
  attach(id: string, options: AttachOptions = {}): CommandHandle {
    const connection = this.#connection;
    return new CommandHandle(
      connection,
      () => connection.open("GET", AgentPath.attach(id)),
      this.#commandControl,
      { ...options, stdinEnabled: false, expectedId: id },
    );
  }

  /** Requests in flight and recent activity of this session (see RequestActivity). */
  get activity(): RequestActivity {
    return this.#connection.activity;
  }

  /** What runs in the guest besides its plumbing. */
  async guestActivity(): Promise<GuestActivity> {
    return parseGuestActivity(await this.#unary("GET", AgentPath.activity));
  }

  /** Background commands: the running ones and the last exited ones (AGENT_LIMITS.maxRememberedExits). */
  async listCommands(): Promise<BackgroundCommandInfo[]> {
    return parseBackgroundCommands(await this.#unary("GET", AgentPath.commands));
  }

  /**
   * Gives a guest restored from a memory snapshot its own clock, kernel CRNG state, hostname and machine id
   * (see createIdentityRequest). The agent validates the request and changes nothing if it is malformed.
   */
  async refreshIdentity(request: IdentityRequest): Promise<IdentityResult> {
    const body = Buffer.from(JSON.stringify(request), "utf8");
    const result = parseIdentityResult(await this.#unary("POST", AgentPath.identity, body));
    if (result.hostname !== request.hostname || result.machineId !== request.machineId || result.clockSetTo !== request.epochMs) {
      throw new AgentProtocolError("the agent confirmed a different identity than the one requested");
    }
    return result;
  }

  /**
   * Runs a command to completion and collects its output, each stream bounded by `maxOutputBytes` (see
   * `overflow` for what happens past it). Either way the host holds at most that much per stream.
   */
  async run(spec: ExecSpec, options: RunOptions = {}): Promise<RunResult> {
    const { maxOutputBytes = defaultMaxCollectedBytes, overflow = "fail", reserveOutput, ...execOptions } = options;
    const limits: CollectLimits = { maxBytes: maxOutputBytes, overflow, reserve: overflow === "truncate" ? reserveOutput : undefined };
    const command = this.exec(spec, execOptions);
    const [stdout, stderr, exit] = await Promise.all([
      collectOutput(command, command.stdout, "stdout", limits),
      collectOutput(command, command.stderr, "stderr", limits),
      command.wait(),
    ]);
    return {
      ...exit,
      stdout: stdout.kept,
      stderr: stderr.kept,
      stdoutTotalBytes: stdout.totalBytes,
      stderrTotalBytes: stderr.totalBytes,
      stdoutTruncated: stdout.truncated,
      stderrTruncated: stderr.truncated,
    };
  }

  /** Sends a signal (e.g. "SIGTERM") to a command's process group; an unknown id is an AgentError "not_found". */
  signal(id: string, signal: string): Promise<void> {
    return this.#signal(id, signal);
  }

  async #signal(id: string, signal: string): Promise<void> {
    const body = Buffer.from(JSON.stringify({ signal }), "utf8");
    await this.#unary("POST", AgentPath.signal(id), body);
  }

  /**
   * Sets the window size of a running command's terminal (ExecSpec.pty); its foreground job gets SIGWINCH.
   * AgentError "bad_request" for a command without a pty, "not_found" for no running command or a closed terminal;
   * RangeError for a size outside 1..TERMINAL_LIMITS (nothing is sent).
   */
  async resize(commandId: string, rows: number, cols: number): Promise<void> {
    if (!isTerminalSide(rows, TERMINAL_LIMITS.maxRows) || !isTerminalSide(cols, TERMINAL_LIMITS.maxCols)) {
      throw new RangeError(`invalid terminal size ${rows}x${cols}: rows 1..${TERMINAL_LIMITS.maxRows}, cols 1..${TERMINAL_LIMITS.maxCols}`);
    }
    const body = Buffer.from(JSON.stringify({ rows, cols }), "utf8");
    await this.#unary("POST", AgentPath.resize(commandId), body);
  }

  /** How handles reach the agent about their command. */
  readonly #commandControl: CommandControl = {
    signal: (id, signal) => this.#signal(id, signal),
    resize: (id, rows, cols) => this.resize(id, rows, cols),
  };

  /** Streams a file's content. Errors (e.g. AgentError "not_found") are emitted on the returned stream. */
  readFile(path: string): Readable {
    const connection = this.#connection;
    let request: ClientHttp2Stream | undefined;
    /** Set once the outcome is decided (complete body or an error response), so 'close' adds nothing. */
    let outcomeKnown = false;
    let paused = false;
    const output = new Readable({
      highWaterMark: 64 * 1024,
      read: () => {
        // Only undo our own pause: resuming before the 'data' listener exists would drop data.
        if (paused) request?.resume();
        paused = false;
      },
    });
    output.on("close", () => {
      if (request !== undefined && !request.closed) request.close(h2.NGHTTP2_CANCEL);
    });
    try {
      request = connection.open("GET", withPath(AgentPath.file, path));
    } catch (error) {
      process.nextTick(() => output.destroy(connection.failureOf(undefined, error)));
      return output;
    }
    const opened = request;
    opened.on("close", () => {
      if (!outcomeKnown) output.destroy(connection.failureOf(opened));
    });
    connection
      .responseHead(opened)
      .then(async ({ status }) => {
        if (status !== 200) {
          outcomeKnown = true;
          output.destroy(await connection.errorResponse(opened, status));
          return;
        }
        opened.on("data", (chunk: Buffer) => {
          if (!output.push(chunk)) {
            paused = true;
            opened.pause();
          }
        });
        opened.on("end", () => {
          outcomeKnown = true;
          const cutOff = connection.endFailure(opened);
          if (cutOff !== undefined) output.destroy(cutOff);
          else output.push(null);
        });
      })
      .catch((error: unknown) => output.destroy(connection.failureOf(opened, error)));
    return output;
  }

  /** Reads a whole file into memory; more than `maxBytes` (default 64 MiB) fails with AgentError "too_large". */
  async readFileBuffer(path: string, { maxBytes = defaultMaxCollectedBytes }: { maxBytes?: number } = {}): Promise<Buffer> {
    const connection = this.#connection;
    const request = connection.open("GET", withPath(AgentPath.file, path));
    const { status } = await connection.responseHead(request);
    if (status !== 200) throw await connection.errorResponse(request, status);
    // No overall deadline (files can be big), but a guest that stops sending mid-file must not hang the host.
    return connection.readBody(request, {
      maxBytes,
      idleTimeoutMs: connection.requestTimeoutMs,
      tooLarge: () => new AgentError("too_large", `${path} is larger than ${maxBytes} bytes`),
    });
  }

  /** Replaces a file atomically (temp file + fsync + rename in the guest) and returns its new metadata. */
  async writeFile(path: string, data: Buffer | string | Readable, options: WriteFileOptions = {}): Promise<FileStat> {
    return this.#putFile(withPath(AgentPath.file, path, fileSettingsQuery(options)), data);
  }

  /**
   * One chunk of a resumable upload: writes `data` into `path` at `offset` (cutting the file there first, so it
   * holds exactly offset + data bytes afterwards) and fsyncs it, without replacing the file. An offset past the
   * file's end is an AgentError "bad_request". The answer's size says how much the file now holds.
   */
  async writeFileAt(path: string, offset: number, data: Buffer | string | Readable): Promise<FileStat> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset: ${offset}`);
    return this.#putFile(withPath(AgentPath.file, path, { partial: "1", offset: String(offset) }), data);
  }

  /** The end of a resumable upload: the partial file gets its mode, owner and mtime, is fsynced and renamed onto `path`. */
  async commitUpload(partialPath: string, path: string, options: WriteFileOptions = {}): Promise<FileStat> {
    const query = { to: path, ...fileSettingsQuery(options) };
    return parseFileStat(await this.#unary("POST", withPath(AgentPath.commitUpload, partialPath, query)));
  }

  async #putFile(url: string, data: Buffer | string | Readable): Promise<FileStat> {
    const connection = this.#connection;
    const request = connection.open("PUT", url, {}, false);
    const head = connection.responseHead(request, connection.requestTimeoutMs, { afterRequestBody: true });
    let sourceFailure: AgentClientError | undefined;
    if (data instanceof Readable) {
      const cancel = (message: string, cause?: unknown) => {
        sourceFailure ??= new AgentClientError(message, { cause });
        request.close(h2.NGHTTP2_CANCEL);
      };
      data.pipe(request);
      data.once("error", (error) => cancel(`the data source failed: ${error.message}`, error));
      // A source destroyed without an error (an HTTP request body whose client went away) never ends: the guest
      // would wait for the rest forever, and a body cut short must never be taken for a whole one.
      data.once("close", () => {
        if (!data.readableEnded) cancel("the data source closed before its end");
      });
      request.once("close", () => data.unpipe(request));
    } else {
      request.end(data);
    }
    let status: number;
    try {
      ({ status } = await head);
    } catch (error) {
      throw sourceFailure ?? error;
    }
    const deadline = Date.now() + connection.requestTimeoutMs;
    if (status < 200 || status >= 300) throw await connection.errorResponse(request, status, deadline);
    return parseFileStat(await connection.readJson(request, deadline));
  }

  async stat(path: string): Promise<FileStat> {
    return parseFileStat(await this.#unary("GET", withPath(AgentPath.stat, path)));
  }

  /**
   * A directory's entries sorted by name, with lstat's size and mtime. `depth` N (default 1) walks N levels;
   * deeper names are relative to `path` ("a/b.txt") and symlinked directories are not entered. More than
   * FILE_LIMITS.maxListedEntries entries is an AgentError "too_large".
   */
  async list(path: string, { depth = 1 }: { depth?: number } = {}): Promise<DirEntry[]> {
    if (!Number.isInteger(depth) || depth < 1 || depth > FILE_LIMITS.maxListDepth) throw new RangeError(`invalid listing depth: ${depth}`);
    const query: Record<string, string> = depth === 1 ? {} : { depth: String(depth) };
    const timeoutMs = depth === 1 ? this.#connection.requestTimeoutMs : treeOperationTimeoutMs;
    return parseDirEntries(await this.#unary("GET", withPath(AgentPath.list, path, query), undefined, timeoutMs, FILE_LIMITS.maxListingBytes));
  }

  /** Creates a directory: with `recursive` (the default) its missing parents too, and an existing one is fine. */
  async mkdir(path: string, { recursive = true }: { recursive?: boolean } = {}): Promise<FileStat> {
    return parseFileStat(await this.#unary("POST", withPath(AgentPath.mkdir, path, { recursive: recursive ? "1" : "0" })));
  }

  /**
   * Removes a file, a symlink (never what it points to) or a directory; a directory with entries only with
   * `recursive` (else AgentError "not_empty"). A missing path is AgentError "not_found".
   */
  async remove(path: string, { recursive = false }: { recursive?: boolean } = {}): Promise<void> {
    const url = withPath(AgentPath.remove, path, { recursive: recursive ? "1" : "0" });
    await this.#unary("POST", url, undefined, recursive ? treeOperationTimeoutMs : this.#connection.requestTimeoutMs);
  }

  /** rename(2) in the guest: atomic, replaces a file at `to`; returns what is now at `to`. */
  async rename(from: string, to: string): Promise<FileStat> {
    return parseFileStat(await this.#unary("POST", withPath(AgentPath.rename, from, { to })));
  }

  /** chmod(2) in the guest (follows a symlink); returns the metadata of what was changed. */
  async chmod(path: string, mode: number): Promise<FileStat> {
    checkMode(mode);
    return parseFileStat(await this.#unary("POST", withPath(AgentPath.chmod, path, { mode: mode.toString(8) })));
  }

  /**
   * Watches `path` (a directory, or a single file by its name) for creates, writes, removes and renames; resolves
   * once the guest has every watch in place. See openWatch for the stream of events; destroy it to stop watching.
   */
  watch(path: string, { recursive = false }: WatchOptions = {}): Promise<Readable> {
    return openWatch(this.#connection, withPath(AgentPath.watch, path, { recursive: recursive ? "1" : "0" }));
  }

  /**
   * Ends the session and closes the socket; in-flight requests fail with AgentDisconnectedError, whose message says
   * `reason` when given (e.g. why the host gave up on the session). With `agentExited`, the host knows the agent
   * process died (its port closed): in-flight requests fail with AgentExitedError, and started commands end with
   * SIGKILL, which is what guest-spawner did to them.
   */
  close(reason?: string, { agentExited = false }: { agentExited?: boolean } = {}): Promise<void> {
    const { session } = this.#connection;
    if (session.destroyed) return Promise.resolve();
    const closed = new Promise<void>((resolve) => session.once("close", resolve));
    // Transport first: a session whose socket is gone ends without sending GOAWAY. The agent learns of the close
    // from the hang-up alone; a GOAWAY would make it answer with one of its own, and over virtio-serial a write
    // issued after the host left waits in the guest kernel and arrives at the start of the next connection.
    this.#transport.destroy();
    const failure = agentExited ? AgentExitedError : AgentDisconnectedError;
    this.#connection.close(reason === undefined ? undefined : new failure(`the agent session was lost: ${reason}`));
    return closed;
  }

  /** One request/response exchange with a bounded JSON (or empty) response body, all within `timeoutMs`. */
  async #unary(
    method: string,
    path: string,
    body?: Buffer,
    timeoutMs = this.#connection.requestTimeoutMs,
    maxResponseBytes: number = AGENT_LIMITS.maxJsonBytes,
  ): Promise<unknown> {
    const connection = this.#connection;
    const deadline = Date.now() + timeoutMs;
    const headers = body === undefined ? {} : { "content-type": "application/json" };
    const request = connection.open(method, path, headers, body === undefined);
    if (body !== undefined) request.end(body);
    const { status } = await connection.responseHead(request, timeoutMs);
    if (status < 200 || status >= 300) throw await connection.errorResponse(request, status, deadline);
    if (status === 204) return undefined;
    return connection.readJson(request, deadline, maxResponseBytes);
  }
}

/** The agent client's error for a failed handshake. */
function handshakeFailure(error: unknown): AgentClientError {
  if (error instanceof AgentClientError) return error;
  if (!(error instanceof AgentHandshakeError)) return new AgentDisconnectedError(`the handshake failed: ${String(error)}`, { cause: error });
  if (error.reason === "timeout") return new AgentTimeoutError(error.message, { cause: error });
  if (error.reason === "flooded") return new AgentProtocolError(error.message, { cause: error });
  return new AgentDisconnectedError(error.message, { cause: error });
}

function isTerminalSide(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= max;
}

function withPath(endpoint: string, path: string, extra: Record<string, string> = {}): string {
  return `${endpoint}?${new URLSearchParams({ path, ...extra }).toString()}`;
}

function checkMode(mode: number): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new RangeError(`invalid file mode: ${mode}`);
}

/** The query parameters of a new file's mode and mtime, checked here so that bad values never reach the guest. */
function fileSettingsQuery({ mode, mtimeMs, expectedBytes }: WriteFileOptions): Record<string, string> {
  const query: Record<string, string> = {};
  if (expectedBytes !== undefined) {
    if (!Number.isSafeInteger(expectedBytes) || expectedBytes < 0) throw new RangeError(`invalid size: ${expectedBytes}`);
    query.size = String(expectedBytes);
  }
  if (mode !== undefined) {
    checkMode(mode);
    query.mode = mode.toString(8);
  }
  if (mtimeMs !== undefined) {
    if (!Number.isInteger(mtimeMs) || mtimeMs < 0 || mtimeMs > maxMtimeMs) throw new RangeError(`invalid mtime: ${mtimeMs}`);
    query.mtime = String(mtimeMs);
  }
  return query;
}

interface CollectLimits {
  maxBytes: number;
  overflow: "fail" | "truncate";
  reserve: ((bytes: number) => number) | undefined;
}

interface CollectedOutput {
  kept: Buffer;
  totalBytes: number;
  truncated: boolean;
}

/**
 * Reads one output stream to its end, keeping at most `maxBytes` of it (and, with `reserve`, what that grants). What
 * is kept is a prefix: once a byte is discarded, nothing later is kept, even if room comes back.
 */
async function collectOutput(command: CommandHandle, output: Readable, name: string, limits: CollectLimits): Promise<CollectedOutput> {
  const chunks: Buffer[] = [];
  let keptBytes = 0;
  let totalBytes = 0;
  let truncated = false;
  for await (const chunk of output as AsyncIterable<Buffer>) {
    totalBytes += chunk.length;
    if (truncated) continue; // drained, so the command runs to its end; the bytes are dropped here
    let fits = Math.min(chunk.length, limits.maxBytes - keptBytes);
    if (fits < chunk.length && limits.overflow === "fail") {
      const error = new AgentError("too_large", `${name} exceeded ${limits.maxBytes} bytes`);
      command.cancel(error);
      throw error;
    }
    if (limits.reserve !== undefined && fits > 0) fits = Math.min(fits, limits.reserve(fits));
    if (fits > 0) {
      chunks.push(fits === chunk.length ? chunk : chunk.subarray(0, fits));
      keptBytes += fits;
    }
    truncated = fits < chunk.length;
  }
  return { kept: Buffer.concat(chunks, keptBytes), totalBytes, truncated };
}
