import { existsSync } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";

/** Reads a small text file if it exists (cached probe results, manifests). */
export async function readIfExists(path: string): Promise<string | undefined> {
  return existsSync(path) ? readFile(path, "utf8") : undefined;
}

/** Replaces a file so readers see either the old or the new content, never a half-written one. */
export async function writeAtomic(path: string, content: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, content);
  await rename(tmp, path);
}
