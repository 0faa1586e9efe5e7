/**
 * One engine's share of the host's network: the names and addresses of its sandboxes' namespaces, and one nftables
 * table in the host's namespace that sends all their TCP to the proxy and their DNS to the stub, and lets nothing
 * else of theirs in or through. Several engines (each with its own data dir) can share a host: names carry a tag
 * derived from the data dir, and pool addresses are claimed host-wide by their routes.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import ipaddr from "ipaddr.js";
import { runTool } from "../util/run-tool.js";
import { HOST_HOP, createSandboxNetns, destroySandboxNetns, isConflict, listNetns, netnsAddress, type SandboxNetnsSpec } from "./netns.js";

export const DEFAULT_POOL = "10.211.0.0/16";
const MAX_ALLOCATION_TRIES = 64;

export interface HostNetworkOptions {
  dataDir: string;
  /** Where the proxy and DNS stub listen on 127.0.0.1. */
  proxyPort: number;
  dnsPort: number;
  /** IPv4 CIDR the namespaces' addresses come from; default DEFAULT_POOL (CODECOURIER_NETWORK_POOL). */
  pool?: string;
}

export class HostNetwork {
  readonly tag: string;
  readonly pool: string;
  readonly #poolBase: number;
  readonly #poolSize: number;
  /** Addresses this engine holds, by namespace name. */
  readonly #held = new Map<string, SandboxNetnsSpec>();

  private constructor(readonly options: HostNetworkOptions) {
    this.tag = engineTag(options.dataDir);
    this.pool = options.pool ?? process.env.CODECOURIER_NETWORK_POOL ?? DEFAULT_POOL;
    const [base, prefix] = ipaddr.IPv4.parseCIDR(this.pool);
    // Interface names have room for 5 hex digits of an address's index in the pool.
    if (prefix > 28 || prefix < 12) throw new Error(`network pool ${this.pool}: use a prefix between /12 and /28`);
    this.#poolBase = (ipv4ToNumber(base.toString()) & prefixMask(prefix)) >>> 0;
    this.#poolSize = 2 ** (32 - prefix);
  }

  /** Installs the host-side rules (replacing any an earlier run of this engine left). */
  static async open(options: HostNetworkOptions): Promise<HostNetwork> {
    const network = new HostNetwork(options);
    await network.#installHostRules();
    return network;
  }

  get #table(): string {
    return `codecourier_${this.tag}`;
  }

  get #interfacePattern(): string {
    return `cc${this.tag}*`;
  }

  /** Namespace name of a sandbox. */
  netnsName(sandboxId: string): string {
    return `cc-${this.tag}-${sandboxId}`;
  }

  /** Creates a sandbox's namespace on a free pool address. */
  async createSandboxNetwork(sandboxId: string): Promise<SandboxNetnsSpec> {
    const name = this.netnsName(sandboxId);
    const start = Math.floor(Math.random() * this.#poolSize);
    for (let i = 0; i < MAX_ALLOCATION_TRIES; i++) {
      // Skip the pool's network and broadcast addresses.
      const index = 1 + ((start + i) % (this.#poolSize - 2));
      const address = numberToIpv4(this.#poolBase + index);
      if ([...this.#held.values()].some((held) => held.address === address)) continue;
      const spec = this.#spec(name, address);
      try {
        await createSandboxNetns(spec);
        this.#held.set(name, spec);
        return spec;
      } catch (error) {
        if (!isConflict((error as { cause?: unknown }).cause)) throw error;
      }
    }
    throw new Error(`no free address in the network pool ${this.pool} after ${MAX_ALLOCATION_TRIES} tries`);
  }

  /** Re-attaches to the namespace of a sandbox that outlived an engine restart. */
  async adoptSandboxNetwork(sandboxId: string): Promise<SandboxNetnsSpec | undefined> {
    const name = this.netnsName(sandboxId);
    const address = await netnsAddress(name).catch(() => undefined);
    if (!address) return undefined;
    const spec = this.#spec(name, address);
    this.#held.set(name, spec);
    return spec;
  }

  async destroySandboxNetwork(spec: SandboxNetnsSpec): Promise<void> {
    await destroySandboxNetns(spec);
    this.#held.delete(spec.name);
  }

  /** Removes every namespace of this engine that no live sandbox uses (left by a crash or an earlier run). */
  async sweep(keepSandboxIds: ReadonlySet<string>): Promise<string[]> {
    const keep = new Set([...keepSandboxIds].map((id) => this.netnsName(id)));
    const removed: string[] = [];
    for (const name of await listNetns(`cc-${this.tag}-`)) {
      if (keep.has(name)) continue;
      const address = await netnsAddress(name).catch(() => undefined);
      // Without an address the veth is gone already; deleting the namespace is all that is left.
      await destroySandboxNetns(address ? this.#spec(name, address) : { name, address: "", hostInterface: "" });
      this.#held.delete(name);
      removed.push(name);
    }
    return removed;
  }

  /**
   * For a process that is exiting (no await possible): removes the given namespaces, their veths and the host
   * rules, synchronously.
   */
  removeAllNow(namespaces: readonly SandboxNetnsSpec[]): void {
    const lines = namespaces.flatMap((spec) => [`link del ${spec.hostInterface}`, `netns del ${spec.name}`]);
    if (lines.length > 0) spawnSync("ip", ["-force", "-batch", "-"], { input: lines.join("\n"), stdio: ["pipe", "ignore", "ignore"] });
    spawnSync("nft", ["delete", "table", "ip", this.#table], { stdio: "ignore" });
  }

  /** Removes the host-side rules; namespaces are the sandboxes' to remove. */
  async close(): Promise<void> {
    await runTool("nft", ["delete", "table", "ip", this.#table]).catch(() => {});
  }

  /** The names of a namespace on `address`: the host's veth end is named after the address's index in the pool. */
  #spec(name: string, address: string): SandboxNetnsSpec {
    const index = ipv4ToNumber(address) - this.#poolBase;
    return { name, address, hostInterface: `cc${this.tag}${index.toString(16).padStart(4, "0")}` };
  }

  async #installHostRules(): Promise<void> {
    const { proxyPort, dnsPort } = this.options;
    const sandboxes = this.#interfacePattern;
    // One transaction: the old table (if any) goes and the new one comes at once.
    await runTool("nft", ["-f", "-"], {
      input: `table ip ${this.#table} {}
delete table ip ${this.#table}
table ip ${this.#table} {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${sandboxes}" ip daddr ${HOST_HOP} udp dport 53 dnat to 127.0.0.1:${dnsPort}
    iifname "${sandboxes}" meta l4proto tcp dnat to 127.0.0.1:${proxyPort}
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "${sandboxes}" ct state established,related accept
    iifname "${sandboxes}" ip daddr 127.0.0.1 tcp dport ${proxyPort} accept
    iifname "${sandboxes}" ip daddr 127.0.0.1 udp dport ${dnsPort} accept
    iifname "${sandboxes}" drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${sandboxes}" drop
    oifname "${sandboxes}" drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    # Exposed guest ports are reached through the engine's token check only: other local users cannot dial them.
    oifname "${sandboxes}" meta skuid != ${process.getuid?.() ?? 0} drop
  }
}
`,
    });
  }
}

/** A short, stable tag for the engine of a data dir (4 hex digits: interface names have at most 15 characters). */
export function engineTag(dataDir: string): string {
  let path = dataDir;
  try {
    path = realpathSync(dataDir);
  } catch {
    // Not created yet: the path as given.
  }
  return createHash("sha256").update(path).digest("hex").slice(0, 4);
}

function ipv4ToNumber(address: string): number {
  return ipaddr.IPv4.parse(address).octets.reduce((n, octet) => n * 256 + octet, 0);
}

function numberToIpv4(n: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");
}

function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}
