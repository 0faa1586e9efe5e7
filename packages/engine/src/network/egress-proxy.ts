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
import { relay, type RelayOptions } from "./relay.js";
import type { SandboxNetwork, Tunnel } from "./sandbox-network.js";
import type { LimitRefusal, SocketBudget, SocketReservation } from "./socket-budget.js";

type ConnectionEvent = Extract<NetworkEvent, { type: "network.connection" }>;
type Addon = Awaited<ReturnType<typeof loadOriginalDestination>>;

const DIAL_TIMEOUT_MS = 10_000;
/** How long a client may stay silent before it is taken to speak a server-first protocol (SSH, SMTP). */
const PEEK_TIMEOUT_MS = 1000;
/** A proxied connection holds two sockets: the guest's and the upstream one. */
const SOCKETS_PER_CONNECTION = 2;

export interface EgressProxyOptions {
  addon: Addon;
  resolver: NameResolver;
  /** The sandbox whose namespace has this pool address. */
  sandboxAt(address: string): SandboxNetwork | undefined;
  addressContext(): AddressContext;
  /** Counts the sockets each connection holds, against the sandbox's, its tenant's and the process's limits. */
  budget: SocketBudget;
  relay?: RelayOptions;
}

/** Where a connection may go, or why not. */
type Verdict =
  | { allowed: true; address: string; port: number; rule: string }
  | { allowed: false; rule: string; error?: string };

export class EgressProxy {
  readonly #server: net.Server;

  private constructor(readonly options: EgressProxyOptions) {
    // noDelay: relayed bytes go out as they come; Nagle would hold a small reply back for the guest's ACK.
    // allowHalfOpen: a guest's FIN is passed on as a FIN, and the reply still reaches it (relay.ts).
    this.#server = net.createServer({ pauseOnConnect: true, noDelay: true, allowHalfOpen: true }, (socket) =>
      // #handle settles every failure it expects; this keeps a bug from becoming an unhandled rejection.
      void this.#handle(socket).catch(() => socket.destroy()),
    );
    // accept() failing (EMFILE, ENFILE, ENOBUFS) is emitted here; libuv has already dropped that connection and the
    // server keeps listening, so there is nothing to do but not crash (the fd budget keeps this rare).
    this.#server.on("error", () => {});
  }

  static async listen(options: EgressProxyOptions & { port?: number }): Promise<EgressProxy> {
    const proxy = new EgressProxy(options);
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once("error", reject);
      proxy.#server.listen(options.port ?? 0, "127.0.0.1", () => {
        proxy.#server.off("error", reject);
        resolve();
      });
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
    // Both of its sockets are counted from now (the guest's since accept, the upstream one before its dial) until
    // each has really closed.
    const places = this.options.budget.reserve(sandbox.owner, SOCKETS_PER_CONNECTION);
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
    if (isRefusal(places)) {
      this.#refuse(guest, sandbox, event, { allowed: false, ...places });
      return;
    }
    places.bind(guest);
    sandbox.connections.add(guest);
    guest.once("close", () => sandbox.connections.delete(guest));
    const { verdict, initial } = await this.#decideConnection(guest, sandbox, requested, event).catch((error: unknown) => ({
      verdict: { allowed: false, rule: "default-deny", error: `deciding failed: ${String(error)}` } as const,
      initial: Buffer.alloc(0),
    }));
    if (!verdict.allowed) {
      places.releaseUnbound();
      this.#refuse(guest, sandbox, event, verdict);
      return;
    }
    if (guest.destroyed) {
      places.releaseUnbound();
      this.#refuse(guest, sandbox, event, { allowed: false, rule: verdict.rule, error: "the guest closed the connection before it was relayed" });
      return;
    }
    event.rule = verdict.rule;
    event.allowed = true;
    event.address = verdict.address;
    this.#relay(guest, initial, verdict, sandbox, places, event);
  }

  #refuse(guest: Socket, sandbox: SandboxNetwork, event: ConnectionEvent, verdict: Extract<Verdict, { allowed: false }>): void {
    event.rule = verdict.rule;
    event.error = verdict.error ?? null;
    event.durationMs = Date.now() - event.time;
    sandbox.events.record(event);
    guest.resetAndDestroy();
  }

  /**
   * The verdict on a new connection, and the bytes read from the guest to reach it (they go upstream first). Fills
   * in the event's name and where it came from.
   */
  async #decideConnection(
    guest: Socket,
    sandbox: SandboxNetwork,
    requested: { address: string; port: number },
    event: ConnectionEvent,
  ): Promise<{ verdict: Verdict; initial: Buffer }> {
    const none = Buffer.alloc(0);
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

  #relay(
    guest: Socket,
    initial: Buffer,
    verdict: { address: string; port: number },
    sandbox: SandboxNetwork,
    places: SocketReservation,
    event: ConnectionEvent,
  ): void {
    const upstream = net.connect({ host: verdict.address, port: verdict.port, timeout: DIAL_TIMEOUT_MS, noDelay: true, allowHalfOpen: true });
    places.bind(upstream);
    sandbox.connections.add(upstream);
    upstream.once("close", () => sandbox.connections.delete(upstream));
    let recorded = false;
    const record = (error: Error | null) => {
      if (recorded) return;
      recorded = true;
      event.bytesOut = upstream.bytesWritten;
      event.bytesIn = guest.bytesWritten;
      event.durationMs = Date.now() - event.time;
      if (error && !event.error) event.error = error.message;
      sandbox.events.record(event);
    };
    // Until the dial is done: a guest that goes away takes the dial with it, a failed dial resets the guest.
    const abandonDial = () => {
      upstream.destroy();
      record(new Error("the guest closed the connection while it was being dialed"));
    };
    const dialFailed = (error: Error) => {
      guest.off("close", abandonDial);
      guest.resetAndDestroy();
      record(error);
    };
    const dialTimedOut = () => upstream.destroy(new Error(`connecting to ${verdict.address}:${verdict.port} timed out`));
    guest.once("close", abandonDial);
    upstream.once("error", dialFailed);
    upstream.once("timeout", dialTimedOut);
    upstream.once("connect", () => {
      guest.off("close", abandonDial);
      upstream.off("error", dialFailed);
      upstream.off("timeout", dialTimedOut);
      if (initial.length > 0) upstream.write(initial);
      // The event is recorded once both sockets have closed, so it carries every byte and the whole duration.
      void relay(guest, upstream, this.options.relay).then(({ error }) => record(error));
      guest.resume();
    });
  }
}

function isRefusal(places: SocketReservation | LimitRefusal): places is LimitRefusal {
  return "rule" in places;
}
