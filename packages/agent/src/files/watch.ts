import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { constants as osConstants } from "node:os";
import { WATCH_CONTENT_TYPE, type WatchEvent } from "@codecourier/protocol";
import type { SpawnedProcess, Spawner } from "../commands/spawner.js";
import { RequestError, badRequest, requirePathParam, toRequestError } from "../http/respond.js";
import { logProblem } from "../log.js";

/**
 * Longest line the helper writes: an event with two paths of at most 16 KiB bytes each, hex (guest-watch.c's
 * MAX_PATH_BYTES). A longer one means a broken helper; it is killed.
 */
const maxHelperLineBytes = 2 * 2 * 16 * 1024 + 64;
/** What is kept of the helper's stderr for an error message. */
const maxStderrBytes = 4096;

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/**
 * GET /v1/files/watch: one guest-watch helper (packages/agent/native/guest-watch.c) per watch, started through the
 * agent's spawner like a command, its event lines turned into NDJSON on the stream. The helpers are plumbing, not
 * user activity: a sandbox with only a watch open counts as idle, so the host may stop its vCPUs (nothing changes
 * files while nothing runs, and the request that would change one wakes it first).
 */
export class FileWatches {
  readonly #helperPids = new Set<number>();

  /** `helperPath` unset (an agent outside a guest without the helper): watches are refused. */
  constructor(
    readonly helperPath: string | undefined,
    readonly spawner: Spawner,
  ) {}

  /** Pids of the running watch helpers, for the process census. */
  get helperPids(): number[] {
    return [...this.#helperPids];
  }

  async handle(stream: ServerHttp2Stream, query: URLSearchParams): Promise<void> {
    const path = requirePathParam(query);
    const recursive = parseRecursive(query.get("recursive"));
    if (this.helperPath === undefined) {
      throw new RequestError(500, "internal", "file watching needs the guest-watch helper (start the agent with --watcher)");
    }
    const helper = await this.spawner.spawn({
      file: this.helperPath,
      args: recursive ? ["--recursive", path] : [path],
      cwd: "/",
      env: {},
      // Its stdin is how it learns the agent is gone, should the agent die without killing it.
      stdin: true,
    });
    this.#helperPids.add(helper.pid);
    helper.onClose(() => this.#helperPids.delete(helper.pid));
    new WatchSession(stream, helper, path).start();
  }
}

function parseRecursive(value: string | null): boolean {
  if (value === null || value === "0" || value === "false") return false;
  if (value === "1" || value === "true") return true;
  throw badRequest("recursive must be 0 or 1");
}

/** One watch: the helper's lines in, the stream's NDJSON out; either side ending ends the other. */
class WatchSession {
  #pending = "";
  #ready = false;
  #stderr = "";
  #ended = false;

  constructor(
    readonly stream: ServerHttp2Stream,
    readonly helper: SpawnedProcess,
    readonly path: string,
  ) {}

  start(): void {
    const { stream, helper } = this;
    helper.stdin?.on("error", () => {});
    helper.stdout.setEncoding("utf8");
    helper.stdout.on("data", (chunk: string) => this.#onOutput(chunk));
    helper.stderr?.setEncoding("utf8");
    helper.stderr?.on("data", (chunk: string) => (this.#stderr = (this.#stderr + chunk).slice(-maxStderrBytes)));
    helper.onClose((exitCode, signal) => this.#onHelperClosed(exitCode, signal));
    stream.on("close", () => this.#stop());
    // Paused by a full stream, the helper blocks on its stdout and the guest kernel's queue overflows: the host then
    // gets an `overflow` event, never a backlog held here.
    stream.on("drain", () => helper.stdout.resume());
  }

  #onOutput(chunk: string): void {
    this.#pending += chunk;
    let newline: number;
    while ((newline = this.#pending.indexOf("\n")) >= 0) {
      const line = this.#pending.slice(0, newline);
      this.#pending = this.#pending.slice(newline + 1);
      this.#onLine(line);
    }
    if (this.#pending.length > maxHelperLineBytes) this.#fail(new RequestError(500, "internal", "the watch helper wrote an overlong line"));
  }

  #onLine(line: string): void {
    if (this.#ended) return;
    const [kind = "", ...fields] = line.split(" ");
    if (!this.#ready) {
      if (kind === "ready") {
        this.#ready = true;
        if (this.stream.destroyed || this.stream.closed) return this.#stop();
        this.stream.respond({ ":status": 200, "content-type": WATCH_CONTENT_TYPE });
        return;
      }
      if (kind === "error") return this.#fail(helperError(this.path, fields));
      return this.#fail(new RequestError(500, "internal", `the watch helper answered "${line.slice(0, 200)}" instead of ready`));
    }
    const event = parseEventLine(kind, fields);
    if (event === undefined) return this.#fail(new RequestError(500, "internal", `the watch helper wrote a malformed event: ${line.slice(0, 200)}`));
    if (!this.stream.write(`${JSON.stringify(event)}\n`)) this.helper.stdout.pause();
  }

  #onHelperClosed(exitCode: number | null, signal: NodeJS.Signals | null): void {
    if (this.#ended) return;
    if (this.#ready && exitCode === 0) {
      // The watched path was deleted or moved away (its `remove` was the last event), or the helper was told to stop.
      this.#ended = true;
      if (!this.stream.destroyed) this.stream.end();
      return;
    }
    const how = signal === null ? `exit code ${exitCode}` : `signal ${signal}`;
    const detail = this.#stderr.trim() === "" ? "" : `: ${this.#stderr.trim()}`;
    this.#fail(new RequestError(500, "internal", `the watch helper ended (${how})${detail}`));
  }

  /** Before the answer: an error response; after it, a reset tells the host the event stream is incomplete. */
  #fail(error: RequestError): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#stop();
    const { stream } = this;
    if (stream.destroyed || stream.closed) return;
    if (stream.headersSent) {
      logProblem(`watch of ${this.path} failed`, error);
      stream.close(h2.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    const body = Buffer.from(JSON.stringify({ error: { code: error.code, message: error.message } }), "utf8");
    stream.respond({ ":status": error.status, "content-type": "application/json", "content-length": body.length });
    stream.end(body);
  }

  /** Ends the helper; its stdin closing alone would do, SIGTERM also reaches one blocked on a full stdout. */
  #stop(): void {
    this.#ended = true;
    this.helper.stdin?.destroy();
    this.helper.stdout.destroy();
    this.helper.stderr?.destroy();
    try {
      process.kill(this.helper.pid, "SIGTERM");
    } catch {
      // Already gone.
    }
  }
}

/** The helper's `error <errno> <step>`: the errno becomes the same answer a file operation failing with it gets. */
function helperError(path: string, fields: string[]): RequestError {
  const [errno = "", step = "watch"] = fields;
  const code = errnoNames.get(Number(errno)) ?? "EIO";
  if (code === "ENOSPC") {
    return new RequestError(413, "too_large", `${path} holds more directories than the guest can watch (inotify's max_user_watches)`);
  }
  if (code === "EMFILE") return new RequestError(500, "internal", "too many watches at once in the guest (inotify's max_user_instances)");
  return toRequestError(Object.assign(new Error(`watch ${path}: ${code} (${step})`), { code }));
}

function decodePath(hex: string | undefined): string | undefined {
  if (hex === undefined || hex === "" || hex.length % 2 !== 0 || !/^[0-9a-f]+$/.test(hex)) return undefined;
  return Buffer.from(hex, "hex").toString("utf8");
}

/** One helper event line (see guest-watch.c) as the protocol's event; undefined if malformed. */
function parseEventLine(kind: string, fields: string[]): WatchEvent | undefined {
  if (kind === "overflow" && fields.length === 0) return { type: "overflow" };
  const [directoryFlag, pathHex, oldPathHex, ...extra] = fields;
  if ((directoryFlag !== "0" && directoryFlag !== "1") || extra.length > 0) return undefined;
  const isDirectory = directoryFlag === "1";
  const path = decodePath(pathHex);
  if (path === undefined) return undefined;
  if (kind === "rename") {
    const oldPath = decodePath(oldPathHex);
    return oldPath === undefined ? undefined : { type: "rename", path, oldPath, isDirectory };
  }
  if ((kind === "create" || kind === "write" || kind === "remove") && oldPathHex === undefined) return { type: kind, path, isDirectory };
  return undefined;
}
