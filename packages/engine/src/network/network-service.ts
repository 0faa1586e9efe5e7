/**
 * Sandbox networking for one engine: the host rules, the egress proxy, the DNS stub, each sandbox's namespace
 * (made before its QEMU starts, removed after it exits — the engine calls the hooks) and each sandbox's policy,
 * tunnels and exposed ports (kept in the control store, so they survive pause/resume and a server restart).
 */
import { createHash, randomBytes } from "node:crypto";
import { networkInterfaces } from "node:os";
import type { ApiExposedPort, ApiNetworkState, NetworkEvent, NetworkPolicy, NetworkPolicyChange, TunnelRequest } from "@codecourier/protocol/network";
import { NETWORK_LIMITS, NetworkPolicySchema } from "@codecourier/protocol/network";
import type { SandboxNetworkHooks } from "../sandboxes/sandbox-engine.js";
import type { AddressContext } from "./address-class.js";
import { classifyAddress, isAlwaysBlocked, parseIPv4 } from "./address-class.js";
import { DnsStub, type DnsAnswer, type DnsQuestion } from "./dns-stub.js";
import { EgressProxy } from "./egress-proxy.js";
import { HostNetwork } from "./host-network.js";
import { NameResolver } from "./name-resolver.js";
import { DROP_KINDS, HOST_HOP, TAP_DEVICE, noDrops, readDropCounters, setExposedPorts, type DropCounters, type SandboxNetnsSpec } from "./netns.js";
import { loadOriginalDestination } from "./original-destination.js";
import { applyPolicyChange, normalizeName } from "./policy.js";
import { answerQuestion } from "./dns-answers.js";
import { ExposedPort } from "./port-exposer.js";
import { SandboxNetwork } from "./sandbox-network.js";
import { openFileCount, openFileLimit, raiseOpenFileLimit } from "./fd-usage.js";
import { RELAY_HALF_CLOSED_TIMEOUT_MS, RELAY_IDLE_TIMEOUT_MS, type RelayOptions } from "./relay.js";
import { DEFAULT_MAX_SOCKETS_PER_SANDBOX, DEFAULT_MAX_SOCKETS_PER_TENANT, SocketBudget } from "./socket-budget.js";
import { onHostExit } from "../vmm/reaper.js";

/** Where the service keeps each sandbox's network configuration (the control store). */
export interface NetworkConfigStore {
  saveNetworkConfig(sandboxId: string, config: string): Promise<void>;
  networkConfigs(): Promise<Array<{ sandboxId: string; config: string }>>;
  removeNetworkConfig(sandboxId: string): Promise<void>;
}

interface StoredExposure {
  port: number;
  public: boolean;
  /** sha256 of the token, hex; the token itself is only ever given to the caller of expose(). */
  tokenSha256: string | null;
  hostPort: number;
}

interface StoredNetworkConfig {
  /** Whose limits the sandbox's sockets count against; absent in configurations stored before it was recorded. */
  tenantId?: string;
  policy: NetworkPolicy;
  tunnels: TunnelRequest[];
  exposed: StoredExposure[];
}

export interface NetworkServiceOptions {
  dataDir: string;
  store: NetworkConfigStore;
  /** Address exposed ports listen on (CODECOURIER_EXPOSE_HOST, default 127.0.0.1). */
  exposeHost?: string;
  /** Host name put in exposed ports' URLs (CODECOURIER_EXPOSE_URL_HOST, default the listen address). */
  exposeUrlHost?: string;
  resolver?: NameResolver;
  /** Socket limits and relay timeouts; by default from the environment (see connectionLimitsFromEnvironment). */
  limits?: ConnectionLimits;
}

/** How many sockets sandboxes may make the server hold, and how long an idle relayed connection lives. */
export interface ConnectionLimits {
  maxSocketsPerSandbox: number;
  maxSocketsPerTenant: number;
  /** Open descriptors of the whole server above which new connections are refused; null: derived from the soft limit. */
  fdBudget: number | null;
  relay: Required<RelayOptions>;
}

/**
 * The defaults, each overridable by the operator: CODECOURIER_NETWORK_MAX_SOCKETS_PER_SANDBOX, …_PER_TENANT,
 * CODECOURIER_FD_BUDGET, CODECOURIER_NETWORK_IDLE_TIMEOUT_MS, CODECOURIER_NETWORK_HALF_CLOSED_TIMEOUT_MS.
 */
export function connectionLimitsFromEnvironment(env: NodeJS.ProcessEnv = process.env): ConnectionLimits {
  const fdBudget = env.CODECOURIER_FD_BUDGET;
  return {
    maxSocketsPerSandbox: positiveInteger(env, "CODECOURIER_NETWORK_MAX_SOCKETS_PER_SANDBOX", DEFAULT_MAX_SOCKETS_PER_SANDBOX),
    maxSocketsPerTenant: positiveInteger(env, "CODECOURIER_NETWORK_MAX_SOCKETS_PER_TENANT", DEFAULT_MAX_SOCKETS_PER_TENANT),
    fdBudget: fdBudget === undefined ? null : positiveInteger(env, "CODECOURIER_FD_BUDGET", 0),
    relay: {
      idleTimeoutMs: positiveInteger(env, "CODECOURIER_NETWORK_IDLE_TIMEOUT_MS", RELAY_IDLE_TIMEOUT_MS),
      halfClosedTimeoutMs: positiveInteger(env, "CODECOURIER_NETWORK_HALF_CLOSED_TIMEOUT_MS", RELAY_HALF_CLOSED_TIMEOUT_MS),
    },
  };
}

function positiveInteger(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const text = env[name];
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(text)}`);
  return value;
}

/** Something a request asked for that cannot be done (the API answers 400 with the message). */
export class NetworkRequestError extends Error {
  readonly code = "invalid_network_request";
}

const DROP_POLL_MS = 1000;
/** How often the process's open descriptors are counted (between counts the socket budget tracks its own). */
const FD_SCAN_MS = 1000;

export class NetworkService {
  readonly #sandboxes = new Map<string, SandboxNetwork>();
  readonly #configs = new Map<string, StoredNetworkConfig>();
  /** Namespace of each attached sandbox, and the reverse: pool address → sandbox. */
  readonly #attached = new Map<string, SandboxNetnsSpec>();
  readonly #byAddress = new Map<string, SandboxNetwork>();
  readonly #exposures = new Map<string, Map<number, { stored: StoredExposure; server: ExposedPort }>>();
  readonly #dropped = new Map<string, DropCounters>();
  #hostAddresses = new Set<string>();
  #dropTimer: NodeJS.Timeout | undefined;
  #fdScanTimer: NodeJS.Timeout | undefined;
  #unregisterExitCleanup: (() => void) | undefined;

  private constructor(
    readonly host: HostNetwork,
    readonly proxy: EgressProxy,
    readonly dns: DnsStub,
    readonly resolver: NameResolver,
    readonly budget: SocketBudget,
    readonly options: NetworkServiceOptions,
  ) {}

  /** Starts the proxy and DNS stub, installs the host rules and loads every sandbox's stored configuration. */
  static async open(options: NetworkServiceOptions): Promise<NetworkService> {
    const addon = await loadOriginalDestination();
    const resolver = options.resolver ?? NameResolver.fromEnvironment();
    const limits = options.limits ?? connectionLimitsFromEnvironment();
    const fileLimit = await raiseOpenFileLimit();
    const budget = new SocketBudget({ perSandbox: limits.maxSocketsPerSandbox, perTenant: limits.maxSocketsPerTenant }, fileLimit.soft, limits.fdBudget ?? undefined);
    budget.observe(await openFileCount(), fileLimit.soft);
    let service: NetworkService | undefined;
    const proxy = await EgressProxy.listen({
      addon,
      resolver,
      budget,
      relay: limits.relay,
      sandboxAt: (address) => (service ? service.#byAddress.get(address) : undefined),
      addressContext: () => service!.addressContext(),
    });
    const dns = await DnsStub.listen({
      host: "127.0.0.1",
      port: 0,
      answer: (question, from) => service!.#answerDns(question, from.address),
    });
    try {
      const host = await HostNetwork.open({ dataDir: options.dataDir, proxyPort: proxy.port, dnsPort: dns.port });
      service = new NetworkService(host, proxy, dns, resolver, budget, { ...options, limits });
      service.#refreshHostAddresses();
      for (const { sandboxId, config } of await options.store.networkConfigs()) {
        service.#configs.set(sandboxId, JSON.parse(config) as StoredNetworkConfig);
      }
      // An interrupted server kills its VMs synchronously (vmm/reaper.ts); their namespaces and the host rules go too.
      service.#unregisterExitCleanup = onHostExit(() => service!.host.removeAllNow([...service!.#attached.values()]));
      // Reading drop counters spawns nft, which fails while the server is out of descriptors: skip that second.
      service.#dropTimer = setInterval(() => void service!.#pollDrops().catch(() => {}), DROP_POLL_MS);
      service.#dropTimer.unref();
      service.#fdScanTimer = setInterval(() => void service!.#scanOpenFiles(), FD_SCAN_MS);
      service.#fdScanTimer.unref();
      return service;
    } catch (error) {
      await proxy.close();
      await dns.close();
      throw error;
    }
  }

  /** What the engine calls around each sandbox's QEMU. */
  get hooks(): SandboxNetworkHooks {
    return {
      attach: async (sandboxId) => this.#attach(sandboxId, await this.host.createSandboxNetwork(sandboxId)),
      adopt: async (sandboxId) => {
        const spec = await this.host.adoptSandboxNetwork(sandboxId);
        return spec && this.#attach(sandboxId, spec);
      },
      detach: (sandboxId) => this.#detach(sandboxId),
      sweep: async (live) => {
        await this.host.sweep(live);
      },
      ended: (sandboxId) => this.forget(sandboxId),
    };
  }

  addressContext(): AddressContext {
    return { hostAddresses: this.#hostAddresses, internalCidrs: [this.host.pool, `${HOST_HOP}/32`] };
  }

  // ——— configuration (the API's side) ———

  /**
   * Sets a new sandbox's policy (its template's default or the one it was created with) and its tenant, whose
   * socket limit its connections count against.
   */
  async configure(sandboxId: string, policy: NetworkPolicy, tenantId?: string): Promise<void> {
    const config: StoredNetworkConfig = { tenantId, policy: NetworkPolicySchema.parse(policy), tunnels: [], exposed: [] };
    const sandbox = this.#sandbox(sandboxId);
    sandbox.setPolicy(config.policy); // validates before anything is stored
    sandbox.tenantId = tenantId ?? null;
    this.#configs.set(sandboxId, config);
    await this.#save(sandboxId);
  }

  /** A fork starts with its source's policy and tunnels. */
  async copyConfiguration(fromSandboxId: string, toSandboxId: string): Promise<void> {
    const source = this.#config(fromSandboxId);
    await this.configure(toSandboxId, source.policy, source.tenantId);
    for (const tunnel of source.tunnels) await this.addTunnel(toSandboxId, tunnel);
  }

  async changePolicy(sandboxId: string, change: NetworkPolicyChange): Promise<NetworkPolicy> {
    const config = this.#config(sandboxId);
    const policy = applyPolicyChange(config.policy, change);
    this.#sandbox(sandboxId).setPolicy(policy);
    config.policy = policy;
    await this.#save(sandboxId);
    return policy;
  }

  async setPolicy(sandboxId: string, policy: NetworkPolicy): Promise<NetworkPolicy> {
    const parsed = NetworkPolicySchema.parse(policy);
    this.#sandbox(sandboxId).setPolicy(parsed);
    this.#config(sandboxId).policy = parsed;
    await this.#save(sandboxId);
    return parsed;
  }

  async state(sandboxId: string): Promise<ApiNetworkState> {
    const config = this.#config(sandboxId);
    const spec = this.#attached.get(sandboxId);
    const dropped = spec ? await readDropCounters(spec.name).catch(() => undefined) : undefined;
    return {
      policy: config.policy,
      tunnels: this.#sandbox(sandboxId).tunnelList(),
      exposed: [...(this.#exposures.get(sandboxId)?.values() ?? [])].map(({ stored }) => this.#exposedInfo(stored, null)),
      dropped: dropped ?? this.#dropped.get(sandboxId) ?? noDrops(),
    };
  }

  async addTunnel(sandboxId: string, request: TunnelRequest): Promise<{ name: string; target: string; port: number }> {
    const config = this.#config(sandboxId);
    const route = tunnelRoute(request);
    const host = route.targetHost;
    if (parseIPv4(host)) {
      const cls = classifyAddress(host, this.addressContext());
      if (isAlwaysBlocked(cls)) throw new NetworkRequestError(`tunnel target ${request.target} is ${cls}: sandboxes never reach it`);
    } else if (!normalizeName(host)) {
      throw new NetworkRequestError(`tunnel target ${request.target}: the host is neither an IPv4 address nor a name`);
    }
    const others = config.tunnels.filter((t) => t.name !== request.name);
    if (others.length >= NETWORK_LIMITS.maxTunnels) throw new NetworkRequestError(`at most ${NETWORK_LIMITS.maxTunnels} tunnels per sandbox`);
    this.#sandbox(sandboxId).addTunnel(route);
    config.tunnels = [...others, request];
    await this.#save(sandboxId);
    return { name: request.name, target: request.target, port: route.port };
  }

  async removeTunnel(sandboxId: string, name: string): Promise<boolean> {
    const config = this.#config(sandboxId);
    const had = config.tunnels.some((t) => t.name === name);
    config.tunnels = config.tunnels.filter((t) => t.name !== name);
    this.#sandbox(sandboxId).tunnels.delete(name);
    await this.#save(sandboxId);
    return had;
  }

  /** Makes a guest port reachable from outside; a new token each time (exposing again replaces the old one). */
  async expose(sandboxId: string, port: number, isPublic: boolean): Promise<ApiExposedPort> {
    const config = this.#config(sandboxId);
    const exposures = this.#exposuresOf(sandboxId);
    const previous = exposures.get(port);
    if (!previous && exposures.size >= NETWORK_LIMITS.maxExposedPorts) {
      throw new NetworkRequestError(`at most ${NETWORK_LIMITS.maxExposedPorts} exposed ports per sandbox`);
    }
    await previous?.server.close();
    const token = isPublic ? null : randomBytes(24).toString("base64url");
    const stored: StoredExposure = { port, public: isPublic, tokenSha256: token ? sha256(token) : null, hostPort: previous?.stored.hostPort ?? 0 };
    await this.#openExposure(sandboxId, stored);
    config.exposed = [...config.exposed.filter((e) => e.port !== port), stored];
    await this.#save(sandboxId);
    await this.#applyExposedPorts(sandboxId);
    return this.#exposedInfo(stored, token);
  }

  async unexpose(sandboxId: string, port: number): Promise<boolean> {
    const config = this.#config(sandboxId);
    const exposure = this.#exposures.get(sandboxId)?.get(port);
    await exposure?.server.close();
    this.#exposures.get(sandboxId)?.delete(port);
    config.exposed = config.exposed.filter((e) => e.port !== port);
    await this.#save(sandboxId);
    await this.#applyExposedPorts(sandboxId);
    return exposure !== undefined;
  }

  recentEvents(sandboxId: string): NetworkEvent[] {
    return this.#sandbox(sandboxId).events.recent();
  }

  subscribe(sandboxId: string, listener: (event: NetworkEvent) => void): () => void {
    return this.#sandbox(sandboxId).events.subscribe(listener);
  }

  /** The sandbox ended for good: its exposed ports close and its configuration is forgotten. */
  async forget(sandboxId: string): Promise<void> {
    for (const { server } of this.#exposures.get(sandboxId)?.values() ?? []) await server.close();
    this.#exposures.delete(sandboxId);
    this.#sandboxes.get(sandboxId)?.closeConnections();
    this.#sandboxes.delete(sandboxId);
    this.#configs.delete(sandboxId);
    this.#dropped.delete(sandboxId);
    await this.options.store.removeNetworkConfig(sandboxId);
  }

  /** Re-opens the exposed ports of sandboxes that are still alive after a restart; forgets the others. */
  async restore(liveSandboxIds: ReadonlySet<string>): Promise<void> {
    for (const [sandboxId, config] of [...this.#configs]) {
      if (!liveSandboxIds.has(sandboxId)) {
        await this.forget(sandboxId);
        continue;
      }
      const sandbox = this.#sandbox(sandboxId);
      for (const tunnel of config.tunnels) {
        sandbox.addTunnel(tunnelRoute(tunnel));
      }
      for (const stored of config.exposed) await this.#openExposure(sandboxId, stored).catch(() => {});
      await this.#applyExposedPorts(sandboxId).catch(() => {});
    }
  }

  /**
   * Stops the proxy, DNS stub and exposed ports. With `sandboxesStopped` (the engine has stopped every VM) every
   * namespace of this engine goes too — also one a restore still in flight made — and then the host rules.
   */
  async close(options: { sandboxesStopped?: boolean } = {}): Promise<void> {
    clearInterval(this.#dropTimer);
    clearInterval(this.#fdScanTimer);
    this.#unregisterExitCleanup?.();
    for (const exposures of this.#exposures.values()) for (const { server } of exposures.values()) await server.close();
    for (const sandbox of this.#sandboxes.values()) sandbox.closeConnections();
    await this.proxy.close();
    await this.dns.close();
    if (options.sandboxesStopped) {
      await this.host.sweep(new Set());
      this.#attached.clear();
    }
    // The host rules stay while any namespace of this engine does: without them a sandbox's packets would be routed
    // by the host instead of reaching the (closed) proxy.
    if (this.#attached.size === 0) await this.host.close();
  }

  // ——— internals ———

  #sandbox(sandboxId: string): SandboxNetwork {
    let sandbox = this.#sandboxes.get(sandboxId);
    if (!sandbox) {
      // Until its policy is configured a sandbox gets the default: nothing allowed.
      const policy = this.#configs.get(sandboxId)?.policy ?? NetworkPolicySchema.parse({});
      sandbox = new SandboxNetwork(sandboxId, policy);
      sandbox.tenantId = this.#configs.get(sandboxId)?.tenantId ?? null;
      this.#sandboxes.set(sandboxId, sandbox);
    }
    return sandbox;
  }

  #config(sandboxId: string): StoredNetworkConfig {
    let config = this.#configs.get(sandboxId);
    if (!config) {
      config = { policy: NetworkPolicySchema.parse({}), tunnels: [], exposed: [] };
      this.#configs.set(sandboxId, config);
    }
    return config;
  }

  async #save(sandboxId: string): Promise<void> {
    await this.options.store.saveNetworkConfig(sandboxId, JSON.stringify(this.#config(sandboxId)));
  }

  async #attach(sandboxId: string, spec: SandboxNetnsSpec): Promise<{ netns: string; tap: string }> {
    this.#attached.set(sandboxId, spec);
    this.#byAddress.set(spec.address, this.#sandbox(sandboxId));
    await this.#applyExposedPorts(sandboxId);
    return { netns: spec.name, tap: TAP_DEVICE };
  }

  async #detach(sandboxId: string): Promise<void> {
    const spec = this.#attached.get(sandboxId);
    if (!spec) return;
    this.#attached.delete(sandboxId);
    if (this.#byAddress.get(spec.address)?.sandboxId === sandboxId) this.#byAddress.delete(spec.address);
    this.#sandboxes.get(sandboxId)?.closeConnections();
    await this.host.destroySandboxNetwork(spec);
  }

  #exposuresOf(sandboxId: string): Map<number, { stored: StoredExposure; server: ExposedPort }> {
    let exposures = this.#exposures.get(sandboxId);
    if (!exposures) {
      exposures = new Map();
      this.#exposures.set(sandboxId, exposures);
    }
    return exposures;
  }

  async #openExposure(sandboxId: string, stored: StoredExposure): Promise<void> {
    const server = await ExposedPort.listen({
      listenHost: this.#exposeHost,
      listenPort: stored.hostPort,
      tokenSha256: stored.tokenSha256,
      // Both sides of every connection to an exposed port count against the sandbox's (and its tenant's) sockets.
      reserveSockets: (count) => this.budget.reserve(this.#sandbox(sandboxId).owner, count),
      relay: this.options.limits?.relay,
      target: () => {
        const spec = this.#attached.get(sandboxId);
        if (!spec) throw new Error(`sandbox ${sandboxId} is not running`);
        return { host: spec.address, port: stored.port };
      },
    });
    stored.hostPort = server.port;
    this.#exposuresOf(sandboxId).set(stored.port, { stored, server });
  }

  async #applyExposedPorts(sandboxId: string): Promise<void> {
    const spec = this.#attached.get(sandboxId);
    if (!spec) return;
    await setExposedPorts(spec.name, [...(this.#exposures.get(sandboxId)?.keys() ?? [])]);
  }

  get #exposeHost(): string {
    return this.options.exposeHost ?? process.env.CODECOURIER_EXPOSE_HOST ?? "127.0.0.1";
  }

  #exposedInfo(stored: StoredExposure, token: string | null): ApiExposedPort {
    const host = this.options.exposeUrlHost ?? process.env.CODECOURIER_EXPOSE_URL_HOST ?? this.#exposeHost;
    return { port: stored.port, public: stored.public, url: `http://${host}:${stored.hostPort}/`, token };
  }

  async #answerDns(question: DnsQuestion, from: string): Promise<DnsAnswer> {
    const sandbox = this.#byAddress.get(from);
    if (!sandbox) return { kind: "refused" };
    return answerQuestion(sandbox, question, this.resolver, this.addressContext());
  }

  /** Turns increases of each attached sandbox's drop counters into events (only while someone listens). */
  async #pollDrops(): Promise<void> {
    this.#refreshHostAddresses();
    for (const [sandboxId, spec] of this.#attached) {
      const sandbox = this.#sandboxes.get(sandboxId);
      if (!sandbox || sandbox.events.subscribers === 0) continue;
      const now = await readDropCounters(spec.name).catch(() => undefined);
      if (!now) continue;
      const before = this.#dropped.get(sandboxId) ?? noDrops();
      this.#dropped.set(sandboxId, now);
      for (const kind of DROP_KINDS) {
        const packets = now[kind] - before[kind];
        if (packets > 0) sandbox.events.record({ type: "network.dropped", time: Date.now(), sandboxId, kind, packets });
      }
    }
  }

  /** Counts the process's descriptors and re-reads its soft limit (an operator may change it with prlimit). */
  async #scanOpenFiles(): Promise<void> {
    try {
      const [count, limit] = await Promise.all([openFileCount(), openFileLimit()]);
      this.budget.observe(count, limit.soft);
    } catch {
      // Most likely EMFILE itself: refuse new connections until a scan succeeds again.
      this.budget.observeFailedScan();
    }
  }

  #refreshHostAddresses(): void {
    let interfaces: ReturnType<typeof networkInterfaces>;
    try {
      interfaces = networkInterfaces();
    } catch {
      // getifaddrs needs a netlink socket, so this throws when the process is out of descriptors: keep the last list.
      return;
    }
    const addresses = new Set<string>();
    for (const list of Object.values(interfaces)) for (const info of list ?? []) if (info.family === "IPv4") addresses.add(info.address);
    this.#hostAddresses = addresses;
  }
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** What the proxy needs of a tunnel request: its target split into host and port. */
function tunnelRoute(request: TunnelRequest): { name: string; target: string; targetHost: string; port: number } {
  const { host, port } = parseHostPort(request.target);
  return { name: request.name, target: request.target, targetHost: host, port };
}

/** "host:port" with an IPv4 address or a name, and a port 1–65535. */
function parseHostPort(target: string): { host: string; port: number } {
  const match = /^([^:\s]+):(\d{1,5})$/.exec(target);
  const port = Number(match?.[2]);
  if (!match || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new NetworkRequestError(`tunnel target "${target}" is not host:port`);
  }
  return { host: match[1]!.toLowerCase(), port };
}

