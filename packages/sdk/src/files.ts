import type { ApiDirEntry, ApiFileStat } from "@codecourier/protocol/api";
import type { ApiClient, RequestOptions } from "./client.js";
import { NotFoundError } from "./errors.js";

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
}

/**
 * A sandbox's files. Paths are the guest's: absolute, or relative to the sandbox's working directory (/root).
 * Writes are atomic (temp file, fsync, rename in the guest): a reader sees the old content or the new, never half.
 */
export class SandboxFiles {
  readonly #client: ApiClient;
  readonly #base: string;

  constructor(client: ApiClient, sandboxPath: string) {
    this.#client = client;
    this.#base = `${sandboxPath}/files`;
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

  async write(path: string, data: FileData, options: WriteOptions = {}): Promise<FileStat> {
    const query = new URLSearchParams({ path });
    if (options.mode !== undefined) {
      if (!Number.isInteger(options.mode) || options.mode < 0 || options.mode > 0o7777) throw new RangeError(`invalid file mode: ${options.mode}`);
      query.set("mode", options.mode.toString(8));
    }
    const body = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const response = await this.#client.raw("PUT", `${this.#base}/content`, { query, body: body as BodyInit, signal: options.signal });
    return (await response.json()) as FileStat;
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

  async list(path: string, options: RequestOptions = {}): Promise<DirEntry[]> {
    const response = await this.#client.raw("GET", `${this.#base}/list`, { query: new URLSearchParams({ path }), signal: options.signal });
    return ((await response.json()) as { entries: DirEntry[] }).entries;
  }
}
