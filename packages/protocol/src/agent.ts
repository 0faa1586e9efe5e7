/**
 * The host ↔ guest-agent protocol.
 *
 * Transport: HTTP/2 (cleartext, prior knowledge) over one virtio-serial port, named
 * {@link AGENT_PORT_NAME}. The guest agent is the HTTP/2 server, the host the client. HTTP/2 gives us
 * multiplexing of many commands, per-stream flow control (backpressure end to end) and bounded frames
 * without inventing a framing of our own (see docs/decisions/0002-agent-protocol-http2.md).
 *
 * Everything the guest sends is untrusted: the host bounds header sizes, frame sizes and every JSON body.
 */

/** Name of the virtio-serial port the agent listens on (visible in the guest under /sys/class/virtio-ports). */
export const AGENT_PORT_NAME = "org.codecourier.agent";

/** Protocol version; bumped on any incompatible change. */
export const AGENT_PROTOCOL_VERSION = 1;

/** HTTP/2 limits both sides apply. */
export const AGENT_LIMITS = {
  /** Largest HTTP/2 frame payload either side accepts. */
  maxFrameSize: 64 * 1024,
  /** Largest header block (sum of name+value sizes). */
  maxHeaderListSize: 64 * 1024,
  /** Largest JSON body (request or response) that is parsed whole. */
  maxJsonBytes: 1024 * 1024,
  /** Largest payload of one output record in an exec stream. */
  maxOutputRecord: 64 * 1024,
  /** Most commands running at once in one agent. */
  maxConcurrentCommands: 256,
  /** Most concurrent HTTP/2 streams per session. */
  maxConcurrentStreams: 512,
  /** Finished background commands whose exit the agent keeps for attach and the command list (oldest dropped). */
  maxRememberedExits: 256,
} as const;

/** Paths served by the agent. */
export const AgentPath = {
  health: "/v1/health",
  exec: "/v1/exec",
  /** POST /v1/exec/{id}/signal with {@link SignalRequest}. */
  signal: (id: string) => `/v1/exec/${encodeURIComponent(id)}/signal`,
  /**
   * GET /v1/exec/{id}/attach: re-attaches to a background command. Same response as exec (headers and records):
   * output from the moment of attaching, then the exit record; only the exit record if it has already exited.
   * The newest attachment wins: a previous one ends with a `detached` record.
   */
  attach: (id: string) => `/v1/exec/${encodeURIComponent(id)}/attach`,
  /**
   * POST /v1/exec/{id}/resize with {@link TerminalSize}: sets the window size of a command started with
   * {@link ExecSpec.pty} (its foreground process group gets SIGWINCH). 204; 400 for a command without a pty, 404 for
   * no running command or a terminal that has closed.
   */
  resize: (id: string) => `/v1/exec/${encodeURIComponent(id)}/resize`,
  /** GET → {@link BackgroundCommandInfo}[]: running background commands and the last exited ones. */
  commands: "/v1/commands",
  /** GET → {@link GuestActivity}: whether anything runs in the guest (the host stops idle sandboxes' vCPUs). */
  activity: "/v1/activity",
  /** POST {@link IdentityRequest} → {@link IdentityResult}: a fresh clock, CRNG, hostname and machine id. */
  identity: "/v1/identity",
  /**
   * GET streams the file's bytes, PUT replaces it atomically with the request body → {@link FileStat}. PUT query:
   * path, mode (octal), mtime (ms since the epoch, set before the rename), size (the body's length when known: a
   * body that ends shorter, or is cancelled, leaves the old file). With `partial=1&offset=N` instead, PUT
   * writes the body into `path` at byte N without replacing it (the file is created if missing and cut at N first,
   * so it holds exactly N + body bytes; N past its end is refused) and fsyncs: one chunk of a resumable upload.
   */
  file: "/v1/files/content",
  /** GET ?path= → {@link FileStat}. */
  stat: "/v1/files/stat",
  /**
   * GET ?path=&depth= → {@link DirEntry}[] sorted by name. depth N (default 1) walks N levels, names are relative
   * to `path` ("a/b.txt"), symlinked directories are not followed; more than {@link FILE_LIMITS.maxListedEntries}
   * entries is a 413.
   */
  list: "/v1/files/list",
  /** POST ?path=&recursive=0|1 → {@link FileStat}. recursive (default 1) is `mkdir -p`: an existing directory is fine. */
  mkdir: "/v1/files/mkdir",
  /** POST ?path=&recursive=0|1 → 204. A symlink is removed, never followed; a non-empty directory needs recursive=1. */
  remove: "/v1/files/remove",
  /** POST ?path=&to= → {@link FileStat} of `to`: rename(2), atomic, replaces an existing file at `to`. */
  rename: "/v1/files/rename",
  /** POST ?path=&mode= → {@link FileStat} of what `path` points to: chmod(2), which follows symlinks. */
  chmod: "/v1/files/chmod",
  /**
   * POST ?path=&to=&mode=&mtime= → {@link FileStat} of `to`: the end of a resumable upload. fsyncs the partial file
   * `path`, gives it its mode (default: the replaced file's, else 0644), owner and mtime, then renames it onto `to`.
   */
  commitUpload: "/v1/files/commit",
  /**
   * GET ?path=&recursive=0|1 → {@link WATCH_CONTENT_TYPE}: one {@link WatchEvent} per line for as long as the stream
   * is open. The response headers come once every watch is in place, so nothing done after them is missed.
   * Closing the stream ends the watch; the body ends by itself when the watched path is deleted or moved away.
   */
  watch: "/v1/files/watch",
} as const;

/** Request header carrying the exec spec as base64url(JSON(ExecSpec)); the request body is the command's stdin. */
export const EXEC_SPEC_HEADER = "cc-exec-spec";
/** Response header carrying the command id assigned by the agent. */
export const EXEC_ID_HEADER = "cc-exec-id";

export interface ExecSpec {
  /** argv form: executed directly, no shell. Exactly one of argv or shell is set. */
  argv?: string[];
  /** Shell form: run as `/bin/sh -c <shell>`. */
  shell?: string;
  env?: Record<string, string>;
  /** Working directory in the guest; default "/". */
  cwd?: string;
  /** User name or numeric uid to run as; default root. */
  user?: string | number;
  /** Whole-command timeout; the process group gets SIGKILL after it. */
  timeoutMs?: number;
  /** When false, the request body is ignored and stdin is /dev/null. Default true. */
  stdin?: boolean;
  /**
   * Keeps the command running when its stream or the whole session goes away (the host paused, restored or
   * forked the VM); {@link AgentPath.attach} reconnects to its output. While nobody is attached its output is
   * read and discarded, so it never blocks on a full pipe. Its stdin ends with the request body or when the
   * original stream goes away, whichever comes first. Default false: the command is killed with its stream.
   */
  background?: boolean;
  /**
   * Runs the command on a new pseudo-terminal of this size: its stdin, stdout and stderr are the terminal, which is
   * also its controlling terminal (so Ctrl-C, `\x03` in stdin, interrupts its foreground job), and TERM defaults to
   * xterm-256color. All its output comes as stdout records (a terminal has no separate stderr), with the terminal's
   * echo and line endings. The request body is typed into the terminal; its end is no EOF for the command (send
   * `\x04`). Needs the guest-spawner helper (an agent on Node's own spawn answers 400). Resize with
   * {@link AgentPath.resize}. In an interactive shell, jobs run in process groups of their own: a signal sent with
   * {@link AgentPath.signal} reaches the shell's group, a kill or timeout kills the shell and the terminal's hang-up
   * ends the job in the foreground.
   */
  pty?: TerminalSize;
}

/** A terminal's window size in character cells; each between 1 and {@link TERMINAL_LIMITS}. */
export interface TerminalSize {
  rows: number;
  cols: number;
}

export const TERMINAL_LIMITS = { maxRows: 1000, maxCols: 1000 } as const;

/**
 * The exec response body is a sequence of records: 1 byte kind, 4 bytes big-endian payload length, payload.
 * stdout and stderr records carry raw bytes (≤ {@link AGENT_LIMITS.maxOutputRecord}); exactly one `exit` record
 * (JSON {@link ExecExit}) ends the stream. A background command's stream may instead end with a `detached`
 * record (empty payload): another attach took over its output, and the command keeps running.
 */
export const OutputKind = { stdout: 1, stderr: 2, exit: 3, detached: 4 } as const;
export type OutputKindName = keyof typeof OutputKind;

export interface ExecExit {
  /** Exit code, or null if killed by a signal. */
  exitCode: number | null;
  /** Signal name (e.g. "SIGKILL") if the process was killed by one. */
  signal: string | null;
  /** True when the agent killed the command because its timeoutMs elapsed. */
  timedOut: boolean;
  /** Set when the command could not be started at all (no such file, bad cwd, unknown user). */
  spawnError?: string;
}

export interface SignalRequest {
  signal: string;
}

/** One entry of {@link AgentPath.commands}. */
export interface BackgroundCommandInfo {
  id: string;
  running: boolean;
  /** Set once the command has exited (running is then false). */
  exit?: ExecExit;
  /** Guest wall clock (ms since the epoch) when the agent started the command. */
  startedAtMs: number;
}

/** Bounds of {@link IdentityRequest}, enforced by the agent. */
export const IDENTITY_LIMITS = {
  minEntropyBytes: 32,
  maxEntropyBytes: 512,
  maxHostnameLength: 63,
} as const;

/**
 * Sent after a VM is restored from a memory snapshot: every clone resumes with the clock of the moment it was
 * saved, the same kernel CRNG state (identical /dev/urandom output), hostname and machine id.
 */
export interface IdentityRequest {
  /** The guest's new wall clock, ms since the epoch (the host's clock, sent right before). */
  epochMs: number;
  /** Base64 of {@link IDENTITY_LIMITS.minEntropyBytes}..{@link IDENTITY_LIMITS.maxEntropyBytes} bytes from the host's CSPRNG. */
  entropy: string;
  /** RFC 1123 name: dot-separated labels of letters, digits and inner hyphens; at most 63 characters. */
  hostname: string;
  /** 32 lowercase hex digits, not all zero (the format of /etc/machine-id). */
  machineId: string;
}

export interface IdentityResult {
  clockSetTo: number;
  /** The entropy was added to the kernel's pool and the CRNG reseeded from it. */
  reseeded: true;
  hostname: string;
  machineId: string;
  /** False when /etc/machine-id could not be written (read-only root, no /etc); the rest was still applied. */
  machineIdWritten: boolean;
}

export interface AgentHealth {
  ok: true;
  protocol: number;
  agentVersion: string;
  /** Random per boot of the agent process. */
  bootId: string;
  /** Random per HTTP/2 session (changes when the host reconnects). */
  sessionId: string;
  kernel: string;
  uptimeMs: number;
  runningCommands: number;
  /** Guest kernel uptime (ms) when the agent process started and when it began serving: the boot timeline. */
  timeline: { processStartMs: number; servingMs: number };
}

/** What runs in the guest besides its plumbing (init, the agent and its helpers). */
export interface GuestActivity {
  /** Commands the agent runs (foreground and background). */
  runningCommands: number;
  /** Userland processes other than the plumbing, whoever started them (e.g. a daemon a command left behind). */
  otherProcesses: number;
}

export type FileType = "file" | "directory" | "symlink" | "other";

export interface FileStat {
  path: string;
  type: FileType;
  size: number;
  mode: number;
  mtimeMs: number;
}

export interface DirEntry {
  /** The entry's name; with a listing depth over 1, its path relative to the listed directory ("a/b.txt"). */
  name: string;
  type: FileType;
  /** lstat's size and mtime (a symlink's own). Optional: agents before them sent neither. */
  size?: number;
  mtimeMs?: number;
}

/** Bounds of the files endpoints, enforced by the agent and checked again by the host. */
export const FILE_LIMITS = {
  /** Most entries one listing returns (all levels together). */
  maxListedEntries: 100_000,
  /** Largest listing body: the JSON limit does not fit that many entries. */
  maxListingBytes: 32 * 1024 * 1024,
  /** Deepest listing. */
  maxListDepth: 1024,
} as const;

/** Content type of a watch stream: newline-delimited JSON, one {@link WatchEvent} per line. */
export const WATCH_CONTENT_TYPE = "application/x-ndjson";

export const WATCH_LIMITS = {
  /**
   * Longest line of a watch stream. An event's paths are at most 16 KiB of bytes each (longer ones are reported as
   * an overflow); two of them JSON-escaped (up to 6 characters a byte) fit.
   */
  maxEventBytes: 256 * 1024,
} as const;

/**
 * A change under a watched path. Paths are absolute guest paths; bytes of a name that are not UTF-8 become U+FFFD.
 * `write`: a file opened for writing was closed (one event per writer, once the content is complete), so a new file
 * written by a program shows as `create` then `write`. `rename`: a move within the watched tree; a move out of it is
 * a `remove`, a move into it a `create` (with a `create` for everything a directory brings along). `overflow`:
 * events were lost (the guest's event queue or its watch limit ran over); the tree may need a fresh listing.
 */
export type WatchEvent =
  | { type: "create" | "write" | "remove"; path: string; isDirectory: boolean }
  | { type: "rename"; path: string; oldPath: string; isDirectory: boolean }
  | { type: "overflow" };

export type WatchEventType = WatchEvent["type"];

/** JSON error body for any non-2xx agent response. */
export interface AgentErrorBody {
  error: { code: AgentErrorCode; message: string };
}

export type AgentErrorCode =
  | "bad_request"
  | "not_found"
  | "is_directory"
  | "not_directory"
  | "permission_denied"
  | "too_large"
  | "too_many_commands"
  /** rmdir or a rename onto a directory that still has entries. */
  | "not_empty"
  /** mkdir without recursive of a path that exists. */
  | "already_exists"
  /** The last identity refresh failed; the guest runs nothing until one succeeds. */
  | "identity_refresh_failed"
  | "internal";

// ---------------------------------------------------------------------------------------------------------------
// Helpers shared by the agent (encoder) and the host client (decoder). Kept free of Node-only APIs except Buffer
// for base64url, so both sides agree byte for byte.
// ---------------------------------------------------------------------------------------------------------------

/** Bytes before each record's payload: 1 byte kind + 4 bytes big-endian payload length. */
export const RECORD_HEADER_BYTES = 5;

/** Content type of the exec response body (a sequence of records). */
export const EXEC_RECORDS_CONTENT_TYPE = "application/vnd.codecourier.exec-records";

/** Encodes one exec record (header + payload) into a single buffer. */
export function encodeRecord(kind: number, payload: Uint8Array): Uint8Array {
  const record = new Uint8Array(RECORD_HEADER_BYTES + payload.length);
  const view = new DataView(record.buffer, record.byteOffset, record.byteLength);
  view.setUint8(0, kind);
  view.setUint32(1, payload.length, false);
  record.set(payload, RECORD_HEADER_BYTES);
  return record;
}

/** Raised by {@link ExecRecordDecoder} when the byte stream does not follow the record format. */
export class ExecRecordFormatError extends Error {
  override readonly name = "ExecRecordFormatError";
}

export interface ExecRecord {
  kind: OutputKindName;
  /** May alias the chunk passed to {@link ExecRecordDecoder.push}; copy it if the chunk's memory is reused. */
  payload: Uint8Array;
}

const outputKindNames = new Map<number, OutputKindName>(
  Object.entries(OutputKind).map(([name, code]) => [code, name as OutputKindName]),
);

/**
 * Incremental, bounded decoder of the exec record stream. It never holds more than one record's payload
 * (at most `maxPayload` bytes) plus a 5 byte header, whatever the peer sends.
 */
export class ExecRecordDecoder {
  readonly #maxPayload: number;
  readonly #header = new Uint8Array(RECORD_HEADER_BYTES);
  #headerFilled = 0;
  #kind: OutputKindName = "stdout";
  /** Payload length of the record being read, or null while reading a header. */
  #payloadLength: number | null = null;
  /** Copy buffer, only allocated when a payload spans chunks. */
  #partial: Uint8Array | null = null;
  #partialFilled = 0;

  constructor(maxPayload: number = AGENT_LIMITS.maxOutputRecord) {
    this.#maxPayload = maxPayload;
  }

  /** True when the bytes fed so far end exactly on a record boundary. */
  get atRecordBoundary(): boolean {
    return this.#headerFilled === 0 && this.#payloadLength === null;
  }

  /**
   * Feeds a chunk; calls `onRecord` for every record it completes. Throws {@link ExecRecordFormatError} on a
   * malformed stream, after which the decoder (and the stream it decodes) must be abandoned.
   */
  push(chunk: Uint8Array, onRecord: (record: ExecRecord) => void): void {
    let offset = 0;
    for (;;) {
      if (this.#payloadLength === null) {
        if (offset === chunk.length) return;
        const take = Math.min(RECORD_HEADER_BYTES - this.#headerFilled, chunk.length - offset);
        this.#header.set(chunk.subarray(offset, offset + take), this.#headerFilled);
        this.#headerFilled += take;
        offset += take;
        if (this.#headerFilled < RECORD_HEADER_BYTES) return;
        this.#readHeader();
      }
      const length: number = this.#payloadLength ?? 0;
      const available = chunk.length - offset;
      if (this.#partial === null && available >= length) {
        // Whole payload inside this chunk: hand out a view instead of copying.
        this.#emit(chunk.subarray(offset, offset + length), onRecord);
        offset += length;
        continue;
      }
      if (available === 0) return;
      this.#partial ??= new Uint8Array(length);
      const take = Math.min(length - this.#partialFilled, available);
      this.#partial.set(chunk.subarray(offset, offset + take), this.#partialFilled);
      this.#partialFilled += take;
      offset += take;
      if (this.#partialFilled < length) return;
      this.#emit(this.#partial, onRecord);
    }
  }

  #readHeader(): void {
    const view = new DataView(this.#header.buffer, this.#header.byteOffset, RECORD_HEADER_BYTES);
    const kindCode = view.getUint8(0);
    const length = view.getUint32(1, false);
    this.#headerFilled = 0;
    const kind = outputKindNames.get(kindCode);
    if (kind === undefined) throw new ExecRecordFormatError(`unknown record kind ${kindCode}`);
    if (length > this.#maxPayload) {
      throw new ExecRecordFormatError(`record of ${length} bytes exceeds the limit of ${this.#maxPayload}`);
    }
    this.#kind = kind;
    this.#payloadLength = length;
  }

  #emit(payload: Uint8Array, onRecord: (record: ExecRecord) => void): void {
    this.#payloadLength = null;
    this.#partial = null;
    this.#partialFilled = 0;
    onRecord({ kind: this.#kind, payload });
  }
}

/** Encodes an exec spec for {@link EXEC_SPEC_HEADER}: base64url(JSON). */
export function encodeExecSpecHeader(spec: ExecSpec): string {
  return Buffer.from(JSON.stringify(spec), "utf8").toString("base64url");
}

/** Decodes {@link EXEC_SPEC_HEADER}; the result is unvalidated JSON. Throws on malformed base64url or JSON. */
export function decodeExecSpecHeader(value: string): unknown {
  if (!/^[A-Za-z0-9_-]*$/.test(value)) throw new SyntaxError("exec spec header is not base64url");
  return JSON.parse(Buffer.from(value, "base64url").toString("utf8")) as unknown;
}
