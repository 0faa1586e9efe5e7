import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { answerQuestion } from "./dns-answers.js";
import { NameResolver, parseOperatorHosts } from "./name-resolver.js";
import { SandboxNetwork } from "./sandbox-network.js";

const context = { hostAddresses: new Set(["192.0.2.10"]), internalCidrs: ["10.211.0.0/16"] };
const resolver = new NameResolver(parseOperatorHosts("git.internal=10.1.2.3,local.test=127.0.0.1,mixed.test=127.0.0.1,mixed.test=10.1.2.4"));

describe("DNS answers for a sandbox", () => {
  it("answers allowed names with the addresses the proxy would dial, remembers them, and records each question", async () => {
    const sandbox = new SandboxNetwork("sbx-1", { internet: false, allow: ["git.internal", "mixed.test", "local.test"], deny: [] });
    assert.deepEqual(await answerQuestion(sandbox, { name: "git.internal", type: "A" }, resolver, context), {
      kind: "addresses",
      addresses: ["10.1.2.3"],
      ttlSeconds: 30,
    });
    assert.equal(sandbox.nameAnsweredFor("10.1.2.3"), "git.internal");
    // Loopback is never handed out, even when the operator's map says so.
    assert.deepEqual((await answerQuestion(sandbox, { name: "mixed.test", type: "A" }, resolver, context)).kind, "addresses");
    assert.equal(sandbox.nameAnsweredFor("127.0.0.1"), undefined);
    assert.deepEqual(await answerQuestion(sandbox, { name: "local.test", type: "A" }, resolver, context), { kind: "nxdomain" });
    // Other types of an allowed name: an empty answer (no IPv6, no TXT), never asked upstream.
    assert.deepEqual(await answerQuestion(sandbox, { name: "git.internal", type: "TXT" }, resolver, context), { kind: "addresses", addresses: [], ttlSeconds: 30 });
    assert.deepEqual(
      sandbox.events.recent().map((e) => (e.type === "network.dns" ? [e.name, e.queryType, e.allowed, e.rule] : [])),
      [
        ["git.internal", "A", true, "git.internal"],
        ["mixed.test", "A", true, "mixed.test"],
        ["local.test", "A", false, "blocked:addresses"],
        ["git.internal", "TXT", true, "git.internal"],
      ],
    );
  });

  it("refuses names the policy does not allow by name (a CIDR entry makes no name resolvable) without resolving them", async () => {
    const sandbox = new SandboxNetwork("sbx-2", { internet: false, allow: ["10.0.0.0/8"], deny: [] });
    assert.deepEqual(await answerQuestion(sandbox, { name: "git.internal", type: "A" }, resolver, context), { kind: "nxdomain" });
    const [event] = sandbox.events.recent();
    assert.ok(event?.type === "network.dns" && !event.allowed && event.rule === "default-deny");
  });

  it("answers a tunnel's name with its own address, A questions only", async () => {
    const sandbox = new SandboxNetwork("sbx-3", { internet: false, allow: [], deny: [] });
    const tunnel = sandbox.addTunnel({ name: "db", target: "10.1.2.3:5432", targetHost: "10.1.2.3", port: 5432 });
    assert.deepEqual(await answerQuestion(sandbox, { name: "db", type: "A" }, resolver, context), { kind: "addresses", addresses: [tunnel.address], ttlSeconds: 30 });
    assert.deepEqual(await answerQuestion(sandbox, { name: "db", type: "AAAA" }, resolver, context), { kind: "addresses", addresses: [], ttlSeconds: 30 });
    assert.equal(sandbox.tunnelAt(tunnel.address)?.name, "db");
  });
});
