/**
 * Test origins in a network namespace of their own, reachable from the host (and so from the egress proxy) on
 * addresses of a private /24 routed to it — never a real destination. Used by the network tests and benchmark.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { runTool } from "../util/run-tool.js";

const originServer = join(dirname(fileURLToPath(import.meta.url)), "origin-server.js");

export interface OriginEvent {
  kind: "http" | "https" | "echo" | "udp" | "ready";
  local?: string;
  host?: string | null;
  path?: string;
  port?: number;
  from?: string;
}

export interface OriginNetns {
  /** The namespace's name. */
  name: string;
  /** The origins' addresses (10.250.N.2, .3, …). */
  addresses: string[];
  /** Everything the origins have seen so far. */
  events(): OriginEvent[];
  stop(): Promise<void>;
}

/**
 * Makes namespace `cco-<random>` with `count` origin addresses, routes them from the host over a veth pair, and
 * starts the origin server in it. stop() removes all of it.
 */
export async function startOriginNetns(count = 2): Promise<OriginNetns> {
  const tag = randomBytes(3).toString("hex");
  const name = `cco-${tag}`;
  const hostSide = `cco${tag}`;
  const subnet = `10.250.${randomBytes(1)[0]! % 250}`;
  const addresses = Array.from({ length: count }, (_, i) => `${subnet}.${i + 2}`);
  const certDir = await mkdtemp(join(tmpdir(), "cc-origin-"));
  let server: ChildProcess | undefined;
  const stop = async () => {
    server?.kill("SIGKILL");
    await runTool("ip", ["link", "del", hostSide]).catch(() => {});
    await runTool("ip", ["netns", "del", name]).catch(() => {});
    await rm(certDir, { recursive: true, force: true });
  };
  try {
    await runTool("ip", ["netns", "add", name]);
    await runTool("ip", ["-batch", "-"], {
      input: [`link add ${hostSide} type veth peer name eth0 netns ${name}`, `addr add ${subnet}.1/24 dev ${hostSide}`, `link set ${hostSide} up`].join("\n"),
    });
    await runTool("ip", ["-n", name, "-batch", "-"], {
      input: ["link set lo up", ...addresses.map((a) => `addr add ${a}/24 dev eth0`), "link set eth0 up", `route add default via ${subnet}.1`].join("\n"),
    });
    await runTool("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=origin.test", "-keyout", join(certDir, "key.pem"), "-out", join(certDir, "cert.pem")]);
    server = spawn("nsenter", [`--net=/run/netns/${name}`, process.execPath, originServer, join(certDir, "cert.pem"), join(certDir, "key.pem"), ...addresses], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const seen: OriginEvent[] = [];
    const ready = new Promise<void>((resolve, reject) => {
      server!.once("exit", (code) => reject(new Error(`the origin server exited (${code})`)));
      createInterface({ input: server!.stdout! }).on("line", (line) => {
        const event = JSON.parse(line) as OriginEvent;
        if (event.kind === "ready") resolve();
        else seen.push(event);
      });
    });
    await ready;
    return { name, addresses, events: () => [...seen], stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
