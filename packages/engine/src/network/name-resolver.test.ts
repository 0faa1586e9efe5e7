import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { NameResolver, parseOperatorHosts } from "./name-resolver.js";
import { NetworkEventLog } from "./event-log.js";
import type { NetworkEvent } from "@codecourier/protocol/network";

describe("operator name map", () => {
  it("parses name=address pairs, normalises names and keeps every address of a repeated name", () => {
    const hosts = parseOperatorHosts(" Git.Internal.=10.1.2.3, git.internal=10.1.2.4 ,db=192.168.0.9");
    assert.deepEqual([...hosts], [
      ["git.internal", ["10.1.2.3", "10.1.2.4"]],
      ["db", ["192.168.0.9"]],
    ]);
    assert.deepEqual([...parseOperatorHosts("")], []);
  });

  it("refuses anything that is not name=IPv4", () => {
    for (const bad of ["git.internal", "=10.0.0.1", "x=::1", "x=10.0.0", "1.2.3.4=10.0.0.1", "a b=10.0.0.1"]) {
      assert.throws(() => parseOperatorHosts(bad), /CODECOURIER_NETWORK_HOSTS/, bad);
    }
  });

  it("answers mapped names from the map, marked as the operator's", async () => {
    const resolver = new NameResolver(parseOperatorHosts("origin.test=10.250.0.2"));
    assert.deepEqual(await resolver.resolve("origin.test"), { addresses: ["10.250.0.2"], operatorMapped: true });
  });
});

describe("network event log", () => {
  const event = (n: number): NetworkEvent => ({ type: "network.dropped", time: n, sandboxId: "s", kind: "udp", packets: n });

  it("keeps the last events up to its capacity and delivers new ones to subscribers until they stop", () => {
    const log = new NetworkEventLog(3);
    const seen: number[] = [];
    for (let i = 1; i <= 2; i++) log.record(event(i));
    const stop = log.subscribe((e) => seen.push(e.time));
    for (let i = 3; i <= 5; i++) log.record(event(i));
    stop();
    log.record(event(6));
    assert.deepEqual(log.recent().map((e) => e.time), [4, 5, 6]);
    assert.deepEqual(seen, [3, 4, 5]);
    assert.equal(log.subscribers, 0);
  });
});
