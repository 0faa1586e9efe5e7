import type { ApiCommandResult, ApiDirEntry, ApiFileStat } from "@codecourier/protocol/api";
import { MAX_COMMAND_OUTPUT_BYTES, decodeCommandResult, requireWholeOutput } from "./command-result.js";
import type { ApiClient, RequestOptions } from "./client.js";
import { NotFoundError } from "./errors.js";
import {
  ByteSource,
  CHUNKED_UPLOAD_THRESHOLD_BYTES,
  uploadInChunks,
  type UploadProgress,
  type UploadRoutes,
  type UploadState,
} from "./uploads.js";
import { syncDirectory, type SyncOptions, type SyncResult } from "./sync.js";
import { watchPath, type FileWatch, type WatchEvent, type WatchOptions } from "./watch.js";

export type FileStat = ApiFileStat;
export type DirEntry = ApiDirEntry;
/** What `write` takes: text (UTF-8), bytes, a Blob, or a stream of bytes (sent as it is read). */
export type FileData = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

export interface ReadOptions extends RequestOptions {
  /** "text" (UTF-8, the default), "bytes" (Uint8Array) or "stream" (ReadableStream<Uint8Array>). */
  format?: "text" | "bytes" | "stream";
}

export interface WriteOptions extends RequestOptions {
  /** Permission bits, e.g. 0o755. Default: the replaced file's, or 0o644 for a new file. */
  mode?: number;
  /** The file's modification time (a Date, or whole ms since the epoch), set before the file appears at `path`. */
  mtime?: Date | number;
  /** Called after each chunk of a chunked upload (data over 16 MiB) that the server has stored. */
  onProgress?: (progress: UploadProgress) => void;
}

export interface UploadOptions extends WriteOptions {
  /**
   * Resumes this upload (its id comes from `onProgress`): the bytes it already holds are skipped from `data`,
   * which must be the same data from its start. Its destination, mode and mtime are the ones it was started with.
   */
  uploadId?: string;
}

export interface ListOptions extends RequestOptions {
  /** Levels to walk (default 1): deeper entries are named by their path relative to `path` ("a/b.txt"). */
  depth?: number;
}

/**
 * A sandbox's files. Paths are the guest's: absolute, or relative to the sandbox's working directory (/root).
 * Writes are atomic (temp file, fsync, rename in the guest): a reader sees the old content or the new, never half.
 */
export class SandboxFiles {
  readonly #client: ApiClient;
  readonly #base: string;
  /** sync runs guest commands (find, sha256sum, tar) besides moving bytes. */
  readonly #commands: string;

  constructor(client: ApiClient, sandboxPath: string) {
    this.#client = client;
    this.#base = `${sandboxPath}/files`;
    this.#commands = `${sandboxPath}/commands`;
  }

  read(path: string, options?: ReadOptions & { format?: "text" }): Promise<string>;
  read(path: string, options: ReadOptions & { format: "bytes" }): Promise<Uint8Array>;
  read(path: string, options: ReadOptions & { format: "stream" }): Promise<ReadableStream<Uint8Array>>;
  async read(path: string, options: ReadOptions = {}): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    const response = await this.#client.raw("GET", `${this.#base}/content`, { query: new URLSearchParams({ path }), signal: options.signal });
    if (options.format === "stream") return response.body ?? new Blob([]).stream();
    if (options.format === "bytes") return new Uint8Array(await response.arrayBuffer());
    return response.text();
  }

  /**
   * Replaces the file at `path` atomically. Data over 16 MiB, and streams that turn out to be, go as a resumable
   * chunked upload (see `upload`): the file appears whole, once all of it is in the sandbox.
   */
  async write(path: string, data: FileData, options: WriteOptions = {}): Promise<FileStat> {
    const mode = checkedMode(options.mode);
    const mtimeMs = checkedMtime(options.mtime);
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    let body: Uint8Array | Blob;
    if (bytes instanceof Uint8Array || (typeof Blob !== "undefined" && bytes instanceof Blob)) {
      const size = bytes instanceof Uint8Array ? bytes.length : bytes.size;
      if (size > CHUNKED_UPLOAD_THRESHOLD_BYTES) return this.#uploadInChunks(path, ByteSource.of(bytes), options);
      body = bytes;
    } else {
      // A stream of unknown size: as much as decides whether it is large is read first.
      const source = ByteSource.of(bytes);
      const head = await source.read(CHUNKED_UPLOAD_THRESHOLD_BYTES + 1);
      if (head.length > CHUNKED_UPLOAD_THRESHOLD_BYTES) {
        source.unread(head);
        return this.#uploadInChunks(path, source, options);
      }
      body = head;
    }
    const query = new URLSearchParams({ path });
    if (mode !== undefined) query.set("mode", mode.toString(8));
    if (mtimeMs !== undefined) query.set("mtime", String(mtimeMs));
    const response = await this.#client.raw("PUT", `${this.#base}/content`, { query, body: body as BodyInit, signal: options.signal });
    return (await response.json()) as FileStat;
  }

  /**
   * Writes `data` as a resumable chunked upload, whatever its size: chunks of 8 MiB, each retried from what the
   * server holds after a network failure or a server error. If the upload still fails, a later call with the
   * `uploadId` (from `onProgress`) and the same data continues it. The file appears at `path` only once complete.
   */
  async upload(path: string, data: FileData, options: UploadOptions = {}): Promise<FileStat> {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    return this.#uploadInChunks(path, ByteSource.of(bytes), options);
  }

  async #uploadInChunks(path: string, source: ByteSource, options: UploadOptions): Promise<FileStat> {
    const base = `${this.#base}/uploads`;
    const client = this.#client;
    const routes: UploadRoutes = {
      start: (request, signal) => client.request<UploadState>("POST", base, { body: request, signal }),
      status: (uploadId, signal) => client.request<UploadState>("GET", `${base}/${encodeURIComponent(uploadId)}`, { signal }),
      append: async (uploadId, offset, chunk, signal) => {
        const query = new URLSearchParams({ offset: String(offset) });
        const response = await client.raw("PUT", `${base}/${encodeURIComponent(uploadId)}`, { query, body: chunk as BodyInit, signal });
        return (await response.json()) as UploadState;
      },
      complete: (uploadId, size, signal) =>
        client.request<FileStat>("POST", `${base}/${encodeURIComponent(uploadId)}/complete`, { query: new URLSearchParams({ size: String(size) }), signal }),
    };
    try {
      return await uploadInChunks(routes, path, source, {
        uploadId: options.uploadId,
        mode: checkedMode(options.mode),
        mtimeMs: checkedMtime(options.mtime),
        signal: options.signal,
        onProgress: options.onProgress,
      });
    } finally {
      await source.cancel();
    }
  }

  /** Gives up an unfinished upload: the server forgets it and removes what it had stored. */
  async abortUpload(uploadId: string, options: RequestOptions = {}): Promise<void> {
    await this.#client.request("DELETE", `${this.#base}/uploads/${encodeURIComponent(uploadId)}`, { signal: options.signal });
  }

  /** Makes a directory; `recursive` (the default) is mkdir -p: missing parents too, and an existing one is fine. */
  async mkdir(path: string, options: RequestOptions & { recursive?: boolean } = {}): Promise<FileStat> {
    const { signal, recursive } = options;
    return this.#client.request<FileStat>("POST", `${this.#base}/mkdir`, { body: { path, recursive }, signal });
  }

  /**
   * Removes a file, a symlink (never what it points to) or a directory. A directory with entries needs
   * `recursive: true` (else ConflictError); a missing path is a NotFoundError.
   */
  async remove(path: string, options: RequestOptions & { recursive?: boolean } = {}): Promise<void> {
    const { signal, recursive } = options;
    await this.#client.request("POST", `${this.#base}/remove`, { body: { path, recursive }, signal });
  }

  /** Renames atomically (rename(2) in the guest): a file at `to` is replaced. Returns what is now at `to`. */
  async rename(from: string, to: string, options: RequestOptions = {}): Promise<FileStat> {
    return this.#client.request<FileStat>("POST", `${this.#base}/rename`, { body: { from, to }, signal: options.signal });
  }

  /** Sets the permission bits, e.g. 0o755 (follows a symlink, like chmod). */
  async chmod(path: string, mode: number, options: RequestOptions = {}): Promise<FileStat> {
    return this.#client.request<FileStat>("POST", `${this.#base}/chmod`, { body: { path, mode: checkedMode(mode) }, signal: options.signal });
  }

  async stat(path: string, options: RequestOptions = {}): Promise<FileStat> {
    const response = await this.#client.raw("GET", `${this.#base}/stat`, { query: new URLSearchParams({ path }), signal: options.signal });
    return (await response.json()) as FileStat;
  }

  /** Whether something (file, directory, symlink) exists at `path`. */
  async exists(path: string, options: RequestOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (error) {
      if (error instanceof NotFoundError) return false;
      throw error;
    }
  }

  /**
   * Watches `path` (a directory, or a file by its name) and calls `onEvent` with each create, write (a writer closed
   * the file), remove and rename, in order. Resolves once the sandbox is watching, so nothing done after the await
   * is missed; `close()` the result, or `await using` it, to stop. See WatchEvent and FileWatch.done.
   */
  watch(path: string, onEvent: (event: WatchEvent) => void): Promise<FileWatch>;
  watch(path: string, options: WatchOptions, onEvent: (event: WatchEvent) => void): Promise<FileWatch>;
  watch(path: string, second: WatchOptions | ((event: WatchEvent) => void), third?: (event: WatchEvent) => void): Promise<FileWatch> {
    const [options, onEvent] = typeof second === "function" ? [{}, second] : [second, third];
    if (onEvent === undefined) throw new TypeError("watch needs an onEvent callback");
    return watchPath(this.#client, this.#base, path, options, onEvent);
  }

  /**
   * A directory's entries, sorted by name, with size and mtime. With `depth` N, N levels (names relative to `path`,
   * symlinked directories not entered); more than 100,000 entries is refused (BadRequestError, payload_too_large).
   */
  async list(path: string, options: ListOptions = {}): Promise<DirEntry[]> {
    const query = new URLSearchParams({ path });
    if (options.depth !== undefined) query.set("depth", String(options.depth));
    const response = await this.#client.raw("GET", `${this.#base}/list`, { query, signal: options.signal });
    return ((await response.json()) as { entries: DirEntry[] }).entries;
  }

  /**
   * Mirrors `localDir` into the sandbox's `remoteDir` (`direction: "up"`) or back (`"down"`), moving only what
   * changed (size, mtime, then content hash) as one tar archive; with `delete`, removes what the source lacks.
   * Keeps modes and mtimes; copies symlinks as symlinks. Needs node:fs (Node, Bun, Deno). See sync.ts.
   */
  sync(localDir: string, remoteDir: string, options: SyncOptions): Promise<SyncResult> {
    // Sync parses its commands' whole output (listings, digests): the largest cap, and an error past it.
    const run = async (argv: readonly string[], command: { stdin?: string; env?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal }) => {
      const { signal, ...fields } = command;
      const body = { argv: [...argv], ...fields, maxOutputBytes: MAX_COMMAND_OUTPUT_BYTES };
      return requireWholeOutput(decodeCommandResult(await this.#client.request<ApiCommandResult>("POST", this.#commands, { body, signal })), "sync");
    };
    return syncDirectory({ run, write: (path, data, o) => this.write(path, data, o), read: (path, o) => this.read(path, o) }, localDir, remoteDir, options);
  }
}

function checkedMode(mode: number | undefined): number | undefined {
  if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) throw new RangeError(`invalid file mode: ${mode}`);
  return mode;
}

function checkedMtime(mtime: Date | number | undefined): number | undefined {
  if (mtime === undefined) return undefined;
  const ms = mtime instanceof Date ? mtime.getTime() : mtime;
  if (!Number.isInteger(ms) || ms < 0) throw new RangeError(`invalid mtime: ${String(mtime)} (whole ms since the epoch, not before it)`);
  return ms;
}
