// files.sync without a VM: the pure planning and parsing, then whole syncs over a loopback transport that runs the
// guest's scripts (sh, find, sha256sum, tar — the same GNU tools as the guest's Debian) on this machine, and a
// hostile "guest" whose listing and archive are crafted to escape the local directory.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { after, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { CodeCourierError } from "./errors.js";
import { checkRelativePath, parseGuestListing, parseSha256List, planSync, shouldCompress, syncDirectory, type SyncEntry, type SyncTransport } from "./sync.js";
import { createTar, type TarEntry } from "./tar.js";

const file = (path: string, size: number, mtimeMs: number, mode = 0o644): SyncEntry => ({ path, type: "file", size, mtimeMs, mode });
const dir = (path: string): SyncEntry => ({ path, type: "directory", size: 0, mtimeMs: 0, mode: 0o755 });
const link = (path: string, linkTarget: string): SyncEntry => ({ path, type: "symlink", size: 0, mtimeMs: 0, mode: 0o777, linkTarget });

describe("planSync", () => {
  it("sends new and resized files, hashes equal-size files with other mtimes, and leaves the same ones", () => {
    const plan = planSync(
      [dir("d"), file("d/new", 1, 1000), file("d/resized", 5, 1000), file("d/touched", 3, 2000), file("d/same", 3, 1000.4), file("mode", 1, 1000, 0o755)],
      [dir("d"), file("d/resized", 4, 1000), file("d/touched", 3, 1000), file("d/same", 3, 1000), file("mode", 1, 1000, 0o644), file("extra", 1, 1)],
      { delete: false },
    );
    assert.deepEqual(plan.transfer.map((e) => e.path), ["d/new", "d/resized", "mode"]);
    assert.deepEqual(plan.compareByHash.map((e) => e.path), ["d/touched"]);
    assert.deepEqual(plan.directories, []);
    assert.deepEqual(plan.remove, [], "without delete, extra entries stay");
    assert.equal(plan.deleted, 0);
    assert.equal(plan.unchanged, 1, "d/same: mtimes within 1 ms are equal");
  });

  it("with delete, removes the topmost extra entries and counts everything under them", () => {
    const plan = planSync([file("keep", 1, 1)], [file("keep", 1, 1), dir("gone"), file("gone/a", 1, 1), dir("gone/sub"), file("gone/sub/b", 1, 1), file("x", 1, 1)], {
      delete: true,
    });
    assert.deepEqual(plan.remove, ["gone", "x"]);
    assert.equal(plan.deleted, 5);
    assert.equal(plan.unchanged, 1);
  });

  it("removes an entry of another type first (also without delete), and what was inside it", () => {
    const plan = planSync(
      [file("was-dir", 1, 1), dir("was-file"), file("was-file/inner", 1, 1), link("was-link", "t")],
      [dir("was-dir"), file("was-dir/old", 1, 1), file("was-file", 1, 1), file("was-link", 1, 1)],
      { delete: false },
    );
    assert.deepEqual(plan.remove, ["was-dir", "was-file", "was-link"]);
    assert.deepEqual(plan.directories.map((e) => e.path), ["was-file"]);
    assert.deepEqual(plan.transfer.map((e) => e.path), ["was-dir", "was-file/inner", "was-link"]);
    assert.equal(plan.deleted, 1, "was-dir/old went with its directory");
  });

  it("compares symlinks by target only", () => {
    const plan = planSync([link("a", "x"), link("b", "y")], [link("a", "x"), link("b", "z")], { delete: false });
    assert.deepEqual(plan.transfer.map((e) => e.path), ["b"]);
    assert.equal(plan.unchanged, 1);
  });
});

describe("shouldCompress", () => {
  it("gzips archives of small files (mostly tar headers) and not those of large ones", () => {
    assert.equal(shouldCompress([dir("d"), file("a", 10, 1), file("b", 20_000, 1)]), true);
    assert.equal(shouldCompress([file("big", 50 * 1024 * 1024, 1), file("small", 10, 1)]), false);
    assert.equal(shouldCompress([dir("only-dirs")]), true);
    assert.equal(shouldCompress([]), false);
  });
});

describe("guest listings", () => {
  it("parses find's NUL-separated records, odd names included", () => {
    const record = (...fields: string[]) => fields.map((f) => `${f}\0`).join("");
    const listing =
      record("d", "4096", "1700000000.5000000000", "755", "a dir", "") +
      record("f", "12", "1700000000.1234567890", "4755", "a dir/new\nline ü", "") +
      record("l", "3", "1700000000.0000000000", "777", "a dir/ln", "../x");
    assert.deepEqual(parseGuestListing(listing), [
      { path: "a dir", type: "directory", size: 0, mtimeMs: 1_700_000_000_500, mode: 0o755 },
      { path: "a dir/new\nline ü", type: "file", size: 12, mtimeMs: 1_700_000_000_123.457, mode: 0o4755 },
      { path: "a dir/ln", type: "symlink", size: 0, mtimeMs: 1_700_000_000_000, mode: 0o777, linkTarget: "../x" },
    ]);
    assert.deepEqual(parseGuestListing(""), []);
  });

  it("refuses names that leave the directory, and malformed or non-UTF-8 records", () => {
    for (const path of ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ""]) {
      assert.throws(() => parseGuestListing(`f\x001\x001\x00644\x00${path}\x00\x00`), CodeCourierError, JSON.stringify(path));
    }
    assert.throws(() => parseGuestListing("f\x001\x001\x00644\x00a\x00"), /malformed/);
    assert.throws(() => parseGuestListing("f\x00x\x001\x00644\x00a\x00\x00"), /malformed/);
    assert.throws(() => parseGuestListing("f\x001\x001\x00644\x00caf\uFFFD\x00\x00"), /not UTF-8/);
  });

  it("checks relative paths, stricter for Windows", () => {
    assert.equal(checkRelativePath("a b/c..d/ü"), "a b/c..d/ü");
    assert.equal(checkRelativePath("a\\b"), "a\\b");
    assert.throws(() => checkRelativePath("a\\..\\b", { windows: true }));
    assert.throws(() => checkRelativePath("C:x", { windows: true }));
  });

  it("parses sha256sum -z output, names with newlines and spaces included", () => {
    const a = "a".repeat(64);
    const b = "b".repeat(64);
    assert.deepEqual([...parseSha256List(`${a}  x y\n z\0${b} *bin\0`)], [
      ["x y\n z", a],
      ["bin", b],
    ]);
    assert.throws(() => parseSha256List("nothex  x\0"), /malformed/);
  });
});

/**
 * The guest's side played by this machine: the same argv run here, guest paths relative to `home` (the guest's
 * /root). Sync's scripts only use GNU find, sha256sum, xargs and tar, which this host has too.
 */
function loopbackTransport(home: string): SyncTransport & { commands: string[][] } {
  const at = (path: string) => (isAbsolute(path) ? path : join(home, path));
  const commands: string[][] = [];
  return {
    commands,
    async run(argv, options) {
      commands.push([...argv]);
      const result = spawnSync(argv[0]!, argv.slice(1), { cwd: home, input: options.stdin ?? "", env: { ...process.env, ...options.env }, encoding: "utf8" });
      return { exitCode: result.status, signal: result.signal, timedOut: false, stdout: result.stdout, stderr: result.stderr };
    },
    async write(path, data) {
      const chunks: Uint8Array[] = [];
      const reader = data.getReader();
      for (let next = await reader.read(); !next.done; next = await reader.read()) chunks.push(next.value);
      writeFileSync(at(path), Buffer.concat(chunks));
    },
    async read(path) {
      const bytes = readFileSync(at(path));
      return new ReadableStream({
        start(controller) {
          controller.enqueue(new Uint8Array(bytes));
          controller.close();
        },
      });
    },
  };
}

/** A tree as comparable data: type, mode, content and link target of every entry; files' mtimes apart. */
function snapshot(root: string): { entries: Record<string, string>; mtimes: Record<string, number> } {
  const entries: Record<string, string> = {};
  const mtimes: Record<string, number> = {};
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const path = rel ? `${rel}/${name}` : name;
      const stat = lstatSync(join(root, path));
      const mode = (stat.mode & 0o7777).toString(8);
      if (stat.isSymbolicLink()) entries[path] = `link -> ${readlinkSync(join(root, path))}`;
      else if (stat.isDirectory()) {
        entries[path] = `dir ${mode}`;
        walk(path);
      } else {
        entries[path] = `file ${mode} ${readFileSync(join(root, path), "utf8")}`;
        mtimes[path] = stat.mtimeMs;
      }
    }
  };
  walk("");
  return { entries, mtimes };
}

/** Same entries, and files' mtimes within a millisecond (tar keeps ms; utimes' doubles round the last digit). */
function assertSameTree(actualRoot: string, expectedRoot: string): void {
  const actual = snapshot(actualRoot);
  const expected = snapshot(expectedRoot);
  assert.deepEqual(actual.entries, expected.entries);
  for (const [path, mtime] of Object.entries(expected.mtimes)) {
    assert.ok(Math.abs(actual.mtimes[path]! - mtime) < 1, `${path}: mtime ${actual.mtimes[path]} vs ${mtime}`);
  }
}

describe("syncDirectory over a loopback transport (this machine's GNU tools as the guest)", () => {
  const base = mkdtempSync(join(tmpdir(), "cc-sync-"));
  after(() => rmSync(base, { recursive: true, force: true }));
  const home = join(base, "guest-home");
  const local = join(base, "local");
  mkdirSync(home);
  const unicode = `ünï cødé ${"ł".repeat(60)}.txt`; // over 100 bytes: a PAX path both ways

  const put = (path: string, content: string, mtimeS: number, mode = 0o644) => {
    mkdirSync(join(local, path, ".."), { recursive: true });
    writeFileSync(join(local, path), content, { mode });
    utimesSync(join(local, path), mtimeS, mtimeS);
  };

  it("uploads a nested tree into a new directory, keeping modes, mtimes (ms), symlinks and empty directories", async () => {
    put("a.txt", "alpha", 1_700_000_000.123);
    put("with space/b.txt", "bravo", 1_700_000_001.5);
    put(`with space/${unicode}`, "unicode", 1_700_000_002);
    put("bin/run.sh", "#!/bin/sh\n", 1_700_000_003, 0o755);
    mkdirSync(join(local, "empty"));
    symlinkSync("../a.txt", join(local, "bin", "link"));
    const transport = loopbackTransport(home);
    const result = await syncDirectory(transport, local, "remote/tree", { direction: "up" });
    assert.deepEqual(result, { direction: "up", uploaded: 5, downloaded: 0, deleted: 0, unchanged: 0, bytes: 5 + 5 + 7 + 10 });
    assertSameTree(join(home, "remote/tree"), local);
    assert.ok(transport.commands.length <= 3, `one listing and one extract: ${transport.commands.length} commands`);
    assert.deepEqual(readdirSync("/tmp").filter((n) => n.startsWith(".codecourier-sync-")), [], "the temp archive is removed");
  });

  it("sends only what changed; a touched file with the same content is not sent but gets its mtime", async () => {
    const transport = loopbackTransport(home);
    const again = await syncDirectory(transport, local, "remote/tree", { direction: "up" });
    assert.deepEqual(again, { direction: "up", uploaded: 0, downloaded: 0, deleted: 0, unchanged: 5, bytes: 0 });
    assert.equal(transport.commands.length, 1, "nothing changed: the listing is the only guest command");

    put("a.txt", "ALPHA", 1_700_000_100); // same size, new content
    put("with space/b.txt", "bravo", 1_700_000_200.25); // same content, new mtime
    rmSync(join(local, "bin/run.sh"));
    const changed = await syncDirectory(loopbackTransport(home), local, "remote/tree", { direction: "up", delete: true });
    assert.deepEqual(changed, { direction: "up", uploaded: 1, downloaded: 0, deleted: 1, unchanged: 3, bytes: 5 });
    assertSameTree(join(home, "remote/tree"), local);
    const thirdTransport = loopbackTransport(home);
    const third = await syncDirectory(thirdTransport, local, "remote/tree", { direction: "up" });
    assert.equal(third.unchanged, 4);
    assert.ok(!thirdTransport.commands.some((argv) => argv.join(" ").includes("sha256sum")), "the retouched mtime spares the next sync a hash");
  });

  it("downloads both ways with delete: new, changed and removed entries in the guest reach the local tree", async () => {
    const remote = join(home, "remote/tree");
    writeFileSync(join(remote, "from-guest.txt"), "guest");
    utimesSync(join(remote, "from-guest.txt"), 1_700_000_300.75, 1_700_000_300.75);
    writeFileSync(join(remote, "a.txt"), "changed in guest");
    rmSync(join(remote, "empty"), { recursive: true });
    writeFileSync(join(local, "local-only.txt"), "x");
    const result = await syncDirectory(loopbackTransport(home), local, "remote/tree", { direction: "down", delete: true });
    assert.equal(result.downloaded, 2);
    assert.equal(result.deleted, 2, "local-only.txt and empty/");
    assertSameTree(local, remote);
    assert.ok(Math.abs(lstatSync(join(local, "from-guest.txt")).mtimeMs - 1_700_000_300_750) < 1);

    const fresh = join(base, "fresh");
    const whole = await syncDirectory(loopbackTransport(home), fresh, "remote/tree", { direction: "down" });
    assert.equal(whole.downloaded, 5);
    assertSameTree(fresh, remote);
  });

  it("refuses a missing source directory with a NotFoundError", async () => {
    await assert.rejects(syncDirectory(loopbackTransport(home), local, "no/such/dir", { direction: "down" }), { name: "NotFoundError" });
    await assert.rejects(syncDirectory(loopbackTransport(home), join(base, "nope"), "x", { direction: "up" }), { name: "NotFoundError" });
  });
});

describe("syncDirectory against a hostile guest", () => {
  const base = mkdtempSync(join(tmpdir(), "cc-sync-hostile-"));
  after(() => rmSync(base, { recursive: true, force: true }));
  const outside = join(base, "outside");
  mkdirSync(outside);

  /** A "guest" that lists `listing` and sends `archive`, whatever it is asked. */
  const hostile = (listing: SyncEntry[], archive: TarEntry[]): SyncTransport => {
    let gzipped = false;
    return {
      async run(argv) {
        const script = argv[2] ?? "";
        if (script.includes("tar -c")) gzipped = argv.includes("gzip");
        const stdout = script.includes("find")
          ? listing
              .map((e) => [{ file: "f", directory: "d", symlink: "l" }[e.type], e.size, e.mtimeMs / 1000, e.mode.toString(8), e.path, e.linkTarget ?? ""])
              .map((fields) => fields.map((f) => `${f}\0`).join(""))
              .join("")
          : "";
        return { exitCode: 0, signal: null, timedOut: false, stdout, stderr: "" };
      },
      async write() {},
      async read() {
        const bytes = gzipped ? new Uint8Array(gzipSync(createTar(archive))) : createTar(archive);
        return new ReadableStream({ start: (c) => (c.enqueue(bytes), c.close()) });
      },
    };
  };
  const data = new TextEncoder().encode("pwned");

  it("refuses archive entries that were not asked for, such as a path with ..", async () => {
    const local = join(base, "l1");
    const listing = [file("ok.txt", 5, 1000)];
    const archive: TarEntry[] = [{ path: "../outside/pwned", type: "file", mode: 0o644, mtimeMs: 1000, size: 5, data }];
    await assert.rejects(syncDirectory(hostile(listing, archive), local, "x", { direction: "down" }), /refusing the path|not asked for/);
    const archive2: TarEntry[] = [{ path: "other.txt", type: "file", mode: 0o644, mtimeMs: 1000, size: 5, data }];
    await assert.rejects(syncDirectory(hostile(listing, archive2), local, "x", { direction: "down" }), /not asked for/);
    assert.deepEqual(readdirSync(outside), []);
    assert.ok(!existsSync(join(local, "other.txt")));
  });

  it("never writes through a symlink: a listed link and a file below it fail before anything lands outside", async () => {
    const local = join(base, "l2");
    const listing = [link("esc", outside), file("esc/pwned", 5, 1000)];
    const archive: TarEntry[] = [
      { path: "esc", type: "symlink", mode: 0o777, mtimeMs: 1000, size: 0, linkTarget: outside, data: new Uint8Array(0) },
      { path: "esc/pwned", type: "file", mode: 0o644, mtimeMs: 1000, size: 5, data },
    ];
    await assert.rejects(syncDirectory(hostile(listing, archive), local, "x", { direction: "down" }), CodeCourierError);
    assert.deepEqual(readdirSync(outside), []);

    // A symlink already here (say, from an earlier sync) where the guest has a directory: the link is removed
    // and a real directory made, so the file lands inside.
    const local3 = join(base, "l3");
    mkdirSync(local3);
    symlinkSync(outside, join(local3, "esc"));
    const onlyFile: TarEntry[] = [{ path: "esc/pwned", type: "file", mode: 0o644, mtimeMs: 1000, size: 5, data }];
    await syncDirectory(hostile([dir("esc"), file("esc/pwned", 5, 1000)], onlyFile), local3, "x", { direction: "down" });
    assert.deepEqual(readdirSync(outside), []);
    assert.ok(lstatSync(join(local3, "esc")).isDirectory());
    assert.equal(readFileSync(join(local3, "esc/pwned"), "utf8"), "pwned");
  });

  it("refuses a listing that names paths outside the directory, so nothing is deleted or written for them", async () => {
    const local = join(base, "l4");
    await assert.rejects(syncDirectory(hostile([file("../outside/x", 1, 1)], []), local, "x", { direction: "down", delete: true }), /refusing the path/);
  });
});
