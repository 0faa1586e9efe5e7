// The tar writer and reader: round trips through our own reader and through GNU tar (the guest's), PAX for long
// names and millisecond mtimes, and refusal of damaged archives.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { createTar, readTar, tarHeader, tarStream, TarFormatError, type ReadTarEntry, type TarEntry } from "./tar.js";

const text = (s: string) => new TextEncoder().encode(s);
const longFileName = `${"ünïcødé ".repeat(10)}.txt`; // over 100 bytes: needs a PAX path
const longName = `${"deep/".repeat(30)}${longFileName}`;

const entries: TarEntry[] = [
  { path: "dir", type: "directory", mode: 0o750, mtimeMs: 1_700_000_000_000, size: 0, data: new Uint8Array(0) },
  { path: "dir/a.txt", type: "file", mode: 0o644, mtimeMs: 1_700_000_000_123, size: 5, data: text("hello") },
  { path: "run me.sh", type: "file", mode: 0o755, mtimeMs: 1_600_000_000_000, size: 0, data: new Uint8Array(0) },
  { path: longName, type: "file", mode: 0o600, mtimeMs: 1_700_000_001_999, size: 3, data: text("abc") },
  { path: "link", type: "symlink", mode: 0o777, mtimeMs: 1_700_000_000_000, size: 0, linkTarget: `../${"x".repeat(120)}`, data: new Uint8Array(0) },
  { path: "big-ish", type: "file", mode: 0o644, mtimeMs: 1_700_000_000_000, size: 1000, data: new Uint8Array(1000).fill(7) },
];

async function readAll(source: ReadableStream<Uint8Array> | Uint8Array): Promise<ReadTarEntry[]> {
  const out: ReadTarEntry[] = [];
  for await (const entry of readTar(source)) out.push(entry);
  return out;
}

function assertSameEntries(actual: ReadTarEntry[], expected: TarEntry[]): void {
  const comparable = (entry: ReadTarEntry | TarEntry) => ({ ...entry, data: [...entry.data] });
  assert.deepEqual(actual.map(comparable), expected.map(comparable));
}

describe("tar", () => {
  const dirs: string[] = [];
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "cc-tar-"));
    dirs.push(dir);
    return dir;
  };
  after(() => dirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

  it("round-trips files, directories, symlinks, long and unicode names, modes and millisecond mtimes", async () => {
    const archive = createTar(entries);
    assert.equal(archive.length % 512, 0);
    assertSameEntries(await readAll(archive), entries);
  });

  it("streams the same bytes it builds in memory, and reads a stream cut at odd places", async () => {
    async function* source() {
      yield* entries;
    }
    const chunks: Uint8Array[] = [];
    const reader = tarStream(source()).getReader();
    for (let next = await reader.read(); !next.done; next = await reader.read()) chunks.push(next.value);
    const streamed = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let offset = 0;
    for (const chunk of chunks) (streamed.set(chunk, offset), (offset += chunk.length));
    assert.deepEqual(streamed, createTar(entries));
    // Re-chunk into 7-byte pieces: the reader must not depend on block-aligned chunks.
    const sliced = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < streamed.length; i += 7) controller.enqueue(streamed.slice(i, i + 7));
        controller.close();
      },
    });
    assertSameEntries(await readAll(sliced), entries);
  });

  it("writes what GNU tar extracts exactly: names, content, modes, mtimes to the millisecond, symlinks", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "a.tar"), createTar(entries));
    mkdirSync(join(dir, "out"));
    const result = spawnSync("tar", ["-x", "-f", join(dir, "a.tar"), "-C", join(dir, "out")], { encoding: "utf8", env: { ...process.env, LC_ALL: "C.UTF-8" } });
    assert.equal(result.status, 0, result.stderr);
    const out = (p: string) => join(dir, "out", p);
    assert.equal(readFileSync(out("dir/a.txt"), "utf8"), "hello");
    assert.equal(readFileSync(out(longName), "utf8"), "abc");
    assert.equal(lstatSync(out("run me.sh")).mode & 0o7777, 0o755);
    assert.equal(lstatSync(out(longName)).mode & 0o7777, 0o600);
    assert.equal(lstatSync(out("dir/a.txt")).mtimeMs, 1_700_000_000_123);
    assert.equal(lstatSync(out(longName)).mtimeMs, 1_700_000_001_999);
    assert.equal(lstatSync(out("dir")).mode & 0o7777, 0o750);
    assert.equal(readlinkSync(out("link")), `../${"x".repeat(120)}`);
  });

  it("reads what GNU tar writes in posix format (PAX, nanosecond mtimes, long names and links)", async () => {
    const dir = tempDir();
    const src = join(dir, "src");
    mkdirSync(join(src, "sub"), { recursive: true });
    writeFileSync(join(src, "sub", longFileName), "long");
    writeFileSync(join(src, "sub", "x y"), "xy", { mode: 0o640 });
    utimesSync(join(src, "sub", "x y"), 1_700_000_000.25, 1_700_000_000.25);
    symlinkSync(`/${"t".repeat(150)}`, join(src, "sub", "l"));
    const list = ["sub", `sub/${longFileName}`, "sub/x y", "sub/l"];
    const result = spawnSync(
      "tar",
      ["-c", "-f", "-", "--format=posix", "--pax-option=delete=atime,delete=ctime", "--no-recursion", "--null", "--verbatim-files-from", "-T", "-"],
      { cwd: src, input: list.map((p) => `${p}\0`).join(""), env: { ...process.env, LC_ALL: "C.UTF-8" } },
    );
    assert.equal(result.status, 0, result.stderr.toString());
    const read = await readAll(new Uint8Array(result.stdout));
    assert.deepEqual(read.map((e) => [e.path, e.type]), [
      ["sub", "directory"],
      [`sub/${longFileName}`, "file"],
      ["sub/x y", "file"],
      ["sub/l", "symlink"],
    ]);
    const xy = read[2]!;
    assert.equal(new TextDecoder().decode(xy.data), "xy");
    assert.equal(xy.mode, 0o640);
    assert.equal(xy.mtimeMs, 1_700_000_000_250);
    assert.equal(read[3]!.linkTarget, `/${"t".repeat(150)}`);
  });

  it("refuses damaged archives: a bad checksum, a truncated entry, an oversized extended header, non-UTF-8 names", async () => {
    const good = createTar([entries[1]!]);
    const badSum = good.slice();
    badSum[0] = badSum[0]! ^ 1;
    await assert.rejects(readAll(badSum), TarFormatError);
    await assert.rejects(readAll(good.slice(0, 512 + 2)), /ends in the middle/);

    const header = tarHeader({ path: "x", type: "file", mode: 0o644, mtimeMs: 0, size: 0 });
    const paxHuge = header.slice();
    paxHuge[156] = "x".charCodeAt(0);
    paxHuge.set(text("77777777777\0"), 124);
    await assert.rejects(readAll(withChecksum(paxHuge)), /extended header of/);

    const latin1 = header.slice();
    latin1[0] = 0xe9; // "é" in Latin-1: not UTF-8
    await assert.rejects(readAll(withChecksum(latin1)), /not UTF-8/);
  });

  it("bounds what one entry may make it hold", async () => {
    await assert.rejects(
      (async () => {
        for await (const _ of readTar(createTar([entries[5]!]), { maxEntryBytes: 999 })) void _;
      })(),
      /more than the 999 allowed/,
    );
  });
});

/** A header block with its checksum recomputed after an edit. */
function withChecksum(block: Uint8Array): Uint8Array {
  const out = block.slice();
  out.fill(0x20, 148, 156);
  const sum = out.reduce((n, b) => n + b, 0);
  out.set(new TextEncoder().encode(`${sum.toString(8).padStart(6, "0")}\0 `), 148);
  return out;
}
