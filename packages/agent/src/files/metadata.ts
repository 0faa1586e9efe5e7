import type { Dirent, Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import type { ServerHttp2Stream } from "node:http2";
import type { DirEntry, FileStat, FileType } from "@codecourier/protocol";
import { sendJson } from "../http/respond.js";

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

/** GET /v1/files/list: entries sorted by name; a listing too large for one JSON body becomes a 413. */
export async function sendList(stream: ServerHttp2Stream, path: string): Promise<void> {
  const entries = await readdir(path, { withFileTypes: true });
  const list: DirEntry[] = entries
    .map((entry) => ({ name: entry.name, type: fileType(entry) }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  sendJson(stream, 200, list);
}
