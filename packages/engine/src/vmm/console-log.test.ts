import assert from "node:assert/strict";
import { appendFileSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { mkdtemp, readdir, rm, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pruneKeptConsoleLogs, trimConsoleLog } from "./console-log.js";

describe("console log bounds", () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), "cc-console-"))));
  after(() => rm(dir, { recursive: true, force: true }));

  it("cuts a file over the limit down to its tail, and later appends land after it", () => {
    const path = join(dir, "console.log");
    writeFileSync(path, `${"a".repeat(5000)}${"b".repeat(1000)}`);
    assert.equal(trimConsoleLog(path, 4000, 1000), true);
    const text = readFileSync(path, "utf8");
    assert.match(text, /^\[console log cut: 5000 earlier bytes dropped\]\n/);
    assert.equal(text.slice(text.indexOf("\n") + 1), "b".repeat(1000), "only the last bytes are kept");
    appendFileSync(path, "after");
    assert.ok(readFileSync(path, "utf8").endsWith(`${"b".repeat(1000)}after`));
    assert.equal(trimConsoleLog(path, 4000, 1000), false, "a file under the limit is left alone");
    assert.ok(statSync(path).size < 1100);
  });

  it("keeps only the newest failed-VM console logs", async () => {
    const kept = join(dir, "logs");
    await rm(kept, { recursive: true, force: true });
    const { mkdir } = await import("node:fs/promises");
    await mkdir(kept);
    for (let i = 0; i < 60; i++) {
      const path = join(kept, `vm-${i}-console.log`);
      writeFileSync(path, "x");
      await utimes(path, 1000 + i, 1000 + i);
    }
    writeFileSync(join(kept, "other.txt"), "not a console log");
    await pruneKeptConsoleLogs(kept);
    const left = await readdir(kept);
    assert.equal(left.filter((n) => n.endsWith("-console.log")).length, 50);
    assert.ok(left.includes("vm-59-console.log") && !left.includes("vm-0-console.log") && left.includes("other.txt"));
  });
});
