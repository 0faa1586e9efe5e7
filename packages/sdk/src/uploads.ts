import type { ApiFileStat, ApiUploadState, StartUploadRequest } from "@codecourier/protocol/api";
import { CodeCourierError, ConflictError } from "./errors.js";

/** Payloads larger than this (and streams that turn out larger) are sent as a resumable chunked upload. */
export const CHUNKED_UPLOAD_THRESHOLD_BYTES = 16 * 1024 * 1024;
/** One chunk of a chunked upload: the most the SDK holds in memory for a retry. */
export const UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024;
/** Tries per chunk after a transport error, a 5xx or a conflict, each after asking the server what it holds. */
const maxChunkAttempts = 5;
const firstRetryDelayMs = 200;

export type UploadState = ApiUploadState;

/** Where a chunked upload stands; `onProgress` is called after each chunk the server has stored. */
export interface UploadProgress {
  uploadId: string;
  /** The destination, resolved in the guest. */
  path: string;
  /** Bytes the server holds (fsynced in the guest). */
  received: number;
}

/** The server's upload routes, as the chunking loop needs them (implemented by SandboxFiles). */
export interface UploadRoutes {
  start(request: StartUploadRequest, signal?: AbortSignal): Promise<UploadState>;
  status(uploadId: string, signal?: AbortSignal): Promise<UploadState>;
  append(uploadId: string, offset: number, chunk: Uint8Array, signal?: AbortSignal): Promise<UploadState>;
  complete(uploadId: string, size: number, signal?: AbortSignal): Promise<ApiFileStat>;
}

export interface ChunkedUploadOptions {
  /** Resume this upload: the bytes it already holds are skipped from the data, which must be the same. */
  uploadId?: string;
  mode?: number;
  mtimeMs?: number;
  signal?: AbortSignal;
  onProgress?: (progress: UploadProgress) => void;
}

/**
 * Sends `source` in chunks of {@link UPLOAD_CHUNK_BYTES}. A chunk that fails in transit (no answer, a 5xx, or a
 * conflict such as a retry of a chunk the server did store) is resumed from what the server says it holds; then
 * the upload is completed, which moves the file into place in one atomic rename.
 */
export async function uploadInChunks(routes: UploadRoutes, path: string, source: ByteSource, options: ChunkedUploadOptions): Promise<ApiFileStat> {
  const { signal } = options;
  const state =
    options.uploadId === undefined
      ? await routes.start({ path, mode: options.mode, mtime: options.mtimeMs }, signal)
      : await routes.status(options.uploadId, signal);
  await source.skip(state.received);
  let received = state.received;
  for (;;) {
    const chunk = await source.read(UPLOAD_CHUNK_BYTES);
    if (chunk.length === 0) break;
    received = await sendChunk(routes, state.uploadId, received, chunk, signal);
    options.onProgress?.({ uploadId: state.uploadId, path: state.path, received });
  }
  return routes.complete(state.uploadId, received, signal);
}

async function sendChunk(routes: UploadRoutes, uploadId: string, chunkStart: number, chunk: Uint8Array, signal?: AbortSignal): Promise<number> {
  const chunkEnd = chunkStart + chunk.length;
  let stored = chunkStart;
  for (let attempt = 1; ; attempt++) {
    try {
      if (attempt > 1) {
        // The failed attempt may have been stored (only its answer lost) or not at all: the server knows.
        const { received } = await routes.status(uploadId, signal);
        if (received < chunkStart || received > chunkEnd) {
          throw new CodeCourierError(`upload ${uploadId} holds ${received} bytes, outside the chunk being sent (${chunkStart}-${chunkEnd})`, {
            code: "conflict",
          });
        }
        stored = received;
        if (stored === chunkEnd) return stored;
      }
      return (await routes.append(uploadId, stored, chunk.subarray(stored - chunkStart), signal)).received;
    } catch (error) {
      if (attempt >= maxChunkAttempts || !isWorthRetrying(error)) throw error;
      await sleep(firstRetryDelayMs * 2 ** (attempt - 1), signal);
    }
  }
}

/** Failures a retry can get past: no answer, a server-side failure, or a conflict over the offset or a busy upload. */
function isWorthRetrying(error: unknown): boolean {
  if (!(error instanceof CodeCourierError)) return false; // a caller's abort, or a bug
  return error.code === "unavailable" || (error.status !== undefined && error.status >= 500) || error instanceof ConflictError;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The data of a write, read in pieces: bytes are sliced without copying, a Blob is read slice by slice, and a
 * stream is read only as far as the next piece needs (so at most about one piece is held at a time).
 */
export class ByteSource {
  /** Known for bytes and Blobs; a stream's is not. */
  readonly size: number | undefined;
  readonly #read: (max: number) => Promise<Uint8Array>;
  readonly #cancel: () => Promise<void>;
  /** Bytes given back with unread(), served before the source's own. */
  #unread: Uint8Array | undefined;

  private constructor(size: number | undefined, read: (max: number) => Promise<Uint8Array>, cancel: () => Promise<void> = async () => {}) {
    this.size = size;
    this.#read = read;
    this.#cancel = cancel;
  }

  static of(data: Uint8Array | Blob | ReadableStream<Uint8Array>): ByteSource {
    if (data instanceof Uint8Array) {
      let offset = 0;
      return new ByteSource(data.length, async (max) => {
        const piece = data.subarray(offset, offset + max);
        offset += piece.length;
        return piece;
      });
    }
    if (typeof Blob !== "undefined" && data instanceof Blob) {
      let offset = 0;
      return new ByteSource(data.size, async (max) => {
        const piece = new Uint8Array(await data.slice(offset, offset + max).arrayBuffer());
        offset += piece.length;
        return piece;
      });
    }
    return ByteSource.#ofStream(data as ReadableStream<Uint8Array>);
  }

  static #ofStream(stream: ReadableStream<Uint8Array>): ByteSource {
    const reader = stream.getReader();
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    let done = false;
    const read = async (max: number): Promise<Uint8Array> => {
      while (pendingBytes < max && !done) {
        const next = await reader.read();
        if (next.done) done = true;
        else if (next.value.length > 0) {
          pending.push(next.value);
          pendingBytes += next.value.length;
        }
      }
      const all = pending.length === 1 ? pending[0]! : concat(pending, pendingBytes);
      const piece = all.subarray(0, Math.min(max, all.length));
      const rest = all.subarray(piece.length);
      pending = rest.length > 0 ? [rest] : [];
      pendingBytes = rest.length;
      return piece;
    };
    const cancel = async () => {
      if (!done) await reader.cancel().catch(() => undefined);
    };
    return new ByteSource(undefined, read, cancel);
  }

  /** Up to `max` bytes; fewer only at the end of the data, none after it. */
  async read(max: number): Promise<Uint8Array> {
    const given = this.#unread;
    if (given === undefined) return this.#read(max);
    this.#unread = given.length > max ? given.subarray(max) : undefined;
    if (given.length >= max) return given.subarray(0, max);
    // Topped up from the source, so that a piece is short only at the end of the data.
    const more = await this.#read(max - given.length);
    return more.length === 0 ? given : concat([given, more], given.length + more.length);
  }

  /** Gives bytes back, to be read again first (what was read to find out whether the data is large). */
  unread(bytes: Uint8Array): void {
    if (this.#unread !== undefined) throw new Error("unread() holds one piece at a time");
    this.#unread = bytes;
  }

  /** Passes over `count` bytes (those a resumed upload already holds); the data must have them. */
  async skip(count: number): Promise<void> {
    let left = count;
    while (left > 0) {
      const piece = await this.read(Math.min(left, UPLOAD_CHUNK_BYTES));
      if (piece.length === 0) {
        throw new CodeCourierError(`the upload already holds ${count} bytes, more than the data given to resume it`, { code: "bad_request" });
      }
      left -= piece.length;
    }
  }

  /** Stops reading a stream that will not be read to its end (the upload failed), as fetch does with a body. */
  cancel(): Promise<void> {
    return this.#cancel();
  }
}

function concat(pieces: Uint8Array[], total: number): Uint8Array {
  const all = new Uint8Array(total);
  let offset = 0;
  for (const piece of pieces) {
    all.set(piece, offset);
    offset += piece.length;
  }
  return all;
}
