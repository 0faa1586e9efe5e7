import type { Dirent, Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import type { ServerHttp2Stream } from "node:http2";
import { FILE_LIMITS, type DirEntry, type FileStat, type FileType } from "@codecourier/protocol";
import { RequestError, badRequest, sendJson } from "../http/respond.js";

/** lstat calls in flight at once while listing: enough to keep the threadpool busy, few enough to leave it room. */
const parallelStats = 32;

export function fileType(entry: Stats | Dirent): FileType {
  if (entry.isFile()) return "file";
  if (entry.isDirectory()) return "directory";
  if (entry.isSymbolicLink()) return "symlink";
  return "other";
}

export function toFileStat(path: string, info: Stats): FileStat {
  return { path, type: fileType(info), size: info.size, mode: info.mode & 0o7777, mtimeMs: info.mtimeMs };
}

/** GET /v1/files/stat: lstat, so a symlink is described as itself rather than followed. */
export async function sendStat(stream: ServerHttp2Stream, path: string): Promise<void> {
  sendJson(stream, 200, toFileStat(path, await lstat(path)));
}

/**
 * GET /v1/files/list?depth=N: the entries of `path` and, N levels deep, of its subdirectories, sorted by name
 * (relative to `path` below the first level). Entries are described by lstat, and only real directories are
 * entered: a symlink to a directory is listed as a symlink, so a link cycle cannot make the walk endless.
 */
export async function sendList(stream: ServerHttp2Stream, path: string, depthParam: string | null): Promise<void> {
  const depth = parseDepth(depthParam);
  const listing: DirEntry[] = [];
  await listLevel(path, "", depth, listing, path);
  listing.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  sendJson(stream, 200, listing, FILE_LIMITS.maxListingBytes);
}

async function listLevel(dir: string, prefix: string, levelsLeft: number, listing: DirEntry[], listedPath: string): Promise<void> {
  const names = await readdir(dir);
  if (listing.length + names.length > FILE_LIMITS.maxListedEntries) {
    throw new RequestError(
      413,
      "too_large",
      `more than ${FILE_LIMITS.maxListedEntries} entries under ${listedPath}; list fewer levels (depth) or a subdirectory`,
    );
  }
  // Joined as strings, not with path.join: `..` and symlinks in the listed path are the kernel's to resolve.
  const base = dir.endsWith("/") ? dir : `${dir}/`;
  const subdirectories: string[] = [];
  for (let start = 0; start < names.length; start += parallelStats) {
    const batch = names.slice(start, start + parallelStats);
    const infos = await Promise.all(batch.map((name) => lstat(base + name).catch(skipVanished)));
    batch.forEach((name, i) => {
      const info = infos[i];
      if (info === undefined) return;
      listing.push({ name: prefix + name, type: fileType(info), size: info.size, mtimeMs: info.mtimeMs });
      if (levelsLeft > 1 && info.isDirectory()) subdirectories.push(name);
    });
  }
  for (const name of subdirectories) {
    await listLevel(base + name, `${prefix}${name}/`, levelsLeft - 1, listing, listedPath).catch(skipVanished);
  }
}

/** An entry removed (or replaced by a file) between readdir and its lstat is simply no longer there. */
function skipVanished(error: NodeJS.ErrnoException): undefined {
  if (error.code === "ENOENT" || error.code === "ENOTDIR") return undefined;
  throw error;
}

function parseDepth(depthParam: string | null): number {
  if (depthParam === null) return 1;
  const depth = /^\d{1,5}$/.test(depthParam) ? Number(depthParam) : 0;
  if (depth < 1 || depth > FILE_LIMITS.maxListDepth) throw badRequest(`depth must be a whole number from 1 to ${FILE_LIMITS.maxListDepth}`);
  return depth;
}
