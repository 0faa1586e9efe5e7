import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { SocketBudget, SocketReservation, fdBudgetFor, type LimitRefusal } from "./socket-budget.js";

const isRefusal = (value: SocketReservation | LimitRefusal): value is LimitRefusal => "rule" in value;
const take = (budget: SocketBudget, sandboxId: string, tenantId: string | null, count: number): SocketReservation => {
  const places = budget.reserve({ sandboxId, tenantId }, count);
  assert.ok(!isRefusal(places), isRefusal(places) ? places.error : "");
  return places;
};
const closed = (stream: PassThrough) => new Promise((resolve) => stream.once("close", resolve));

describe("socket budget", () => {
  it("refuses a sandbox's sockets past its limit, and counts a socket until it has closed", async () => {
    const budget = new SocketBudget({ perSandbox: 4, perTenant: 100 }, 100_000);
    const first = take(budget, "a", "t", 2);
    const second = take(budget, "a", "t", 2);
    const refused = budget.reserve({ sandboxId: "a", tenantId: "t" }, 2);
    assert.ok(isRefusal(refused));
    assert.equal(refused.rule, "limit:sandbox-sockets");
    assert.match(refused.error, /holds 4 sockets .* limit is 4/);
    // Another sandbox is not affected.
    take(budget, "b", "t", 2).releaseUnbound();

    const socket = new PassThrough();
    first.bind(socket);
    first.releaseUnbound();
    assert.deepEqual(budget.heldBy({ sandboxId: "a", tenantId: "t" }), { sandbox: 3, tenant: 3 });
    // Ended, but not closed yet: still counted.
    socket.end();
    assert.equal(budget.heldBy({ sandboxId: "a", tenantId: "t" }).sandbox, 3);
    socket.destroy();
    await closed(socket);
    assert.equal(budget.heldBy({ sandboxId: "a", tenantId: "t" }).sandbox, 2);
    second.releaseUnbound();
    second.releaseUnbound();
    assert.equal(budget.held, 0, "a reservation gave back more than it took");
  });

  it("refuses past the tenant's limit across its sandboxes; a sandbox without a known tenant has only its own", () => {
    const budget = new SocketBudget({ perSandbox: 4, perTenant: 6 }, 100_000);
    take(budget, "a", "t", 4);
    take(budget, "b", "t", 2);
    const refused = budget.reserve({ sandboxId: "c", tenantId: "t" }, 1);
    assert.ok(isRefusal(refused) && refused.rule === "limit:tenant-sockets", JSON.stringify(refused));
    take(budget, "d", "other", 4);
    take(budget, "e", null, 4);
  });

  it("refuses when the process's descriptors (last count plus sockets since) would pass the budget", () => {
    const budget = new SocketBudget({ perSandbox: 10_000, perTenant: 10_000 }, 1024);
    assert.equal(budget.fdBudget, 768);
    budget.observe(700, 1024);
    take(budget, "a", "t", 60);
    assert.equal(budget.estimatedOpenFds(), 760);
    const refused = budget.reserve({ sandboxId: "b", tenantId: "u" }, 10);
    assert.ok(isRefusal(refused) && refused.rule === "limit:server-fds", JSON.stringify(refused));
    assert.match(refused.error, /about 760 file descriptors open, its budget for new connections is 768 \(soft limit 1024\)/);
    // The operator raised the soft limit: the budget follows at the next count.
    budget.observe(760, 4096);
    take(budget, "b", "u", 10);
    // A count that failed (EMFILE): nothing new until one succeeds.
    budget.observeFailedScan();
    assert.ok(isRefusal(budget.reserve({ sandboxId: "c", tenantId: "v" }, 1)));
  });

  it("keeps at least 256 descriptors, or a quarter of the soft limit, for the rest of the server", () => {
    assert.equal(fdBudgetFor(1024), 768);
    assert.equal(fdBudgetFor(20_000), 15_000);
    assert.equal(fdBudgetFor(512), 256);
    assert.equal(fdBudgetFor(200), 0);
    const fixed = new SocketBudget({ perSandbox: 1, perTenant: 1 }, 1024, 100);
    fixed.observe(10, 65_536);
    assert.equal(fixed.fdBudget, 100);
  });
});
