// Sandbox networking through the whole stack: SDK → server → per-sandbox namespace, nftables, egress proxy and DNS
// stub → real VMs. Origins are test servers in a network namespace this file makes (testing/origin-netns.ts) or on
// the host's loopback; no other address is ever a target.
import assert from "node:assert/strict";
import { networkInterfaces } from "node:os";
import { after, before, describe, it } from "node:test";
import type { NetworkEvent, Sandbox } from "@codecourier/sdk";
import WebSocket from "ws";
import { engineTag } from "../network/host-network.js";
import { startOriginNetns, type OriginNetns } from "../testing/origin-netns.js";
import { startLocalServer, withServerLog, type LocalServer } from "../testing/local-server.js";
import { runTool } from "../util/run-tool.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A command's output and exit code (curl's exit code says how a connection failed). */
async function sh(sandbox: Sandbox, command: string): Promise<{ code: number; out: string }> {
  const result = await sandbox.runCommand(command, { timeoutMs: 60_000 });
  return { code: result.exitCode ?? -1, out: result.stdout + result.stderr };
}

/** curl with short timeouts; -k: the test origin's certificate is self-signed. */
const curl = (args: string) => `curl -sS -k --connect-timeout 5 -m 10 ${args}`;

/** The host's own non-loopback IPv4 address (a sandbox must never reach it). */
function hostAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const info of list ?? []) if (info.family === "IPv4" && !info.internal && !info.address.startsWith("10.250.")) return info.address;
  }
  throw new Error("the host has no non-loopback IPv4 address");
}

describe("sandbox network (real server, real VMs, origins in a test namespace)", () => {
  let server: LocalServer;
  let origins: OriginNetns;
  let sdk: typeof import("@codecourier/sdk");
  let connection: { url: string; apiKey: string };
  let sandbox: Sandbox;
  let allowedIp: string;
  let evilIp: string;
  const events: NetworkEvent[] = [];
  const following = new AbortController();

  /** Waits until an event matching `match` has arrived; fails showing the events seen. */
  async function eventWhere(match: (event: NetworkEvent) => boolean, what: string): Promise<NetworkEvent> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const found = events.find(match);
      if (found) return found;
      if (Date.now() > deadline) assert.fail(`no event for ${what}; saw ${JSON.stringify(events.slice(-20), null, 1)}`);
      await sleep(50);
    }
  }
  const deniedConnection = (address: string, port: number) => (e: NetworkEvent) =>
    e.type === "network.connection" && !e.allowed && e.requestedAddress === address && e.port === port;

  before(async () => {
    origins = await startOriginNetns(2);
    [allowedIp, evilIp] = origins.addresses as [string, string];
    server = await startLocalServer({
      prefix: "ccnet-",
      env: {
        // The operator's names for the test origins (the proxy resolves names itself; /etc/hosts is never used).
        CODECOURIER_NETWORK_HOSTS: [`allowed.test=${allowedIp}`, `evil.test=${evilIp}`, `wild.test=${allowedIp}`, `sub.wild.test=${allowedIp}`].join(","),
      },
    });
    sdk = await import("@codecourier/sdk");
    connection = { url: server.url, apiKey: await server.createKey("net-test") };
    sandbox = await withServerLog(server, () => sdk.createSandbox(connection));
    void (async () => {
      for await (const event of sandbox.network.events({ follow: true, signal: following.signal })) events.push(event);
    })().catch(() => {});
  });

  after(async () => {
    following.abort();
    await sandbox?.kill().catch(() => {});
    await server?.stop();
    await origins?.stop();
  });

  it("denies by default; allowing a name opens it for new connections, removing it closes it again", async () => {
    const denied = await sh(sandbox, curl("http://allowed.test/"));
    assert.notEqual(denied.code, 0, denied.out);
    assert.match(denied.out, /resolve/i, "the name should not even resolve");
    await eventWhere((e) => e.type === "network.dns" && e.name === "allowed.test" && !e.allowed, "the refused DNS question");
    // Dialing the origin's address directly with the right Host header is refused too.
    const byAddress = await sh(sandbox, curl(`--resolve allowed.test:80:${allowedIp} http://allowed.test/`));
    assert.notEqual(byAddress.code, 0);

    await sandbox.network.allow("allowed.test");
    const allowed = await sh(sandbox, curl("http://allowed.test/"));
    assert.equal(allowed.code, 0, allowed.out);
    assert.equal(allowed.out, `origin ${allowedIp} host allowed.test\n`);
    const https = await sh(sandbox, curl("https://allowed.test/"));
    assert.equal(https.out, `origin ${allowedIp} host allowed.test\n`);
    const event = await eventWhere((e) => e.type === "network.connection" && e.allowed && e.name === "allowed.test" && e.port === 443, "the allowed TLS connection");
    assert.ok(event.type === "network.connection" && event.nameSource === "sni" && event.rule === "allowed.test" && event.bytesIn > 0);

    // Another tenant cannot see or change this sandbox's network; a bad entry is refused and changes nothing.
    const otherKey = await server.createKey("other-team");
    const foreign = await fetch(`${server.url}/v1/sandboxes/${sandbox.sandboxId}/network/policy`, {
      method: "POST",
      headers: { authorization: `Bearer ${otherKey}`, "content-type": "application/json" },
      body: JSON.stringify({ allow: ["evil.test"] }),
    });
    assert.equal(foreign.status, 404);
    await assert.rejects(sandbox.network.allow("evil.test", "fd00::/8"), sdk.BadRequestError);
    assert.deepEqual((await sandbox.network.state()).policy.allow, ["allowed.test"]);

    await sandbox.network.remove(["allowed.test"]);
    const closed = await sh(sandbox, curl(`--resolve allowed.test:80:${allowedIp} http://allowed.test/`));
    assert.notEqual(closed.code, 0, "a removed entry still let a new connection through");
  });

  it("a wildcard matches strict subdomains only, and deny wins over allow", async () => {
    await sandbox.network.policy({ allow: ["*.wild.test"] });
    assert.equal((await sh(sandbox, curl("http://sub.wild.test/"))).out, `origin ${allowedIp} host sub.wild.test\n`);
    assert.notEqual((await sh(sandbox, curl("http://wild.test/"))).code, 0, "*.wild.test matched wild.test itself");
    await sandbox.network.deny("sub.wild.test");
    assert.notEqual((await sh(sandbox, curl("http://sub.wild.test/"))).code, 0, "deny did not win over allow");
    await eventWhere((e) => e.type === "network.dns" && e.name === "sub.wild.test" && !e.allowed && e.rule === "sub.wild.test", "the denied name");
  });

  it("every bypass fails and is recorded", async () => {
    await sandbox.network.policy({ allow: ["allowed.test"], internet: true });
    const before = origins.events().length;

    // A direct IP (private: no CIDR allows it, and internet: true never reaches private addresses).
    assert.notEqual((await sh(sandbox, curl(`http://${evilIp}/`))).code, 0);
    assert.equal((await eventWhere(deniedConnection(evilIp, 80), "the direct IP")).type, "network.connection");
    // An IP-literal TLS connection (no SNI name to check).
    assert.notEqual((await sh(sandbox, curl(`https://${evilIp}/`))).code, 0);
    await eventWhere(deniedConnection(evilIp, 443), "the IP-literal TLS connection");
    // Domain fronting: SNI (or Host) of an allowed name, sent to another address. The proxy dials the address of
    // the name it checked, so the request lands on the allowed origin, never on the one the guest chose.
    const fronted = await sh(sandbox, curl(`--resolve allowed.test:443:${evilIp} -H 'Host: evil.test' https://allowed.test/`));
    assert.equal(fronted.out, `origin ${allowedIp} host evil.test\n`);
    const frontedPlain = await sh(sandbox, curl(`--resolve allowed.test:80:${evilIp} http://allowed.test/`));
    assert.equal(frontedPlain.out, `origin ${allowedIp} host allowed.test\n`);
    const redirected = await eventWhere(
      (e) => e.type === "network.connection" && e.requestedAddress === evilIp && e.port === 443 && e.allowed,
      "the fronted connection",
    );
    assert.ok(redirected.type === "network.connection" && redirected.address === allowedIp);
    // DNS for a disallowed name, and DNS (and any UDP) to another resolver.
    assert.notEqual((await sh(sandbox, "getent hosts evil.test")).code, 0);
    await eventWhere((e) => e.type === "network.dns" && e.name === "evil.test" && !e.allowed, "the disallowed name");
    await sh(sandbox, `bash -c 'for i in 1 2 3; do echo q > /dev/udp/${evilIp}/53; echo u > /dev/udp/${evilIp}/9999; done'`);
    await eventWhere((e) => e.type === "network.dropped" && e.kind === "dns", "DNS to another resolver");
    await eventWhere((e) => e.type === "network.dropped" && e.kind === "udp", "other UDP");
    // IPv6: the guest has no IPv6 stack; a raw IPv6 frame (sent through a packet socket) is dropped by the host.
    assert.notEqual((await sh(sandbox, curl("-6 http://[fd00::1]/"))).code, 0);
    const frame = await sh(
      sandbox,
      `perl -e 'socket(S, 17, 3, 0) or die "socket: $!"; my $i = \`cat /sys/class/net/eth0/ifindex\`; ` +
        `my $f = ("\\xff" x 6) . ("\\x02\\xcc\\x00\\x00\\x00\\x02") . "\\x86\\xdd" . ("\\x60" . ("\\x00" x 39)); ` +
        `send(S, $f, 0, pack("S n i S C C a8", 17, 0x86dd, $i, 1, 0, 6, "\\xff" x 6)) or die "send: $!"; print "sent\\n"'`,
    );
    assert.equal(frame.out.trim(), "sent", frame.out);
    await eventWhere((e) => e.type === "network.dropped" && e.kind === "ipv6", "the IPv6 frame");
    // The cloud metadata address and the host's own addresses, even with internet: true and a CIDR for them.
    await sandbox.network.allow(`${hostAddress()}/32`, "169.254.0.0/16");
    assert.notEqual((await sh(sandbox, curl("http://169.254.169.254/latest/meta-data/"))).code, 0);
    const metadata = await eventWhere(deniedConnection("169.254.169.254", 80), "the metadata address");
    assert.ok(metadata.type === "network.connection" && metadata.rule === "blocked:metadata");
    const port = Number(new URL(server.url).port);
    assert.notEqual((await sh(sandbox, curl(`http://${hostAddress()}:${port}/health`))).code, 0);
    const host = await eventWhere(deniedConnection(hostAddress(), port), "the host's own address");
    assert.ok(host.type === "network.connection" && host.rule === "blocked:host");

    // Nothing of all that reached the other origin.
    assert.deepEqual(origins.events().slice(before).filter((e) => e.local === evilIp), []);
    const state = await sandbox.network.state();
    assert.ok(state.dropped.dns >= 3 && state.dropped.udp >= 3 && state.dropped.ipv6 >= 1, JSON.stringify(state.dropped));
  });

  it("a tunnel reaches exactly its target, none of its neighbours", async () => {
    await sandbox.network.policy({});
    await sandbox.network.tunnel({ name: "db", target: `${allowedIp}:5432` });
    const echo = await sh(sandbox, "bash -c 'exec 3<>/dev/tcp/db/5432 && echo through-the-tunnel >&3 && head -n1 <&3'");
    assert.equal(echo.out, "through-the-tunnel\n");
    const tunnelAddress = (await sh(sandbox, "getent hosts db")).out.split(/\s+/)[0]!;
    for (const [address, port] of [
      [tunnelAddress, 5433],
      [allowedIp, 5432],
      [evilIp, 5432],
    ] as const) {
      const attempt = await sh(sandbox, `timeout 10 bash -c 'exec 3<>/dev/tcp/${address}/${port} && echo x >&3 && head -c1 <&3'`);
      assert.notEqual(attempt.out.trim(), "x", `${address}:${port} was reachable`);
      await eventWhere(deniedConnection(address, port), `the tunnel neighbour ${address}:${port}`);
    }
    await sandbox.network.removeTunnel("db");
    assert.notEqual((await sh(sandbox, "getent hosts db")).code, 0);
  });

  it("exposes a guest port over HTTP and WebSocket, refusing requests without the token", async () => {
    await sandbox.runCommand(`nohup /.codecourier/bin/node -e '${GUEST_HTTP_AND_WEBSOCKET_SERVER}' > /tmp/server.log 2>&1 &`, { check: true });
    await sh(sandbox, "for i in $(seq 50); do curl -s -m 1 http://127.0.0.1:8080/ && break; sleep 0.2; done");
    const exposed = await sandbox.network.expose(8080);
    assert.ok(exposed.token && exposed.url.startsWith("http://127.0.0.1:"));

    const refused = await fetch(exposed.url);
    assert.equal(refused.status, 401);
    const wrong = await fetch(exposed.url, { headers: { "X-CodeCourier-Token": "wrong" } });
    assert.equal(wrong.status, 401);
    const ok = await fetch(`${exposed.url}hello`, { headers: { "X-CodeCourier-Token": exposed.token } });
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "guest says GET /hello\n");

    const wsUrl = exposed.url.replace("http://", "ws://");
    const echoed = await new Promise<string>((resolve, reject) => {
      const ws = new WebSocket(wsUrl, { headers: { "X-CodeCourier-Token": exposed.token! } });
      ws.once("open", () => ws.send("ping over websocket"));
      ws.once("message", (data) => {
        resolve(String(data));
        ws.close();
      });
      ws.once("error", reject);
    });
    assert.equal(echoed, "ping over websocket");
    await assert.rejects(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(wsUrl);
        ws.once("open", resolve);
        ws.once("error", reject);
      }),
      /401/,
    );

    const open = await sandbox.network.expose(8080, { public: true });
    assert.equal(open.token, null);
    assert.equal(await (await fetch(`${open.url}x`)).text(), "guest says GET /x\n");
    await sandbox.network.unexpose(8080);
    await assert.rejects(fetch(open.url));
  });

  it("a sandbox keeps its network, policy and exposed port across a server crash and restart", async () => {
    await sandbox.network.policy({ allow: ["allowed.test"] });
    const exposed = await sandbox.network.expose(8080, { public: true });
    const tag = engineTag(server.home);
    const namespaces = async () =>
      (await runTool("ip", ["netns", "list"])).toString().split("\n").filter((line) => line.startsWith(`cc-${tag}-`)).map((line) => line.split(" ")[0]);
    const before = await namespaces();
    following.abort();
    await server.restartAfterCrash();
    // The sandbox's QEMU ran on; the new server adopted it with its namespace (the old pool clone's is gone).
    assert.ok((await namespaces()).includes(`cc-${tag}-${sandbox.sandboxId}`), `namespaces before ${before}, after ${await namespaces()}`);
    assert.deepEqual((await sandbox.network.state()).policy.allow, ["allowed.test"]);
    assert.equal((await sh(sandbox, curl("http://allowed.test/"))).out, `origin ${allowedIp} host allowed.test\n`);
    assert.notEqual((await sh(sandbox, curl("http://evil.test/"))).code, 0);
    // The guest's HTTP server from the expose test is still running: the sandbox was never stopped.
    assert.equal(await (await fetch(`${exposed.url}after-restart`)).text(), "guest says GET /after-restart\n");
  });

  it("100 create/kill cycles leave no namespace, tap, veth or nftables table behind", async () => {
    const tag = engineTag(server.home);
    for (let i = 0; i < 100; i++) {
      const cycle = await sdk.createSandbox(connection);
      await cycle.kill();
    }
    // A sandbox whose QEMU dies on its own loses its network too.
    const crashing = await sdk.createSandbox(connection);
    const pids = (await runTool("ip", ["netns", "pids", `cc-${tag}-${crashing.sandboxId}`])).toString().trim().split("\n");
    assert.equal(pids.length, 1, "one QEMU in the sandbox's namespace");
    process.kill(Number(pids[0]), "SIGKILL");
    const lostBy = Date.now() + 20_000;
    while ((await crashing.info()).state !== "lost" && Date.now() < lostBy) await sleep(200);
    assert.equal((await crashing.info()).state, "lost");
    await sandbox.kill();

    const deadline = Date.now() + 20_000;
    let leftovers: string[] = [];
    do {
      await sleep(500);
      // The warm pool keeps one clone (with its namespace) ready; everything else must be gone.
      const namespaces = (await runTool("ip", ["netns", "list"])).toString().split("\n").filter((line) => line.startsWith(`cc-${tag}-`));
      const links = (await runTool("ip", ["-o", "link", "show"])).toString().split("\n").filter((line) => line.includes(`cc${tag}`));
      leftovers = [...namespaces.map((n) => `netns ${n}`), ...links.map((l) => `link ${l.split(":")[1]?.trim()}`)];
    } while (leftovers.length > 2 && Date.now() < deadline);
    assert.ok(leftovers.length <= 2, `left behind: ${leftovers.join(", ")}`);
    await server.stop();
    const namespaces = (await runTool("ip", ["netns", "list"])).toString();
    assert.ok(!namespaces.includes(`cc-${tag}-`), `namespaces left after the server stopped: ${namespaces}`);
    assert.ok(!(await runTool("ip", ["-o", "link", "show"])).toString().includes(`cc${tag}`), "veth left after the server stopped");
    assert.ok(!(await runTool("nft", ["list", "tables"])).toString().includes(`codecourier_${tag}`), "nftables table left after the server stopped");
  });
});

/**
 * Runs in the guest (its Node): answers HTTP requests with their method and path, and echoes text WebSocket
 * messages (a minimal RFC 6455 server: one unfragmented masked frame of up to 125 bytes at a time).
 */
const GUEST_HTTP_AND_WEBSOCKET_SERVER = `
const http = require("http"), crypto = require("crypto");
const server = http.createServer((q, s) => s.end("guest says " + q.method + " " + q.url + "\\n"));
server.on("upgrade", (q, socket) => {
  const accept = crypto.createHash("sha1").update(q.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  socket.write("HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + "\\r\\n\\r\\n");
  socket.on("data", (f) => {
    if ((f[0] & 0x0f) !== 1) return socket.end();
    const n = f[1] & 0x7f, mask = f.subarray(2, 6), body = Buffer.from(f.subarray(6, 6 + n).map((b, i) => b ^ mask[i % 4]));
    socket.write(Buffer.concat([Buffer.from([0x81, n]), body]));
  });
});
server.listen(8080, "0.0.0.0");
`;
