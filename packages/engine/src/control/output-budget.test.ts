import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OutputBudget, TenantOutputBudgets } from "./output-budget.js";

describe("OutputBudget", () => {
  it("keeps output until full, then evicts the oldest kept piece first, whoever kept it", () => {
    const budget = new OutputBudget(100);
    const evicted: string[] = [];
    const first = budget.keep(40, () => evicted.push("first"));
    budget.keep(40, () => evicted.push("second"));
    assert.ok(first);
    assert.equal(budget.usedBytes, 80);
    budget.keep(40, () => evicted.push("third"));
    assert.deepEqual(evicted, ["first"]);
    assert.equal(budget.usedBytes, 80);
    first.release(); // already evicted: nothing more is given back
    assert.equal(budget.usedBytes, 80);
  });

  it("skips pieces their owners released, and gives their bytes back once", () => {
    const budget = new OutputBudget(100);
    const evicted: number[] = [];
    const pieces = [0, 1, 2].map((i) => budget.keep(30, () => evicted.push(i))!);
    pieces[0]!.release();
    pieces[0]!.release();
    assert.equal(budget.usedBytes, 60);
    budget.keep(50, () => evicted.push(3));
    assert.deepEqual(evicted, [1], "the released piece is not evicted again; the next oldest is");
    assert.equal(budget.usedBytes, 80);
  });

  it("refuses a piece that does not fit even with everything evictable gone", () => {
    const budget = new OutputBudget(100);
    assert.equal(budget.reserve(90), 90);
    let evicted = false;
    assert.ok(budget.keep(10, () => (evicted = true)));
    assert.equal(budget.keep(20, () => {}), undefined);
    assert.equal(evicted, true, "it evicted what it could first");
    assert.equal(budget.usedBytes, 90);
    assert.equal(budget.keep(101, () => {}), undefined);
  });

  it("grants reservations from free room and evicted kept output, never beyond the limit", () => {
    const budget = new OutputBudget(100);
    const evicted: number[] = [];
    budget.keep(30, () => evicted.push(1));
    budget.keep(30, () => evicted.push(2));
    assert.equal(budget.reserve(50), 50);
    assert.deepEqual(evicted, [1]);
    assert.equal(budget.reserve(60), 50, "what is left, after evicting the rest");
    assert.deepEqual(evicted, [1, 2]);
    assert.equal(budget.reserve(10), 0, "all held by reservations: nothing");
    budget.release(100);
    assert.equal(budget.usedBytes, 0);
    assert.throws(() => budget.release(1), RangeError);
  });

  it("stays proportional to what it holds while many pieces come and go", () => {
    const budget = new OutputBudget(1000);
    const longLived = budget.keep(10, () => assert.fail("never evicted: there is always room"))!;
    for (let i = 0; i < 100_000; i++) budget.keep(10, () => {})!.release();
    assert.equal(budget.usedBytes, 10);
    longLived.release();
    assert.equal(budget.usedBytes, 0);
  });

  it("is one budget per tenant", () => {
    const budgets = new TenantOutputBudgets(100);
    assert.equal(budgets.of("a"), budgets.of("a"));
    assert.notEqual(budgets.of("a"), budgets.of("b"));
    assert.equal(budgets.of("a").limitBytes, 100);
  });
});
