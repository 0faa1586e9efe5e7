import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { roundShape } from "./sandbox-shapes.js";
import { InvalidRequestError } from "../sandboxes/errors.js";

describe("roundShape", () => {
  it("rounds each dimension up to the next step and keeps shapes that are steps", () => {
    assert.deepEqual(roundShape({ cpus: 1, memoryMB: 512 }), { cpus: 1, memoryMB: 512 });
    assert.deepEqual(roundShape({ cpus: 3, memoryMB: 130 }), { cpus: 4, memoryMB: 256 });
    assert.deepEqual(roundShape({ cpus: 5, memoryMB: 513 }), { cpus: 8, memoryMB: 1024 });
    assert.deepEqual(roundShape({ cpus: 64, memoryMB: 65536 }), { cpus: 64, memoryMB: 65536 });
  });

  it("maps every memory size of a range onto a handful of shapes", () => {
    const shapes = new Set<number>();
    for (let memoryMB = 128; memoryMB <= 16384; memoryMB++) shapes.add(roundShape({ cpus: 1, memoryMB }).memoryMB);
    assert.deepEqual([...shapes], [256, 512, 1024, 2048, 4096, 8192, 16384]);
  });

  it("refuses more than the largest step", () => {
    assert.throws(() => roundShape({ cpus: 65, memoryMB: 512 }), InvalidRequestError);
    assert.throws(() => roundShape({ cpus: 1, memoryMB: 65537 }), InvalidRequestError);
  });
});
