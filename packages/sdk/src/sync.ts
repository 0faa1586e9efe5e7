/**
 * `files.sync`: mirrors a local directory into a sandbox ("up") or a sandbox's directory onto the local disk
 * ("down"), moving only what changed, in one archive per sync.
 *
 * How a sync goes (each guest step is one command, so 10,000 files cost a handful of round trips):
 *   1. list both sides: locally with node:fs, in the guest with one `find -printf` (NUL-separated, so any name
 *      survives); each entry's type, size, mtime, mode and link target
 *   2. plan (`planSync`, pure): new or resized files, changed modes and symlink targets are sent; files of equal
 *      size whose mtimes differ are compared by SHA-256 (guest: one `sha256sum -z`; local: crypto.subtle) and sent
 *      only if the content differs; the rest is unchanged
 *   3. remove what is in the way (an entry of another type at a path) and, with `delete`, what the source lacks
 *   4. move the changed entries as one tar (gzipped when the files are small on average): up, it is streamed to a
 *      temp file in the guest and extracted with `tar -x`; down, the guest's `tar -c` writes one and it is
 *      streamed back and unpacked here
 *   5. files whose content matched but whose mtime did not get the source's mtime, so the next sync skips them
 *
 * Kept: content, permission bits and mtimes (to the millisecond; equal within 1 ms counts as equal). Symlinks are
 * copied as symlinks, their targets unchanged (not followed, not rewritten). Directories are created with their
 * source's mode; their mtimes are not kept. Other file types (fifos, sockets, devices) are skipped. Hard links
 * arrive as separate copies. Owners are not kept: files belong to whoever extracts them. Names must be UTF-8.
 *
 * Trust: what the guest says is hostile. Every guest name is checked (relative, no `..`, no empty or `.`
 * components); the archive it sends may only hold entries that were asked for, of the types asked for; files are
 * written before any symlink is made, never through a symlink (each parent directory is checked to be a real one),
 * and by temp file + rename, so a link at the destination is replaced, not followed.
 *
 * Local disk access needs node:fs, loaded only when sync runs (Node, Bun and Deno all provide node:fs/promises), so
 * the rest of the SDK stays fetch-only.
 */
import type { CommandOutcome } from "./command-result.js";
import type { RequestOptions } from "./client.js";
import { CodeCourierError, NotFoundError } from "./errors.js";
import { readTar, tarStream, type TarEntry, type TarEntryType } from "./tar.js";

export interface SyncOptions extends RequestOptions {
  /** "up": local → sandbox; "down": sandbox → local. */
  direction: "up" | "down";
  /** Remove what the target holds and the source does not. Default false (only add and update). */
  delete?: boolean;
  /** Bound on each guest command (listing, hashing, tar); default: none. */
  timeoutMs?: number;
}

export interface SyncResult {
  direction: "up" | "down";
  /** Files and symlinks sent into the sandbox (0 for "down"). */
  uploaded: number;
  /** Files and symlinks written locally (0 for "up"). */
  downloaded: number;
  /** Entries (files, symlinks, directories) removed from the target because the source lacks them. */
  deleted: number;
  /** Source files and symlinks the target already had (same size and mtime, or same content). */
  unchanged: number;
  /** Content bytes of the files transferred. */
  bytes: number;
}

/** One entry of either side's listing, by its path relative to the synced directory ('/' separators). */
export interface SyncEntry {
  path: string;
  type: TarEntryType;
  size: number;
  mtimeMs: number;
  mode: number;
  linkTarget?: string;
}

export interface SyncPlan {
  /** Files and symlinks to send: new, resized, of another mode or type, or (symlinks) another target. */
  transfer: SyncEntry[];
  /** Source directories the target lacks (or has as something else). */
  directories: SyncEntry[];
  /** Files of equal size and mode whose mtimes differ: sent only if their content differs. */
  compareByHash: SyncEntry[];
  /** Target paths to remove first, topmost only (a removed directory takes its contents). */
  remove: string[];
  /** Target entries removed because the source lacks them (counted with their contents). */
  deleted: number;
  /** Source files and symlinks already the same on the target. */
  unchanged: number;
}

/** What sync needs of a sandbox: run a command, and move bytes to and from a guest file. */
export interface SyncTransport {
  run(argv: readonly string[], options: { stdin?: string; env?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal }): Promise<CommandOutcome>;
  write(path: string, data: ReadableStream<Uint8Array>, options: RequestOptions): Promise<unknown>;
  read(path: string, options: RequestOptions & { format: "stream" }): Promise<ReadableStream<Uint8Array>>;
}

/**
 * Archives are gzipped when their files average less than this: then tar's 512-byte headers and padding are much
 * of the archive (10,000 small files make 10-20 MB of tar that gzip shrinks to well under 1 MB), and moving bytes
 * in and out of the guest is slower than (de)compressing them. Large files are sent as they are, since the guest's
 * CPU (emulated under TCG) would spend longer compressing than the transfer saves on content that may not shrink.
 */
const COMPRESS_BELOW_AVERAGE_BYTES = 256 * 1024;

/** Whether to gzip an archive of these entries (see COMPRESS_BELOW_AVERAGE_BYTES). */
export function shouldCompress(entries: readonly SyncEntry[]): boolean {
  const files = entries.filter((entry) => entry.type !== "directory");
  if (files.length === 0) return entries.length > 0;
  const bytes = files.reduce((sum, entry) => sum + entry.size, 0);
  return bytes / files.length < COMPRESS_BELOW_AVERAGE_BYTES;
}

/** The platform's gzip streams (Node, Bun and Deno all have them), typed for byte streams. */
const gzip = (direction: "compress" | "decompress") =>
  (direction === "compress" ? new CompressionStream("gzip") : new DecompressionStream("gzip")) as unknown as ReadableWritablePair<Uint8Array, Uint8Array>;

/** Local files read ahead of the archive stream: a few dozen at once, and a bound on their bytes. */
const READ_AHEAD_FILES = 32;
const READ_AHEAD_BYTES = 64 * 1024 * 1024;
/** Local files written at once while unpacking. */
const PARALLEL_WRITES = 16;
/** Mtimes within this of each other are equal: the two sides keep different precisions (ns, µs, ms). */
const MTIME_TOLERANCE_MS = 1;

/**
 * The guest's listing of `$1`, one record of six NUL-terminated fields per entry: type, size, mtime (seconds with
 * decimals), mode (octal), path relative to `$1`, link target. Exit 4: `$1` does not exist.
 */
const LIST_SCRIPT = `[ -e "$1" ] || [ -L "$1" ] || exit 4
cd -- "$1" || exit 3
exec find . -mindepth 1 \\( -type f -o -type d -o -type l \\) -printf '%y\\0%s\\0%T@\\0%m\\0%P\\0%l\\0'`;
/** SHA-256 of the files named on stdin (NUL-separated), relative to `$1`. */
const HASH_SCRIPT = `cd -- "$1" && exec xargs -0 -r sha256sum -z --`;
/** Removes the paths named on stdin (NUL-separated), relative to `$1`. */
const REMOVE_SCRIPT = `cd -- "$1" && exec xargs -0 -r rm -rf --`;
/**
 * Creates `$1`, extracts the archive `$2` into it (if given; gzipped if `$3` is "-z") and removes the archive; then
 * sets the mtimes named on stdin (NUL-separated pairs: seconds, path) on files whose content was already the same.
 */
const EXTRACT_SCRIPT = `mkdir -p -- "$1" || exit 1
if [ -n "$2" ]; then
  tar -x $3 -f "$2" -C "$1" --no-same-owner; status=$?
  rm -f -- "$2"
  [ "$status" = 0 ] || exit "$status"
fi
cd -- "$1" && exec xargs -0 -r -n 2 sh -c 'exec touch -c -m -d "@$0" -- "$1"'`;
/**
 * Archives the entries named on stdin (NUL-separated, relative to `$1`) into `$2`, no recursion, links kept;
 * gzipped (at level 1: the guest's CPU is the slow part) if `$3` is "gzip".
 */
const ARCHIVE_SCRIPT = `cd -- "$1" || exit 1
archive=$2
if [ "$3" = gzip ]; then set -- -I "gzip -1"; else set --; fi
exec tar -c "$@" -f "$archive" --format=posix --pax-option=delete=atime,delete=ctime --no-recursion \\
  --hard-dereference --ignore-failed-read --verbatim-files-from --null -T -`;
/** The guest's locale for these commands: names are bytes to find and sha256sum, but tar's PAX headers are UTF-8. */
const GUEST_ENV = { LC_ALL: "C.UTF-8" };

/**
 * Syncs `localDir` and the guest's `remoteDir` (absolute, or relative to the sandbox's working directory).
 * The source directory must exist; the target is created if missing.
 */
export async function syncDirectory(sandbox: SyncTransport, localDir: string, remoteDir: string, options: SyncOptions): Promise<SyncResult> {
  if (options.direction !== "up" && options.direction !== "down") throw new RangeError(`sync direction must be "up" or "down", not ${String(options.direction)}`);
  const fs = await import("node:fs/promises");
  const guest = new GuestSide(sandbox, remoteDir, options);
  const local = new LocalSide(fs, localDir);
  return options.direction === "up" ? syncUp(local, guest, options) : syncDown(local, guest, options);
}

async function syncUp(local: LocalSide, guest: GuestSide, options: SyncOptions): Promise<SyncResult> {
  const source = await local.list();
  if (source === undefined) throw new NotFoundError(`sync: the local directory ${local.root} does not exist`, { status: undefined });
  const existing = await guest.list();
  const plan = planSync(source, existing ?? [], { delete: options.delete ?? false });
  const { changed, sameContent } = await splitByHash(plan.compareByHash, (paths) => local.hash(paths), (paths) => guest.hash(paths));
  const transfer = [...plan.transfer, ...changed];

  await guest.remove(plan.remove);
  const entries = [...plan.directories, ...transfer];
  // Nothing to send, no mtime to fix and the directory there: the sync is done without another command.
  const idle = entries.length === 0 && sameContent.length === 0 && existing !== undefined;
  const sent = idle ? { entries: 0, bytes: 0 } : await guest.extract(local.archive(entries, shouldCompress(entries)), sameContent);
  return {
    direction: "up",
    uploaded: sent.entries,
    downloaded: 0,
    deleted: plan.deleted,
    unchanged: plan.unchanged + sameContent.length,
    bytes: sent.bytes,
  };
}

async function syncDown(local: LocalSide, guest: GuestSide, options: SyncOptions): Promise<SyncResult> {
  const source = await guest.list();
  if (source === undefined) throw new NotFoundError(`sync: the sandbox's directory ${guest.root} does not exist`, { status: undefined });
  const target = (await local.list()) ?? [];
  const plan = planSync(source, target, { delete: options.delete ?? false });
  const { changed, sameContent } = await splitByHash(plan.compareByHash, (paths) => guest.hash(paths), (paths) => local.hash(paths));
  const transfer = [...plan.transfer, ...changed];

  await local.prepare(plan.remove);
  let received = { entries: 0, bytes: 0 };
  const wanted = [...plan.directories, ...transfer];
  if (wanted.length > 0) {
    const compressed = shouldCompress(wanted);
    const archive = await guest.archive(wanted.map((entry) => entry.path), compressed);
    try {
      const stream = await archive.open();
      received = await local.unpack(compressed ? stream.pipeThrough(gzip("decompress")) : stream, wanted);
    } finally {
      await archive.remove();
    }
  }
  await local.setMtimes(sameContent);
  return {
    direction: "down",
    uploaded: 0,
    downloaded: received.entries,
    deleted: plan.deleted,
    unchanged: plan.unchanged + sameContent.length,
    bytes: received.bytes,
  };
}

/**
 * What to do to make `target` match `source` (both listings of one directory). Pure: the I/O is the caller's.
 * With `delete` false, target entries the source lacks stay, except inside a path that changes type.
 */
export function planSync(source: readonly SyncEntry[], target: readonly SyncEntry[], options: { delete: boolean }): SyncPlan {
  const targetByPath = new Map(target.map((entry) => [entry.path, entry]));
  const sourcePaths = new Set(source.map((entry) => entry.path));
  const plan: SyncPlan = { transfer: [], directories: [], compareByHash: [], remove: [], deleted: 0, unchanged: 0 };
  for (const entry of [...source].sort(byPath)) {
    const existing = targetByPath.get(entry.path);
    if (existing !== undefined && existing.type !== entry.type) plan.remove.push(entry.path);
    const differentType = existing === undefined || existing.type !== entry.type;
    if (entry.type === "directory") {
      if (differentType) plan.directories.push(entry);
    } else if (differentType) {
      plan.transfer.push(entry);
    } else if (entry.type === "symlink") {
      if (existing!.linkTarget === entry.linkTarget) plan.unchanged++;
      else plan.transfer.push(entry);
    } else if (existing!.size !== entry.size || existing!.mode !== entry.mode) {
      plan.transfer.push(entry);
    } else if (Math.abs(existing!.mtimeMs - entry.mtimeMs) >= MTIME_TOLERANCE_MS) {
      plan.compareByHash.push(entry);
    } else {
      plan.unchanged++;
    }
  }
  // Parents sort before their children, so a removed directory is seen before what it contains.
  const removed = new Set(plan.remove);
  for (const entry of [...target].sort(byPath)) {
    if (sourcePaths.has(entry.path) && !removed.has(entry.path)) continue;
    if (removed.has(entry.path)) continue; // replaced by the source's entry of another type: not a deletion
    if (hasAncestorIn(entry.path, removed)) {
      plan.deleted++;
    } else if (options.delete) {
      plan.remove.push(entry.path);
      removed.add(entry.path);
      plan.deleted++;
    }
  }
  return plan;
}

/**
 * A relative path from the other side is used only if it is one: not empty, not absolute, no empty, `.` or `..`
 * components, no NUL; on Windows also no `\` or `:` (which would be separators or drive letters there).
 */
export function checkRelativePath(path: string, options: { windows?: boolean } = {}): string {
  const bad =
    path === "" ||
    path.startsWith("/") ||
    path.includes("\0") ||
    path.split("/").some((part) => part === "" || part === "." || part === "..") ||
    (options.windows === true && /[\\:]/.test(path));
  if (bad) throw new CodeCourierError(`sync: refusing the path ${JSON.stringify(path)} (it would leave the synced directory)`, { code: "unsafe_path" });
  return path;
}

/** The guest's `find -printf` listing (see LIST_SCRIPT), every name checked. */
export function parseGuestListing(stdout: string): SyncEntry[] {
  const fields = stdout.split("\0");
  if (fields.at(-1) === "") fields.pop();
  if (fields.length % 6 !== 0) throw new CodeCourierError("sync: the sandbox's listing is malformed", { code: "bad_listing" });
  const entries: SyncEntry[] = [];
  for (let i = 0; i < fields.length; i += 6) {
    const [kind, size, mtime, mode, path, link] = fields.slice(i, i + 6) as [string, string, string, string, string, string];
    const type = kind === "f" ? "file" : kind === "d" ? "directory" : kind === "l" ? "symlink" : undefined;
    if (type === undefined || !/^[0-9]+$/.test(size) || !/^-?[0-9]+(\.[0-9]+)?$/.test(mtime) || !/^[0-7]{1,6}$/.test(mode)) {
      throw new CodeCourierError(`sync: the sandbox's listing is malformed near ${JSON.stringify(path)}`, { code: "bad_listing" });
    }
    if (path.includes("\uFFFD") || link.includes("\uFFFD")) {
      throw new CodeCourierError(`sync: ${JSON.stringify(path)} in the sandbox has a name that is not UTF-8; sync cannot carry it`, { code: "bad_listing" });
    }
    entries.push({
      path: checkRelativePath(path),
      type,
      size: type === "file" ? Number(size) : 0,
      mtimeMs: Math.round(Number(mtime) * 1e6) / 1e3,
      mode: parseInt(mode, 8) & 0o7777,
      ...(type === "symlink" ? { linkTarget: link } : {}),
    });
  }
  return entries;
}

/** `sha256sum -z` output → path → hex digest (lines that are not a digest and a name are refused). */
export function parseSha256List(stdout: string): Map<string, string> {
  const digests = new Map<string, string>();
  for (const record of stdout.split("\0")) {
    if (record === "") continue;
    const match = /^([0-9a-f]{64}) [ *]([\s\S]+)$/.exec(record);
    if (!match) throw new CodeCourierError("sync: the sandbox's sha256sum output is malformed", { code: "bad_listing" });
    digests.set(match[2]!, match[1]!);
  }
  return digests;
}

/** Files of equal size but other mtimes, split by content: only the changed ones are sent. */
async function splitByHash(
  candidates: SyncEntry[],
  hashSource: (paths: string[]) => Promise<Map<string, string>>,
  hashTarget: (paths: string[]) => Promise<Map<string, string>>,
): Promise<{ changed: SyncEntry[]; sameContent: SyncEntry[] }> {
  if (candidates.length === 0) return { changed: [], sameContent: [] };
  const paths = candidates.map((entry) => entry.path);
  const [fromSource, fromTarget] = await Promise.all([hashSource(paths), hashTarget(paths)]);
  const changed: SyncEntry[] = [];
  const sameContent: SyncEntry[] = [];
  for (const entry of candidates) {
    const digest = fromSource.get(entry.path);
    (digest !== undefined && digest === fromTarget.get(entry.path) ? sameContent : changed).push(entry);
  }
  return { changed, sameContent };
}

const byPath = (a: SyncEntry, b: SyncEntry) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

function hasAncestorIn(path: string, paths: ReadonlySet<string>): boolean {
  for (let slash = path.indexOf("/"); slash !== -1; slash = path.indexOf("/", slash + 1)) {
    if (paths.has(path.slice(0, slash))) return true;
  }
  return false;
}

/** Seconds with milliseconds, for `touch -d @…`. */
const epochSeconds = (mtimeMs: number) => (Math.round(mtimeMs) / 1000).toFixed(3);

const nulList = (paths: readonly string[]) => paths.map((path) => `${path}\0`).join("");

function randomName(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** The sandbox's side: every step one command (argv form; names travel on stdin, never through a shell). */
class GuestSide {
  constructor(
    private readonly sandbox: SyncTransport,
    readonly root: string,
    private readonly options: SyncOptions,
  ) {}

  async #run(what: string, script: string, args: string[], stdin = ""): Promise<CommandOutcome> {
    const result = await this.sandbox.run(["sh", "-c", script, "sh", this.root, ...args], {
      stdin,
      env: GUEST_ENV,
      timeoutMs: this.options.timeoutMs,
      signal: this.options.signal,
    });
    if (result.timedOut) throw new CodeCourierError(`sync: ${what} in the sandbox timed out`, { code: "timeout" });
    return result;
  }

  #fail(what: string, result: CommandOutcome): never {
    const stderr = result.stderr.trim().slice(-500);
    throw new CodeCourierError(`sync: ${what} in the sandbox failed (exit ${result.exitCode ?? result.signal})${stderr ? `: ${stderr}` : ""}`, {
      code: "sync_failed",
    });
  }

  /** The guest directory's entries, or undefined if it does not exist. */
  async list(): Promise<SyncEntry[] | undefined> {
    const result = await this.#run(`listing ${this.root}`, LIST_SCRIPT, []);
    if (result.exitCode === 4) return undefined;
    if (result.exitCode !== 0) this.#fail(`listing ${this.root}`, result);
    return parseGuestListing(result.stdout);
  }

  async hash(paths: string[]): Promise<Map<string, string>> {
    const result = await this.#run("hashing files", HASH_SCRIPT, [], nulList(paths));
    // sha256sum exits 1 when a file vanished or is unreadable: those have no digest and count as changed.
    if (result.exitCode !== 0 && result.exitCode !== 1) this.#fail("hashing files", result);
    return parseSha256List(result.stdout);
  }

  async remove(paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    const result = await this.#run("removing entries", REMOVE_SCRIPT, [], nulList(paths));
    if (result.exitCode !== 0) this.#fail("removing entries", result);
  }

  /** Streams the archive into a guest temp file, extracts it into the directory, then fixes the given mtimes. */
  async extract(archive: LocalArchive, retouch: readonly SyncEntry[]): Promise<{ entries: number; bytes: number }> {
    let archivePath = "";
    if (archive.count > 0) {
      archivePath = `/tmp/.codecourier-sync-${randomName()}.tar`;
      try {
        await this.sandbox.write(archivePath, archive.stream, { signal: this.options.signal });
      } catch (error) {
        await this.sandbox.run(["rm", "-f", "--", archivePath], {}).catch(() => undefined);
        throw error;
      }
    }
    const touches = retouch.map((entry) => `${epochSeconds(entry.mtimeMs)}\0${entry.path}\0`).join("");
    const result = await this.#run("extracting", EXTRACT_SCRIPT, [archivePath, archive.compressed ? "-z" : ""], touches);
    if (result.exitCode !== 0) this.#fail(`extracting into ${this.root}`, result);
    return archive.sent();
  }

  /** A guest archive of `paths` in a temp file; the caller streams it and must remove it. */
  async archive(paths: string[], compressed: boolean): Promise<{ open(): Promise<ReadableStream<Uint8Array>>; remove(): Promise<void> }> {
    const archivePath = `/tmp/.codecourier-sync-${randomName()}.tar`;
    const remove = async () => {
      await this.sandbox.run(["rm", "-f", "--", archivePath], {}).catch(() => undefined);
    };
    const result = await this.#run("archiving", ARCHIVE_SCRIPT, [archivePath, compressed ? "gzip" : ""], nulList(paths)).catch(async (error: unknown) => {
      await remove();
      throw error;
    });
    if (result.exitCode !== 0) {
      await remove();
      this.#fail(`archiving ${this.root}`, result);
    }
    return { open: () => this.sandbox.read(archivePath, { format: "stream", signal: this.options.signal }), remove };
  }
}

type NodeFs = typeof import("node:fs/promises");

/** An archive being produced from local files as it is sent; `sent()` tells what went into it. */
interface LocalArchive {
  count: number;
  compressed: boolean;
  stream: ReadableStream<Uint8Array>;
  sent(): { entries: number; bytes: number };
}

/** The local side: node:fs, paths joined with '/', which every platform's node:fs accepts. */
class LocalSide {
  readonly #windows = (globalThis as { process?: { platform?: string } }).process?.platform === "win32";
  /** Relative directories known to be real directories (not symlinks) during an unpack. */
  readonly #realDirectories = new Set<string>([""]);

  constructor(
    private readonly fs: NodeFs,
    readonly root: string,
  ) {}

  #abs(relative: string): string {
    return relative === "" ? this.root : `${this.root.replace(/[\\/]+$/, "")}/${relative}`;
  }

  /** Every file, directory and symlink below the root (symlinks not followed), or undefined if it does not exist. */
  async list(): Promise<SyncEntry[] | undefined> {
    try {
      const stat = await this.fs.stat(this.root);
      if (!stat.isDirectory()) throw new CodeCourierError(`sync: ${this.root} is not a directory`, { code: "bad_request" });
    } catch (error) {
      if ((error as { code?: string }).code === "ENOENT") return undefined;
      throw error;
    }
    const entries: SyncEntry[] = [];
    const walk = async (relative: string): Promise<void> => {
      const names = await this.fs.readdir(this.#abs(relative));
      await Promise.all(
        names.map(async (name) => {
          const path = relative === "" ? name : `${relative}/${name}`;
          let stat;
          try {
            stat = await this.fs.lstat(this.#abs(path));
          } catch (error) {
            if ((error as { code?: string }).code === "ENOENT") return; // removed while we listed
            throw error;
          }
          const common = { path, mtimeMs: stat.mtimeMs, mode: stat.mode & 0o7777 };
          if (stat.isFile()) entries.push({ ...common, type: "file", size: stat.size });
          else if (stat.isSymbolicLink()) entries.push({ ...common, type: "symlink", size: 0, linkTarget: await this.fs.readlink(this.#abs(path)) });
          else if (stat.isDirectory()) {
            entries.push({ ...common, type: "directory", size: 0 });
            await walk(path);
          }
        }),
      );
    };
    await walk("");
    return entries;
  }

  async hash(paths: string[]): Promise<Map<string, string>> {
    const digests = new Map<string, string>();
    for (const path of paths) {
      try {
        const digest = await crypto.subtle.digest("SHA-256", await this.fs.readFile(this.#abs(path)));
        digests.set(path, Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, "0")).join(""));
      } catch (error) {
        if ((error as { code?: string }).code !== "ENOENT") throw error; // gone: no digest, counts as changed
      }
    }
    return digests;
  }

  /**
   * A tar of these entries, files read as the stream reaches them, several at a time (one by one, reading 10,000
   * small files costs more than sending them); a file gone since the listing is skipped.
   */
  archive(entries: readonly SyncEntry[], compressed: boolean): LocalArchive {
    let sentEntries = 0;
    let sentBytes = 0;
    const load = async (entry: SyncEntry): Promise<TarEntry | undefined> => {
      if (entry.type !== "file") return { ...entry, size: 0, data: new Uint8Array(0) };
      try {
        const data = await this.fs.readFile(this.#abs(entry.path));
        return { ...entry, size: data.length, data };
      } catch (error) {
        if ((error as { code?: string }).code === "ENOENT") return undefined;
        throw error;
      }
    };
    async function* read(): AsyncGenerator<TarEntry> {
      const pending: Array<{ size: number; entry: Promise<TarEntry | undefined> }> = [];
      let next = 0;
      let inFlightBytes = 0;
      const refill = () => {
        while (next < entries.length && pending.length < READ_AHEAD_FILES && (pending.length === 0 || inFlightBytes < READ_AHEAD_BYTES)) {
          const entry = entries[next++]!;
          const promise = load(entry);
          promise.catch(() => undefined); // awaited below in order; this only keeps an early failure from going unhandled
          pending.push({ size: entry.size, entry: promise });
          inFlightBytes += entry.size;
        }
      };
      refill();
      while (pending.length > 0) {
        const head = pending.shift()!;
        const entry = await head.entry;
        inFlightBytes -= head.size;
        refill();
        if (entry === undefined) continue;
        if (entry.type !== "directory") {
          sentEntries++;
          sentBytes += entry.data.length;
        }
        yield entry;
      }
    }
    const tar = tarStream(read());
    return {
      count: entries.length,
      compressed,
      stream: compressed ? tar.pipeThrough(gzip("compress")) : tar,
      sent: () => ({ entries: sentEntries, bytes: sentBytes }),
    };
  }

  /** Creates the root and removes the given paths (each one found by the local listing, so inside the root). */
  async prepare(remove: readonly string[]): Promise<void> {
    await this.fs.mkdir(this.root, { recursive: true });
    for (const path of remove) await this.fs.rm(this.#abs(checkRelativePath(path)), { recursive: true, force: true });
  }

  /**
   * Writes an archive from the guest. Only the entries asked for (by path and type) are accepted; anything else
   * fails the sync. Directories and files first, symlinks last, so no entry is ever written through one.
   */
  async unpack(stream: ReadableStream<Uint8Array>, wanted: readonly SyncEntry[]): Promise<{ entries: number; bytes: number }> {
    const expected = new Map(wanted.map((entry) => [entry.path, entry.type]));
    const symlinks: Array<{ path: string; target: string; mtimeMs: number }> = [];
    let entries = 0;
    let bytes = 0;
    // Files are written several at a time (four syscalls each; one by one, 10,000 small files take seconds).
    const writing = new Set<Promise<void>>();
    let failure: unknown;
    const settle = async (limit: number) => {
      while (writing.size > limit) await Promise.race(writing);
      if (failure !== undefined) throw failure;
    };
    for await (const entry of readTar(stream)) {
      const path = checkRelativePath(entry.path, { windows: this.#windows });
      if (expected.get(path) !== entry.type) {
        throw new CodeCourierError(`sync: the sandbox's archive holds ${entry.type} ${JSON.stringify(path)}, which was not asked for`, {
          code: "unsafe_path",
        });
      }
      expected.delete(path); // each once
      if (entry.type === "directory") {
        await settle(0); // a directory is made with nothing else in flight, so files below it find it made
        await this.#directory(path, entry.mode);
      } else if (entry.type === "symlink") {
        symlinks.push({ path, target: entry.linkTarget ?? "", mtimeMs: entry.mtimeMs });
      } else {
        await settle(PARALLEL_WRITES - 1);
        const write: Promise<void> = this.#file(path, entry.data, entry.mode, entry.mtimeMs).then(
          () => {
            writing.delete(write);
          },
          (error: unknown) => {
            writing.delete(write);
            failure ??= error;
          },
        );
        writing.add(write);
        entries++;
        bytes += entry.data.length;
      }
    }
    await settle(0);
    for (const link of symlinks) {
      await this.#symlink(link.path, link.target, link.mtimeMs);
      entries++;
    }
    return { entries, bytes };
  }

  async setMtimes(entries: readonly SyncEntry[]): Promise<void> {
    for (const entry of entries) {
      const seconds = entry.mtimeMs / 1000;
      await this.fs.utimes(this.#abs(entry.path), seconds, seconds).catch((error: { code?: string }) => {
        if (error.code !== "ENOENT") throw error;
      });
    }
  }

  /** Makes sure each directory from the root down to `relative` is a real directory, creating missing ones. */
  async #parents(relative: string): Promise<void> {
    const parts = relative.split("/");
    for (let depth = 1; depth <= parts.length; depth++) {
      const dir = parts.slice(0, depth).join("/");
      if (this.#realDirectories.has(dir)) continue;
      try {
        const stat = await this.fs.lstat(this.#abs(dir));
        if (!stat.isDirectory()) {
          throw new CodeCourierError(`sync: ${JSON.stringify(dir)} is not a directory here (a symlink or file), so nothing is written below it`, {
            code: "unsafe_path",
          });
        }
      } catch (error) {
        if ((error as { code?: string }).code !== "ENOENT") throw error;
        await this.fs.mkdir(this.#abs(dir)).catch(async (mkdirError: { code?: string }) => {
          // Made meanwhile by a write in flight: fine if it is a real directory.
          if (mkdirError.code !== "EEXIST" || !(await this.fs.lstat(this.#abs(dir))).isDirectory()) throw mkdirError;
        });
      }
      this.#realDirectories.add(dir);
    }
  }

  async #directory(path: string, mode: number): Promise<void> {
    await this.#parents(path);
    await this.fs.chmod(this.#abs(path), mode);
  }

  /** Temp file beside the destination, then rename: a symlink at the destination is replaced, never written through. */
  async #file(path: string, data: Uint8Array, mode: number, mtimeMs: number): Promise<void> {
    const slash = path.lastIndexOf("/");
    if (slash !== -1) await this.#parents(path.slice(0, slash));
    const temp = `${path.slice(0, slash + 1)}.codecourier-sync-${randomName()}`;
    try {
      await this.fs.writeFile(this.#abs(temp), data, { flag: "wx", mode: 0o600 });
      await this.fs.chmod(this.#abs(temp), mode);
      await this.fs.utimes(this.#abs(temp), mtimeMs / 1000, mtimeMs / 1000);
      await this.fs.rename(this.#abs(temp), this.#abs(path));
    } catch (error) {
      await this.fs.rm(this.#abs(temp), { force: true }).catch(() => undefined);
      throw error;
    }
  }

  async #symlink(path: string, target: string, mtimeMs: number): Promise<void> {
    const slash = path.lastIndexOf("/");
    if (slash !== -1) await this.#parents(path.slice(0, slash));
    const abs = this.#abs(path);
    const existing = await this.fs.lstat(abs).catch(() => undefined);
    if (existing?.isDirectory()) {
      throw new CodeCourierError(`sync: ${JSON.stringify(path)} is a directory here; not replacing it with a symlink`, { code: "unsafe_path" });
    }
    if (existing !== undefined) await this.fs.rm(abs, { force: true });
    await this.fs.symlink(target, abs);
    // Not every platform can set a symlink's own times (lutimes); its mtime is not compared anyway.
    await this.fs.lutimes?.(abs, mtimeMs / 1000, mtimeMs / 1000).catch(() => undefined);
  }
}
