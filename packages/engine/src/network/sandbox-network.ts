/**
 * What the proxy and the DNS stub know about one sandbox: its policy, its tunnels (each a name the guest resolves to
 * an address of its own, routed to exactly one host:port), the names our DNS gave out (so a connection to such an
 * address counts as a connection to that name), its live connections and its events.
 */
import type { Socket } from "node:net";
import type { ApiTunnel, NetworkPolicy } from "@codecourier/protocol/network";
import { NetworkEventLog } from "./event-log.js";
import { compilePolicy, type CompiledPolicy } from "./policy.js";
import type { SocketOwner } from "./socket-budget.js";

/** Tunnel names resolve to addresses from this block (benchmarking range: never a real destination). */
const TUNNEL_BLOCK = "198.18.0.";
const MAX_REMEMBERED_ANSWERS = 4096;

export interface Tunnel {
  name: string;
  /** As the user wrote it: "10.0.0.5:5432" or "db.internal:5432". */
  target: string;
  targetHost: string;
  port: number;
  /** The address the guest's DNS gets for the name. */
  address: string;
}

export class SandboxNetwork {
  #policy: CompiledPolicy;
  readonly tunnels = new Map<string, Tunnel>();
  readonly events = new NetworkEventLog();
  /** The sockets of its proxied connections (both sides), so that they can be ended with the sandbox. */
  readonly connections = new Set<Socket>();
  /** The tenant whose limits its sockets count against; null when not known (see SocketOwner). */
  tenantId: string | null = null;
  /** Address → name, for addresses our DNS answered with (most recent last). */
  readonly #answers = new Map<string, string>();

  constructor(
    readonly sandboxId: string,
    policy: NetworkPolicy,
  ) {
    this.#policy = compilePolicy(policy);
  }

  get owner(): SocketOwner {
    return { sandboxId: this.sandboxId, tenantId: this.tenantId };
  }

  get policy(): CompiledPolicy {
    return this.#policy;
  }

  /** Applies to connections and DNS questions from now on; open connections stay as they are. */
  setPolicy(policy: NetworkPolicy): void {
    this.#policy = compilePolicy(policy);
  }

  addTunnel(tunnel: Omit<Tunnel, "address">): Tunnel {
    const existing = this.tunnels.get(tunnel.name);
    const used = new Set([...this.tunnels.values()].map((t) => t.address));
    let address = existing?.address;
    for (let i = 1; address === undefined && i < 255; i++) if (!used.has(`${TUNNEL_BLOCK}${i}`)) address = `${TUNNEL_BLOCK}${i}`;
    if (address === undefined) throw new Error("no tunnel address left");
    const added = { ...tunnel, address };
    this.tunnels.set(tunnel.name, added);
    return added;
  }

  tunnelAt(address: string): Tunnel | undefined {
    for (const tunnel of this.tunnels.values()) if (tunnel.address === address) return tunnel;
    return undefined;
  }

  tunnelList(): ApiTunnel[] {
    return [...this.tunnels.values()].map(({ name, target, port }) => ({ name, target, port }));
  }

  rememberAnswer(address: string, name: string): void {
    this.#answers.delete(address);
    this.#answers.set(address, name);
    if (this.#answers.size > MAX_REMEMBERED_ANSWERS) this.#answers.delete(this.#answers.keys().next().value!);
  }

  /** The name our DNS last gave this address out for, if any. */
  nameAnsweredFor(address: string): string | undefined {
    return this.#answers.get(address);
  }

  /** Ends every connection of the sandbox (it is going away). */
  closeConnections(): void {
    for (const socket of this.connections) socket.destroy();
    this.connections.clear();
  }
}
