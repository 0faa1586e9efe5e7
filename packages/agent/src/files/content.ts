import { randomUUID } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { lstat, mkdir, open, rename, unlink } from "node:fs/promises";
import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { basename, dirname, join } from "node:path";
import { RequestError, badRequest, sendJson } from "../http/respond.js";
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

/**
 * PUT /v1/files/content: replaces the file atomically. The body goes to a temporary file in the same directory,
 * which is fsynced, given its mode (and the old file's owner) and then renamed over the target, so readers see
 * either the old or the new content, never a partial file.
 */
const writeBatchBytes = 1024 * 1024;

export async function receiveFileContent(stream: ServerHttp2Stream, path: string, modeParam: string | null): Promise<void> {
  const requestedMode = parseMode(modeParam);
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (existing?.isDirectory()) throw new RequestError(409, "is_directory", `is a directory: ${path}`);

  const tempPath = join(dirname(path), `.${basename(path)}.cc-upload-${randomUUID()}`);
  const handle = await open(tempPath, "wx", 0o600).catch(async (error: NodeJS.ErrnoException) => {
    // Like writing a file on a disk from a program that makes its directories first: missing parents are created.
    if (error.code !== "ENOENT") throw error;
    await mkdir(dirname(path), { recursive: true });
    return open(tempPath, "wx", 0o600);
  });
  let renamed = false;
  try {
    // Frames arrive in 16 KiB pieces; one write per MiB instead of one per frame (each write is a threadpool
    // round trip, which under TCG costs more than the copy).
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= writeBatchBytes) {
        await handle.writev(pending);
        pending = [];
        pendingBytes = 0;
      }
    }
    if (pendingBytes > 0) await handle.writev(pending);
    await handle.sync();
    // Explicit chmod: the mode passed to open() is filtered by the umask.
    await handle.chmod(requestedMode ?? (existing ? existing.mode & 0o7777 : defaultNewFileMode));
    if (existing && process.getuid?.() === 0) {
      await handle.chown(existing.uid, existing.gid).catch(() => undefined);
    }
    await handle.close();
    await rename(tempPath, path);
    renamed = true;
  } finally {
    if (!renamed) {
      await handle.close().catch(() => undefined);
      await unlink(tempPath).catch(() => undefined);
    }
  }
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

function parseMode(modeParam: string | null): number | undefined {
  if (modeParam === null) return undefined;
  if (!/^[0-7]{1,4}$/.test(modeParam)) throw badRequest("mode must be an octal string such as 644");
  return Number.parseInt(modeParam, 8);
}
