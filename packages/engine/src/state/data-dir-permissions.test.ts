// The data dir check on real files: what is open to others is made private, symlinks are not followed.
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { secureDataDir } from "./data-dir-permissions.js";

describe("secureDataDir", () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it("makes the dir, the databases and the snapshot, run and disk files private, and says what it changed", async () => {
    const home = await mkdtemp(join(tmpdir(), "cc-perm-"));
    const outside = await mkdtemp(join(tmpdir(), "cc-perm-public-"));
    dirs.push(home, outside);
    await chmod(home, 0o755);
    await writeFile(join(home, "control.db"), "");
    await chmod(join(home, "control.db"), 0o644);
    await writeFile(join(home, "state.db-wal"), "");
    await chmod(join(home, "state.db-wal"), 0o640);
    await mkdir(join(home, "snapshots", "snap_1"), { recursive: true, mode: 0o755 });
    await chmod(join(home, "snapshots"), 0o755);
    await writeFile(join(home, "snapshots", "snap_1", "memory"), "");
    await chmod(join(home, "snapshots", "snap_1", "memory"), 0o644);
    await mkdir(join(home, "disks"), { mode: 0o700 });
    await writeFile(join(home, "disks", "layer.qcow2"), "", { mode: 0o600 });
    await writeFile(join(outside, "public-image"), "");
    await chmod(join(outside, "public-image"), 0o644);
    await symlink(outside, join(home, "images"));
    await symlink(join(outside, "public-image"), join(home, "run"));

    const report = secureDataDir(home);
    assert.deepEqual(report.problems, []);
    for (const [path, mode] of [
      [home, 0o700],
      [join(home, "control.db"), 0o600],
      [join(home, "state.db-wal"), 0o600],
      [join(home, "snapshots"), 0o700],
      [join(home, "snapshots", "snap_1"), 0o700],
      [join(home, "snapshots", "snap_1", "memory"), 0o600],
      [join(home, "disks", "layer.qcow2"), 0o600],
    ] as const) {
      assert.equal((await stat(path)).mode & 0o777, mode, path);
    }
    assert.equal(report.fixed.length, 6, report.fixed.join("\n"));
    assert.ok(report.fixed.some((line) => line.includes("control.db: 0644 → 0600")), report.fixed.join("\n"));
    assert.equal((await stat(outside)).mode & 0o777, 0o700, "mkdtemp's own mode, untouched");
    assert.equal((await stat(join(outside, "public-image"))).mode & 0o777, 0o644, "symlinks are not followed");
    assert.deepEqual(secureDataDir(home), { fixed: [], problems: [] }, "nothing left to fix");
  });
});
