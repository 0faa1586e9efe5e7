/**
 * The transparent proxy every TCP connection of every sandbox reaches (the host's nftables rules redirect them to
 * it). For each one it learns where the guest was going (SO_ORIGINAL_DST), which name it is for (TLS SNI or HTTP
 * Host, on any port; else a name our DNS answered with for that address; else none), decides by the sandbox's
 * policy, resolves the name itself and dials exactly the address it checked — never the one the guest chose, so a
 * guest cannot put an allowed name in front of a forbidden address. Every attempt becomes an event.
 */
import net, { type Socket } from "node:net";
import type { NetworkEvent } from "@codecourier/protocol/network";
import type { AddressContext } from "./address-class.js";
import { classifyAddress, isAlwaysBlocked } from "./address-class.js";
import type { NameResolver } from "./name-resolver.js";
import { originalDestination, type loadOriginalDestination } from "./original-destination.js";
import { peekDestination } from "./peek.js";
import { decide, decideName, normalizeName } from "./policy.js";
import type { SandboxNetwork, Tunnel } from "./sandbox-network.js";

type ConnectionEvent = Extract<NetworkEvent, { type: "network.connection" }>;
type Addon = Awaited<ReturnType<typeof loadOriginalDestination>>;

const DIAL_TIMEOUT_MS = 10_000;
/** Open connections (guest side and upstream together) a sandbox may hold through the proxy. */
export const MAX_CONNECTIONS_PER_SANDBOX = 2048;
/** How long a client may stay silent before it is taken to speak a server-first protocol (SSH, SMTP). */
const PEEK_TIMEOUT_MS = 1000;

export interface EgressProxyOptions {
  addon: Addon;
  resolver: NameResolver;
  /** The sandbox whose namespace has this pool address. */
  sandboxAt(address: string): SandboxNetwork | undefined;
  addressContext(): AddressContext;
}

/** Where a connection may go, or why not. */
type Verdict =
  | { allowed: true; address: string; port: number; rule: string }
  | { allowed: false; rule: string; error?: string };

export class EgressProxy {
  readonly #server: net.Server;

  private constructor(readonly options: EgressProxyOptions) {
    // noDelay: relayed bytes go out as they come; Nagle would hold a small reply back for the guest's ACK.
    this.#server = net.createServer({ pauseOnConnect: true, noDelay: true }, (socket) => void this.#handle(socket));
  }

  static async listen(options: EgressProxyOptions & { port?: number }): Promise<EgressProxy> {
    const proxy = new EgressProxy(options);
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once("error", reject);
      proxy.#server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
    });
    return proxy;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(guest: Socket): Promise<void> {
    guest.on("error", () => {});
    const sandbox = this.options.sandboxAt(guest.remoteAddress ?? "");
    if (!sandbox) {
      guest.destroy();
      return;
    }
    let requested: { address: string; port: number };
    try {
      requested = originalDestination(this.options.addon, guest);
    } catch {
      guest.destroy();
      return;
    }
    const started = Date.now();
    const overLimit = sandbox.connections.size >= MAX_CONNECTIONS_PER_SANDBOX;
    sandbox.connections.add(guest);
    guest.once("close", () => sandbox.connections.delete(guest));
    const event: ConnectionEvent = {
      type: "network.connection",
      time: started,
      sandboxId: sandbox.sandboxId,
      allowed: false,
      nameSource: null,
      name: null,
      requestedAddress: requested.address,
      port: requested.port,
      address: null,
      rule: "default-deny",
      bytesOut: 0,
      bytesIn: 0,
      durationMs: 0,
      error: null,
    };
    const { verdict, initial } = await this.#decideConnection(guest, sandbox, requested, overLimit, event);
    event.rule = verdict.rule;
    if (!verdict.allowed) {
      event.error = verdict.error ?? null;
      event.durationMs = Date.now() - started;
      sandbox.events.record(event);
      guest.resetAndDestroy();
      return;
    }
    event.allowed = true;
    event.address = verdict.address;
    this.#relay(guest, initial, verdict, sandbox, event, started);
  }

  /**
   * The verdict on a new connection, and the bytes read from the guest to reach it (they go upstream first). Fills
   * in the event's name and where it came from.
   */
  async #decideConnection(
    guest: Socket,
    sandbox: SandboxNetwork,
    requested: { address: string; port: number },
    overLimit: boolean,
    event: ConnectionEvent,
  ): Promise<{ verdict: Verdict; initial: Buffer }> {
    const none = Buffer.alloc(0);
    if (overLimit) {
      return { verdict: { allowed: false, rule: "limit:connections", error: `more than ${MAX_CONNECTIONS_PER_SANDBOX / 2} open connections` }, initial: none };
    }
    // A tunnel is chosen by the address its name resolved to: no peeking (database protocols speak server-first).
    const tunnel = sandbox.tunnelAt(requested.address);
    if (tunnel) {
      event.nameSource = "tunnel";
      event.name = tunnel.name;
      return { verdict: await this.#tunnelVerdict(tunnel, requested.port), initial: none };
    }
    const peeked = await peekDestination(guest, { timeoutMs: PEEK_TIMEOUT_MS });
    if (peeked.ambiguous) return { verdict: { allowed: false, rule: "ambiguous-host" }, initial: peeked.initial };
    const named = this.#nameOf(sandbox, peeked, requested.address);
    event.name = named?.name ?? null;
    event.nameSource = named?.source ?? null;
    return { verdict: await this.#verdict(sandbox, event.name, named?.source ?? null, requested), initial: peeked.initial };
  }

  #nameOf(
    sandbox: SandboxNetwork,
    peeked: { name: string | null; nameIsAddress: boolean; protocol: string },
    requestedAddress: string,
  ): { name: string; source: "sni" | "host" | "dns" } | undefined {
    if (peeked.name && !peeked.nameIsAddress) {
      const name = normalizeName(peeked.name);
      if (name) return { name, source: peeked.protocol === "tls" ? "sni" : "host" };
    }
    const answered = sandbox.nameAnsweredFor(requestedAddress);
    return answered ? { name: answered, source: "dns" } : undefined;
  }

  async #verdict(
    sandbox: SandboxNetwork,
    name: string | null,
    source: "sni" | "host" | "dns" | null,
    requested: { address: string; port: number },
  ): Promise<Verdict> {
    const context = this.options.addressContext();
    const port = requested.port;
    if (name === null) {
      const decision = decide(sandbox.policy, { name: null, address: requested.address, port }, context);
      return decision.allowed ? { allowed: true, address: requested.address, port, rule: decision.rule } : { allowed: false, rule: decision.rule };
    }
    let candidates: string[];
    let operatorMapped: boolean;
    if (source === "dns") {
      // The guest dialed an address our DNS gave it for this name: that address, checked again now.
      candidates = [requested.address];
      operatorMapped = this.options.resolver.operatorHosts.get(name)?.includes(requested.address) ?? false;
    } else {
      try {
        const resolved = await this.options.resolver.resolve(name);
        candidates = resolved.addresses;
        operatorMapped = resolved.operatorMapped;
      } catch (error) {
        // A name the policy denies anyway is reported as denied, not as unresolvable.
        const byName = decideName(sandbox.policy, name);
        return { allowed: false, rule: byName.allowed ? "unresolvable" : byName.rule, error: (error as Error).message };
      }
    }
    let last: Verdict = { allowed: false, rule: "default-deny", error: `${name} has no addresses` };
    for (const address of candidates) {
      const decision = decide(sandbox.policy, { name, address, port, operatorMapped }, context);
      if (decision.allowed) return { allowed: true, address, port, rule: decision.rule };
      last = { allowed: false, rule: decision.rule };
    }
    return last;
  }

  async #tunnelVerdict(tunnel: Tunnel, port: number): Promise<Verdict> {
    if (port !== tunnel.port) return { allowed: false, rule: `tunnel:${tunnel.name}`, error: `tunnel ${tunnel.name} only leads to port ${tunnel.port}` };
    let address = tunnel.targetHost;
    if (net.isIP(address) === 0) {
      try {
        address = (await this.options.resolver.resolve(address)).addresses[0] ?? "";
      } catch (error) {
        return { allowed: false, rule: `tunnel:${tunnel.name}`, error: (error as Error).message };
      }
    }
    const cls = classifyAddress(address, this.options.addressContext());
    if (isAlwaysBlocked(cls)) return { allowed: false, rule: `blocked:${cls}`, error: `tunnel target ${tunnel.target} is ${cls}` };
    return { allowed: true, address, port: tunnel.port, rule: `tunnel:${tunnel.name}` };
  }

  #relay(guest: Socket, initial: Buffer, verdict: { address: string; port: number }, sandbox: SandboxNetwork, event: ConnectionEvent, started: number): void {
    const upstream = net.connect({ host: verdict.address, port: verdict.port, timeout: DIAL_TIMEOUT_MS, noDelay: true });
    sandbox.connections.add(upstream);
    let finished = false;
    const finish = (error?: Error) => {
      if (finished) return;
      finished = true;
      event.bytesOut = upstream.bytesWritten;
      event.bytesIn = guest.bytesWritten;
      event.durationMs = Date.now() - started;
      if (error && !event.error) event.error = error.message;
      sandbox.connections.delete(upstream);
      sandbox.events.record(event);
    };
    upstream.once("timeout", () => upstream.destroy(new Error(`connecting to ${verdict.address}:${verdict.port} timed out`)));
    upstream.once("connect", () => {
      upstream.setTimeout(0);
      if (initial.length > 0) upstream.write(initial);
      guest.pipe(upstream);
      upstream.pipe(guest);
      guest.resume();
    });
    upstream.on("error", (error) => {
      finish(error);
      guest.resetAndDestroy();
    });
    guest.on("error", (error) => {
      finish(error);
      upstream.destroy();
    });
    upstream.once("close", () => {
      finish();
      guest.end();
    });
    guest.once("close", () => {
      finish();
      upstream.end();
    });
  }
}
