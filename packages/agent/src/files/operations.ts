import { chmod, lstat, mkdir, rename, rm, rmdir, stat, unlink } from "node:fs/promises";
import type { ServerHttp2Stream } from "node:http2";
import { RequestError, badRequest, requirePathParam, sendJson } from "../http/respond.js";
import { parseMode } from "./content.js";
import { toFileStat } from "./metadata.js";

// Directory-level operations of the files API. Each one is the guest's own system call on the path as given, so
// `..`, symlinks and errors behave as they would for a program in the guest.

/** POST /v1/files/mkdir?path=&recursive=: `mkdir -p` by default, plain mkdir(2) (EEXIST is an error) with recursive=0. */
export async function makeDirectory(stream: ServerHttp2Stream, path: string, query: URLSearchParams): Promise<void> {
  const recursive = parseFlag(query.get("recursive"), true, "recursive");
  // Like mkdir -p, an existing directory is fine but an existing file is not (EEXIST, or ENOTDIR on the way).
  await mkdir(path, { recursive });
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

/**
 * POST /v1/files/remove?path=&recursive=: unlink for anything but a directory (a symlink is removed, not what it
 * points to), rmdir for an empty directory, `rm -r` for a full one only with recursive=1.
 */
export async function removePath(stream: ServerHttp2Stream, path: string, query: URLSearchParams): Promise<void> {
  const recursive = parseFlag(query.get("recursive"), false, "recursive");
  const info = await lstat(path);
  if (!info.isDirectory()) await unlink(path);
  else if (recursive) await rm(path, { recursive: true });
  else {
    await rmdir(path).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOTEMPTY" && error.code !== "EEXIST") throw error;
      throw new RequestError(409, "not_empty", `directory not empty: ${path} (remove it recursively to delete its contents too)`);
    });
  }
  stream.respond({ ":status": 204 }, { endStream: true });
}

/** POST /v1/files/rename?path=&to=: rename(2), atomic; replaces a file (or an empty directory) at `to`. */
export async function renamePath(stream: ServerHttp2Stream, from: string, query: URLSearchParams): Promise<void> {
  const to = requirePathParam(query, "to");
  await rename(from, to);
  sendJson(stream, 200, toFileStat(to, await lstat(to)));
}

/** POST /v1/files/chmod?path=&mode=: chmod(2), which follows a symlink, so the answer describes its target. */
export async function changeMode(stream: ServerHttp2Stream, path: string, query: URLSearchParams): Promise<void> {
  const mode = parseMode(query.get("mode"));
  if (mode === undefined) throw badRequest("missing query parameter: mode");
  await chmod(path, mode);
  sendJson(stream, 200, toFileStat(path, await stat(path)));
}

function parseFlag(value: string | null, byDefault: boolean, name: string): boolean {
  if (value === null) return byDefault;
  if (value === "1") return true;
  if (value === "0") return false;
  throw badRequest(`${name} must be 1 or 0`);
}
