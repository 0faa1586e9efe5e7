import { randomUUID } from "node:crypto";
import { constants as fsConstants, type Stats } from "node:fs";
import { lstat, mkdir, open, rename, unlink, type FileHandle } from "node:fs/promises";
import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { basename, dirname, join } from "node:path";
import { RequestError, badRequest, requirePathParam, sendJson } from "../http/respond.js";
import { logProblem } from "../log.js";
import { toFileStat } from "./metadata.js";

const readChunkBytes = 256 * 1024;
const defaultNewFileMode = 0o644;

/** GET /v1/files/content: streams a regular file's bytes (until EOF, so /proc files work too). */
export async function sendFileContent(stream: ServerHttp2Stream, path: string): Promise<void> {
  // O_NONBLOCK: opening a FIFO must not park a threadpool thread until some writer shows up.
  const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  try {
    const info = await handle.stat();
    if (info.isDirectory()) throw new RequestError(409, "is_directory", `is a directory: ${path}`);
    if (!info.isFile()) throw badRequest(`not a regular file: ${path}`);
  } catch (error) {
    await handle.close();
    throw error;
  }
  if (stream.destroyed) {
    await handle.close();
    return;
  }
  stream.respond({ ":status": 200, "content-type": "application/octet-stream" });
  const source = handle.createReadStream({ highWaterMark: readChunkBytes });
  source.on("error", (error) => {
    logProblem(`reading ${path} failed`, error);
    // Headers are out: resetting is the only way to tell the host the content is incomplete.
    if (!stream.destroyed) stream.close(h2.NGHTTP2_INTERNAL_ERROR);
  });
  stream.on("close", () => source.destroy());
  source.pipe(stream);
}

/** Frames arrive in 16 KiB pieces; one write per MiB instead of one per frame (each write is a threadpool round trip,
 * which under TCG costs more than the copy). */
const writeBatchBytes = 1024 * 1024;
/** Latest mtime accepted: the end of year 9999, where dates stop being printable as ISO strings. */
const maxMtimeMs = 253_402_300_799_999;

/** What a replacement sets on the new file before it takes the old one's place. */
interface Settings {
  /** Permission bits; default: the replaced file's, or 0o644 for a new file. */
  mode?: number;
  /** ms since the epoch; default: the time of the last write. */
  mtimeMs?: number;
}

/** PUT /v1/files/content: a whole-file replacement, or with `partial=1` one chunk of a resumable upload. */
export function handleFileWrite(stream: ServerHttp2Stream, path: string, query: URLSearchParams): Promise<void> {
  if (query.get("partial") === "1") return receiveFileChunk(stream, path, parseOffset(query.get("offset")));
  if (query.has("offset")) throw badRequest("offset is for partial writes (partial=1)");
  const size = query.get("size");
  return receiveFileContent(stream, path, { mode: parseMode(query.get("mode")), mtimeMs: parseMtime(query.get("mtime")) }, size === null ? undefined : parseOffset(size));
}

/**
 * Replaces the file atomically. The body goes to a temporary file in the same directory, which is fsynced, given
 * its mode, owner and mtime and then renamed over the target, so readers see either the old or the new content,
 * never a partial file, and never the new content with the wrong mtime.
 */
async function receiveFileContent(stream: ServerHttp2Stream, path: string, settings: Settings, expectedBytes: number | undefined): Promise<void> {
  const existing = await lstatIfExists(path);
  if (existing?.isDirectory()) throw new RequestError(409, "is_directory", `is a directory: ${path}`);

  const tempPath = join(dirname(path), `.${basename(path)}.cc-upload-${randomUUID()}`);
  const handle = await openCreatingParents(tempPath, "wx");
  let renamed = false;
  try {
    const received = await writeBody(stream, handle, 0);
    // A body cut short never replaces the file: neither one shorter than the host announced, nor one whose stream
    // the host reset (Node's http2 may end a reset stream's readable side like a complete one).
    if (stream.aborted || (stream.rstCode !== undefined && stream.rstCode !== 0)) throw badRequest("the body was cancelled before its end");
    if (expectedBytes !== undefined && received !== expectedBytes) throw badRequest(`the body ended after ${received} of ${expectedBytes} bytes`);
    await settleAndRename(handle, tempPath, path, existing, settings);
    renamed = true;
  } finally {
    if (!renamed) {
      await handle.close().catch(() => undefined);
      await unlink(tempPath).catch(() => undefined);
    }
  }
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

/**
 * PUT /v1/files/content?partial=1&offset=N: writes the body into `path` at N and fsyncs it, without replacing the
 * file. The file is cut at N first, so that after a chunk that failed half-way, the retry at the same offset
 * leaves no stale tail; an offset past the end would leave a hole, which no upload means to make.
 */
async function receiveFileChunk(stream: ServerHttp2Stream, path: string, offset: number): Promise<void> {
  // O_NOFOLLOW: a partial file is the host's own temporary file; a symlink in its place is not written through.
  const handle = await openCreatingParents(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW);
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw badRequest(`not a regular file: ${path}`);
    if (offset > info.size) throw badRequest(`offset ${offset} is past the end of ${path} (${info.size} bytes)`);
    await handle.truncate(offset);
    await writeBody(stream, handle, offset);
    await handle.sync();
  } finally {
    await handle.close();
  }
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

/**
 * POST /v1/files/commit?path=&to=&mode=&mtime=: the end of a resumable upload. The partial file gets what a
 * whole-file write gives its temporary file (fsync, mode, owner, mtime) and is renamed onto `to`.
 */
export async function commitUpload(stream: ServerHttp2Stream, partialPath: string, query: URLSearchParams): Promise<void> {
  const path = requirePathParam(query, "to");
  const settings = { mode: parseMode(query.get("mode")), mtimeMs: parseMtime(query.get("mtime")) };
  const existing = await lstatIfExists(path);
  if (existing?.isDirectory()) throw new RequestError(409, "is_directory", `is a directory: ${path}`);
  const handle = await open(partialPath, fsConstants.O_RDWR | fsConstants.O_NOFOLLOW);
  let renamed = false;
  try {
    if (!(await handle.stat()).isFile()) throw badRequest(`not a regular file: ${partialPath}`);
    await settleAndRename(handle, partialPath, path, existing, settings);
    renamed = true;
  } finally {
    if (!renamed) await handle.close().catch(() => undefined);
  }
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

/** fsync, mode, owner, mtime, close, rename: everything a reader of `path` sees arrives with the rename. */
async function settleAndRename(handle: FileHandle, tempPath: string, path: string, existing: Stats | undefined, settings: Settings): Promise<void> {
  await handle.sync();
  // Explicit chmod: the mode passed to open() is filtered by the umask.
  await handle.chmod(settings.mode ?? (existing ? existing.mode & 0o7777 : defaultNewFileMode));
  if (existing && process.getuid?.() === 0) {
    await handle.chown(existing.uid, existing.gid).catch(() => undefined);
  }
  if (settings.mtimeMs !== undefined) {
    // libuv truncates the seconds it is given to whole microseconds, and ms / 1000 is a hair below the exact value
    // as often as not: half a microsecond more makes the truncation land on the exact millisecond.
    await handle.utimes(Date.now() / 1000, (settings.mtimeMs + 0.0005) / 1000);
  }
  await handle.close();
  await rename(tempPath, path);
}

/** Writes the request body at `startOffset`; returns how many bytes it had. */
async function writeBody(stream: ServerHttp2Stream, handle: FileHandle, startOffset: number): Promise<number> {
  let position = startOffset;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    await handle.writev(pending, position);
    position += pendingBytes;
    pending = [];
    pendingBytes = 0;
  };
  // A stream the host cancelled ends the loop with an error (premature close), never as a complete body.
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    if (pendingBytes >= writeBatchBytes) await flush();
  }
  if (pendingBytes > 0) await flush();
  return position - startOffset;
}

async function openCreatingParents(path: string, flags: string | number): Promise<FileHandle> {
  try {
    return await open(path, flags, 0o600);
  } catch (error) {
    // Like writing a file on a disk from a program that makes its directories first: missing parents are created.
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    await mkdir(dirname(path), { recursive: true });
    return open(path, flags, 0o600);
  }
}

export async function lstatIfExists(path: string): Promise<Stats | undefined> {
  return lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
}

export function parseMode(modeParam: string | null): number | undefined {
  if (modeParam === null) return undefined;
  if (!/^[0-7]{1,4}$/.test(modeParam)) throw badRequest("mode must be an octal string of at most 4 digits, such as 644");
  return Number.parseInt(modeParam, 8);
}

function parseMtime(mtimeParam: string | null): number | undefined {
  if (mtimeParam === null) return undefined;
  const mtimeMs = /^\d{1,15}$/.test(mtimeParam) ? Number(mtimeParam) : NaN;
  if (!(mtimeMs <= maxMtimeMs)) throw badRequest(`mtime must be whole milliseconds since the epoch, 0 to ${maxMtimeMs}`);
  return mtimeMs;
}

function parseOffset(offsetParam: string | null): number {
  if (offsetParam === null) throw badRequest("missing query parameter: offset");
  const offset = /^\d{1,16}$/.test(offsetParam) ? Number(offsetParam) : NaN;
  if (!Number.isSafeInteger(offset)) throw badRequest("offset must be a whole number of bytes");
  return offset;
}
