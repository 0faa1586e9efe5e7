// Warm pool bookkeeping (pure logic; the clones are ids from a counter).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { WarmPool } from "./warm-pool.js";

function fakeClones() {
  let next = 0;
  const produced: string[] = [];
  const discarded: string[] = [];
  return {
    produced,
    discarded,
    clones: {
      produce: async (snapshotId: string) => {
        const id = `${snapshotId}-${next++}`;
        produced.push(id);
        return id;
      },
      discard: async (id: string) => {
        discarded.push(id);
      },
    },
  };
}

describe("WarmPool", () => {
  it("fills to its size and refills a taken clone only after the refill delay", async () => {
    const fake = fakeClones();
    const pool = new WarmPool(2, 150, fake.clones);
    pool.ensure("t");
    await pool.filled("t");
    assert.deepEqual(fake.produced, ["t-0", "t-1"]);
    const started = Date.now();
    assert.equal(pool.take("t"), "t-0");
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(fake.produced.length, 2, "no refill before the delay");
    await pool.filled("t");
    assert.ok(Date.now() - started >= 140, "filled() waits for the delayed refill");
    assert.deepEqual(fake.produced, ["t-0", "t-1", "t-2"]);
    await pool.close();
    assert.deepEqual(fake.discarded.sort(), ["t-1", "t-2"]);
  });

  it("refills at once when a take finds the pool empty", async () => {
    const fake = fakeClones();
    const pool = new WarmPool(1, 60_000, fake.clones);
    assert.equal(pool.take("t"), undefined, "nothing wanted yet");
    pool.ensure("t");
    assert.equal(pool.take("t"), undefined, "the first clone is still being produced");
    await pool.filled("t");
    assert.equal(fake.produced.length, 1);
    await pool.close();
  });

  it("a drain cancels a pending delayed refill", async () => {
    const fake = fakeClones();
    const pool = new WarmPool(1, 60_000, fake.clones);
    pool.ensure("t");
    await pool.filled("t");
    assert.equal(pool.take("t"), "t-0");
    await pool.drain("t"); // must not wait a minute, nor produce another clone
    await pool.filled("t");
    assert.deepEqual(fake.produced, ["t-0"]);
    assert.deepEqual(fake.discarded, []);
    await pool.close();
  });
});
